"""
The node's own recorder (parameter ``record_path``): the same mcap file as ``run --record``.

The executor thread keeps each camera's newest CameraInfo and the ground-truth futures that
arrive on /gt/future_trajectory (a replayed bag carries them; a car does not); the worker
thread records every answered set through bag/recording.py, under one lock, since a parameter
change may switch files between two sets. On a real ROS 2 install ``ros2 bag record`` records
the same topics (see docs/recording.md); this one needs no ROS CLI and writes the plan overlays.
"""

from __future__ import annotations

from collections import deque
import threading

from rclpy.serialization import serialize_message

from ..bag.recording import (
    camera_inputs,
    Diagnostics,
    RecordedSet,
    Recorder,
    RecordingError,
    view_overlays,
)
from ..cameras import HALF_FRAME_NS, NUSCENES_CAMERAS
from ..frames.calibration import CameraCalibration
from ..frames.stamps import header_stamp_ns

TRUTH_KEPT = 64


def camera_info_topic_of(image_topic: str) -> str:
    """Return the CameraInfo topic beside an image topic (image_transport's convention)."""
    base = image_topic[:-len('/compressed')] if image_topic.endswith('/compressed') \
        else image_topic
    return base.rsplit('/', 1)[0] + '/camera_info'


class NodeRecording:
    """What the node records, and where; ``error`` says why it is not recording, if so."""

    def __init__(self, calibration: dict[str, CameraCalibration]) -> None:
        self.lock = threading.Lock()
        self.calibration = calibration
        self.recorder: Recorder | None = None
        self.path = ''
        self.error = ''
        self.failures = 0  # recordings that could not start, and sets lost to failed writes
        self.infos: dict[str, bytes] = {}
        self.truth: deque = deque(maxlen=TRUTH_KEPT)  # (stamp_ns, [(x, y), ...])

    def switch(self, path: str) -> str:
        """Close the current file and start ``path`` ('' stops); return the error, or ''."""
        with self.lock:
            self._close()
            self.path, self.error = path, ''
            if not path:
                return ''
            try:
                self.recorder = Recorder(path, self.calibration)
            except RecordingError as err:
                self.error, self.failures = str(err), self.failures + 1
            return self.error

    def on_camera_info(self, index: int, msg) -> None:
        self.infos[NUSCENES_CAMERAS[index]] = serialize_message(msg)

    def on_truth(self, msg) -> None:
        stamp = header_stamp_ns(msg)
        self.truth.append((stamp, [(p.pose.position.x, p.pose.position.y) for p in msg.poses]))

    def record(self, synced, frame, result, result_json: str, views: list[str],
               diagnostics: list[Diagnostics], frame_id: str) -> None:
        """Record one answered set; a failed write stops the file and is counted."""
        with self.lock:
            if self.recorder is None:
                return
            truth = self._truth_at(result.stamp_ns)
            ok = self.recorder.record(RecordedSet(
                result.stamp_ns, result.answer, result_json,
                result.trajectory.points if result.trajectory.ok else None,
                camera_inputs(NUSCENES_CAMERAS, synced.messages, frame.images, frame.names,
                              self.infos),
                view_overlays(frame, result, self.calibration, views, truth),
                diagnostics, truth, frame_id,
                prefill_ms=result.timings_ms.get('prefill', float('nan')),
                tokens_kept=sum(result.tokens_after)))
            if not ok:
                self.failures += 1
                self.error = self.recorder.error

    def _truth_at(self, stamp_ns: int):
        best = min(self.truth, key=lambda t: abs(t[0] - stamp_ns), default=None)
        return best[1] if best is not None and abs(best[0] - stamp_ns) <= HALF_FRAME_NS else None

    def values(self) -> dict[str, object]:
        """Return the diagnostics key-values of the recording."""
        r = self.recorder
        return {'path': self.path, 'recording': r is not None and not r.error,
                'sets_recorded': r.sets_recorded if r else 0,
                'sets_lost': r.sets_lost if r else 0,
                'failures': self.failures, 'error': self.error}

    def close(self) -> None:
        with self.lock:
            self._close()

    def _close(self) -> None:
        if self.recorder is not None:
            self.recorder.close()
            self.recorder = None
