"""
Record a drive: what the node saw and said, into one ROS 2 mcap file (Foxglove, RViz, rosbags).

One ``RecordedSet`` per answered frame set writes, every message stamped (header and log time)
with the input's stamps:

==========================================  ====================================  ==========
topic                                       type                                  stamp
==========================================  ====================================  ==========
/cam_front/image_raw/compressed (x 6)       sensor_msgs/msg/CompressedImage       the camera's
/cam_front/camera_info (x 6)                sensor_msgs/msg/CameraInfo            the camera's
/drive_vlm/answer                           std_msgs/msg/String                   the set's
/drive_vlm/result                           std_msgs/msg/String (the JSON)        the set's
/drive_vlm/trajectory                       nav_msgs/msg/Path (base_link)         the set's
/drive_vlm/prefill_ms                       std_msgs/msg/Float64 (for plots)      the set's
/drive_vlm/tokens_kept                      std_msgs/msg/Int32 (for plots)        the set's
/drive_vlm/overlay/cam_front/compressed     sensor_msgs/msg/CompressedImage       the set's
/diagnostics                                diagnostic_msgs/msg/DiagnosticArray   the set's
/gt/future_trajectory                       nav_msgs/msg/Path (where known)       the set's
/tf_static (once, where calibrated)         tf2_msgs/msg/TFMessage                first set's
==========================================  ====================================  ==========

JPEGs that came in compressed are copied byte for byte; raw images are JPEG-encoded once. The
schemas are the ROS 2 message definitions (rosbags' typestore, ros2msg), the payloads CDR, the
profile ``ros2``: ``ros2 bag info FILE.mcap``, ``ros2 bag play``, Foxglove and rosbags read it.

Chunks are small and flushed after every set, so a killed recording keeps every set up to the
last chunk: ``BagReader`` (``drive-vlm run``, ``bag play``) reads such a file as is, and
``drive-vlm bag repair`` rewrites it with the index and footer rosbags needs. A write that fails
(disk full) stops the recording, keeps its error, and counts every set not recorded after it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
import io
import os
from pathlib import Path
import shutil

import numpy as np

from .messages import header, make, path_msg, static_camera_tf
from .topics import (
    BASE_FRAME,
    camera_frame,
    camera_info_topic,
    COMPRESSED_TYPE,
    GT_TRAJECTORY_TOPIC,
    PATH_TYPE,
    STRING_TYPE,
    TF_STATIC_TOPIC,
    TF_TYPE,
    typestore,
)
from ..cameras import camera_topic
from ..frames.calibration import CameraCalibration
from ..frames.stamps import header_stamp_ns

NODE_NAMESPACE = '/drive_vlm'
ANSWER_TOPIC = NODE_NAMESPACE + '/answer'
RESULT_TOPIC = NODE_NAMESPACE + '/result'
TRAJECTORY_TOPIC = NODE_NAMESPACE + '/trajectory'
PREFILL_TOPIC = NODE_NAMESPACE + '/prefill_ms'
TOKENS_TOPIC = NODE_NAMESPACE + '/tokens_kept'
FLOAT_TYPE = 'std_msgs/msg/Float64'
INT_TYPE = 'std_msgs/msg/Int32'
DIAGNOSTICS_TOPIC = '/diagnostics'
DIAGNOSTICS_TYPE = 'diagnostic_msgs/msg/DiagnosticArray'
CAMERA_INFO_TYPE = 'sensor_msgs/msg/CameraInfo'
CHUNK_BYTES = 128 * 1024  # a kill loses at most about one set
MIN_FREE_BYTES = 64 * 1024 * 1024
JPEG_QUALITY = 90


def overlay_topic(camera: str) -> str:
    """Return ``/drive_vlm/overlay/cam_front/compressed`` (image_transport's layout)."""
    return f'{NODE_NAMESPACE}/overlay/{camera.lower()}/compressed'


class RecordingError(OSError):
    """A recording that cannot start or go on; the message names the path and the fix."""


def check_record_path(path: str | Path, min_free_bytes: int = MIN_FREE_BYTES) -> Path:
    """Return ``path`` as a Path if a new recording can be written there; else RecordingError."""
    path = Path(path)
    if path.suffix != '.mcap':
        raise RecordingError(f'recording {path}: name the file FILE.mcap (one mcap file)')
    if path.exists():
        raise RecordingError(f'recording {path} exists: recordings are never overwritten; '
                             'choose a new name or delete it')
    parent = path.parent if str(path.parent) else Path('.')
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RecordingError(f'recording {path}: cannot create {parent} ({err.strerror}); '
                             'choose a writable directory') from None
    if not os.access(parent, os.W_OK):
        raise RecordingError(f'recording {path}: {parent} is not writable; choose a writable '
                             'directory')
    free = shutil.disk_usage(parent).free
    if free < min_free_bytes:
        raise RecordingError(f'recording {path}: only {free / 2**20:.0f} MiB free on {parent} '
                             f'(need {min_free_bytes / 2**20:.0f} MiB); free space or record '
                             'elsewhere')
    return path


@dataclass(frozen=True)
class CameraInput:
    """One camera's image of a set, as it will be recorded (compressed bytes, its stamp)."""

    camera: str
    stamp_ns: int
    frame_id: str
    data: bytes
    format: str  # noqa: A003 - CompressedImage's field name
    info_cdr: bytes | None = None  # its CameraInfo, serialized (CDR), if one was received


@dataclass(frozen=True)
class Diagnostics:
    """One DiagnosticStatus: name, level (0 OK, 1 WARN, 2 ERROR), message, key-values."""

    name: str
    level: int
    message: str
    values: Mapping[str, object]


@dataclass(frozen=True)
class RecordedSet:
    """What one answered set puts in the recording (see module doc)."""

    stamp_ns: int
    answer: str
    result_json: str
    trajectory_xy: Sequence[Sequence[float]] | None
    cameras: Sequence[CameraInput]
    overlays: Mapping[str, np.ndarray] = field(default_factory=dict)
    diagnostics: Sequence[Diagnostics] = ()
    truth_xy: Sequence[Sequence[float]] | None = None
    frame_id: str = BASE_FRAME
    prefill_ms: float = float('nan')  # plotted (Foxglove plots numbers, not the result JSON)
    tokens_kept: int = 0


def jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """Return ``rgb`` (H x W x 3 uint8) as JPEG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buf, format='JPEG', quality=quality)
    return buf.getvalue()


def camera_inputs(names: Sequence[str], messages: Sequence, images: Sequence[np.ndarray],
                  present: Sequence[str], infos: Mapping[str, bytes] | None = None
                  ) -> list[CameraInput]:
    """
    Return the set's images for the recording.

    A CompressedImage's bytes go in as they came, a raw Image as JPEG. ``messages`` are the
    synchronizer's (rclpy or rosbags, any) in ``names`` order; ``images`` the decoded views of
    ``present`` (CameraSet); ``infos`` each camera's CameraInfo, serialized (CDR).
    """
    decoded = dict(zip(present, images))
    out = []
    for name, msg in zip(names, messages):
        if msg is None:
            continue
        stamp = header_stamp_ns(msg)
        if hasattr(msg, 'format'):
            data, fmt = bytes(np.asarray(msg.data, dtype=np.uint8)), msg.format
        else:
            data, fmt = jpeg(decoded[name]), 'jpeg'
        out.append(CameraInput(name, stamp, msg.header.frame_id or camera_frame(name), data, fmt,
                               (infos or {}).get(name)))
    return out


class Recorder:
    """An mcap file being recorded: one channel per topic, messages counted per topic."""

    def __init__(self, path: str | Path, calibration: Mapping[str, CameraCalibration] | None
                 = None) -> None:
        from mcap.writer import CompressionType, Writer

        self.path = check_record_path(path)
        self.ts = typestore()
        self.calibration = dict(calibration or {})
        self.counts: dict[str, int] = {}
        self.sets_recorded = 0
        self.sets_lost = 0
        self.error = ''
        self._schemas: dict[str, int] = {}
        self._channels: dict[str, int] = {}
        self._file = self.path.open('xb')
        self._writer = Writer(self._file, chunk_size=CHUNK_BYTES,
                              compression=CompressionType.ZSTD)
        self._writer.start(profile='ros2', library='drive_vlm_pruned')
        self._closed = False

    # --- writing --------------------------------------------------------------------------

    def write_cdr(self, topic: str, msgtype: str, stamp_ns: int, cdr: bytes) -> None:
        """Write one serialized message at log time ``stamp_ns``."""
        channel = self._channels.get(topic)
        if channel is None:
            channel = self._writer.register_channel(
                topic, 'cdr', self._schema(msgtype), {'offered_qos_profiles': ''})
            self._channels[topic] = channel
        self._writer.add_message(channel, int(stamp_ns), bytes(cdr), int(stamp_ns))
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def write(self, topic: str, msgtype: str, stamp_ns: int, msg) -> None:
        """Write a rosbags message of ``msgtype``."""
        self.write_cdr(topic, msgtype, stamp_ns, self.ts.serialize_cdr(msg, msgtype))

    def record(self, frame: RecordedSet) -> bool:
        """Write every message of one set; False (and counted) once the recording has failed."""
        if self.error or self._closed:
            self.sets_lost += 1
            return False
        try:
            self._record(frame)
            self._file.flush()
        except OSError as err:
            self.error = f'recording {self.path} stopped: {err.strerror or err}'
            self.sets_lost += 1
            return False
        self.sets_recorded += 1
        return True

    def _record(self, frame: RecordedSet) -> None:
        ts, stamp = self.ts, frame.stamp_ns
        if TF_STATIC_TOPIC not in self.counts and self.calibration:
            self.write(TF_STATIC_TOPIC, TF_TYPE, stamp, static_camera_tf(ts, stamp, [
                (name, cal.to_json()['translation'], cal.to_json()['rotation_wxyz'])
                for name, cal in self.calibration.items()]))
        for cam in frame.cameras:
            msg = make(ts, COMPRESSED_TYPE, header=header(ts, cam.stamp_ns, cam.frame_id),
                       format=cam.format, data=np.frombuffer(cam.data, dtype=np.uint8))
            self.write(camera_topic(cam.camera, compressed=True), COMPRESSED_TYPE, cam.stamp_ns,
                       msg)
            if cam.info_cdr is not None:
                self.write_cdr(camera_info_topic(cam.camera), CAMERA_INFO_TYPE, cam.stamp_ns,
                               cam.info_cdr)
        self.write(ANSWER_TOPIC, STRING_TYPE, stamp, make(ts, STRING_TYPE, data=frame.answer))
        self.write(RESULT_TOPIC, STRING_TYPE, stamp,
                   make(ts, STRING_TYPE, data=frame.result_json))
        path = self._path(frame.trajectory_xy, stamp, frame.frame_id)
        self.write(TRAJECTORY_TOPIC, PATH_TYPE, stamp, path)
        self.write(PREFILL_TOPIC, FLOAT_TYPE, stamp,
                   make(ts, FLOAT_TYPE, data=float(frame.prefill_ms)))
        self.write(TOKENS_TOPIC, INT_TYPE, stamp, make(ts, INT_TYPE, data=int(frame.tokens_kept)))
        for camera, rgb in frame.overlays.items():
            self.write(overlay_topic(camera), COMPRESSED_TYPE, stamp, make(
                ts, COMPRESSED_TYPE, header=header(ts, stamp, camera_frame(camera)),
                format='jpeg', data=np.frombuffer(jpeg(rgb), dtype=np.uint8)))
        if frame.diagnostics:
            self.write(DIAGNOSTICS_TOPIC, DIAGNOSTICS_TYPE, stamp,
                       self._diagnostics(frame.diagnostics, stamp))
        if frame.truth_xy is not None:
            self.write(GT_TRAJECTORY_TOPIC, PATH_TYPE, stamp,
                       self._path(frame.truth_xy, stamp, frame.frame_id))

    def _path(self, points, stamp_ns: int, frame_id: str):
        points = list(points or [])
        msg = path_msg(self.ts, stamp_ns, points, [stamp_ns] * len(points))
        msg.header.frame_id = frame_id
        for pose in msg.poses:
            pose.header.frame_id = frame_id
        return msg

    def _diagnostics(self, statuses: Sequence[Diagnostics], stamp_ns: int):
        ts = self.ts
        return make(ts, DIAGNOSTICS_TYPE, header=header(ts, stamp_ns, ''), status=[
            make(ts, 'diagnostic_msgs/msg/DiagnosticStatus', level=int(s.level), name=s.name,
                 message=s.message, hardware_id='drive_vlm',
                 values=[make(ts, 'diagnostic_msgs/msg/KeyValue', key=str(k), value=str(v))
                         for k, v in s.values.items()])
            for s in statuses])

    def _schema(self, msgtype: str) -> int:
        if msgtype not in self._schemas:
            definition, _ = self.ts.generate_msgdef(msgtype, ros_version=2)
            self._schemas[msgtype] = self._writer.register_schema(
                msgtype, 'ros2msg', definition.encode())
        return self._schemas[msgtype]

    # --- closing --------------------------------------------------------------------------

    def close(self) -> None:
        """Write the index and footer (a complete mcap) and close the file; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self.error:  # after a failed write, what is on disk is all there will be
                self._writer.finish()
        except OSError as err:
            self.error = f'recording {self.path}: closing failed: {err.strerror or err}'
        finally:
            try:
                self._file.close()
            except OSError as err:  # its buffer could not be flushed: the disk is still full
                self.error = self.error or f'recording {self.path}: closing failed: {err}'

    def summary(self) -> str:
        state = f'; {self.error}; {self.sets_lost} sets not recorded' if self.error else ''
        return f'recorded {self.sets_recorded} sets, {sum(self.counts.values())} messages ' \
               f'on {len(self.counts)} topics to {self.path}{state}'

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def view_overlays(frame, result, calibration: Mapping[str, CameraCalibration],
                  views: Sequence[str], truth_xy: Sequence[Sequence[float]] | None = None
                  ) -> dict[str, np.ndarray]:
    """
    Return ``views``' plan overlays (frames/plan_overlay.py) of one answered set.

    ``frame`` is the CameraSet that ran, ``result`` its Result; a view the set lacks is left
    out, and a view without calibration shows its kept tokens only.
    """
    from ..frames.plan_overlay import plan_overlay

    plan = result.trajectory.points if result.trajectory.ok else None
    out = {}
    for view in views:
        if view not in frame.names or view not in result.view_names:
            continue
        v = result.view_names.index(view)
        out[view] = plan_overlay(frame.images[frame.names.index(view)], result.kept_indices[v],
                                 result.tokens_before[v], calibration.get(view), plan, truth_xy)
    return out
