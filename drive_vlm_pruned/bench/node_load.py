"""
The drive_vlm node under its real load, for the benchmarks: six cameras at 12 Hz over DDS.

``NodeRun`` starts the node in this process with its own executor (as ``ros2 run`` spins it) and
a listener on ``~/result``, like the main demo (cli/demo.py). Two drivers feed it:
``play_synthetic_bag`` replays a synthetic bag with ``bag play`` (the demo's path), and
``publish_live`` publishes drawn six-camera sets at 12 Hz for as long as a soak needs, without
writing gigabytes of bag. The node is latest-wins: a set that arrives while one runs replaces
the waiting one, so sets are answered or counted as dropped, never queued.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
import json
from pathlib import Path
import tempfile
import threading
import time

import numpy as np

from ..cameras import CAMERA_RATE_HZ, NUSCENES_CAMERAS

FRAME_PERIOD_S = 1.0 / CAMERA_RATE_HZ


@dataclass
class NodeLoad:
    """What the node did with the sets it was sent, and the latency of those it answered."""

    sets_sent: int
    answered: int  # ~/result messages received
    processed: int  # the node's own count of answered sets
    dropped: dict[str, int]
    skipped: dict[str, int]
    unpaired_messages: int
    messages_received: int  # camera messages the node got, all six topics
    latencies_ms: list[float] = field(default_factory=list)
    decode_backends: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def percentiles(self) -> dict[str, float]:
        if not self.latencies_ms:
            return {}
        values = np.asarray(self.latencies_ms)
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        return {'p50': float(p50), 'p90': float(p90), 'p99': float(p99),
                'max': float(values.max())}

    @property
    def sets_completed(self) -> int:
        """Return the sets the node paired: answered, dropped by latest-wins, or skipped."""
        return self.processed + sum(self.dropped.values()) + sum(self.skipped.values())

    @property
    def sets_lost(self) -> int:
        """Return sets never completed: a camera message lost in DDS or left unpaired."""
        return self.sets_sent - self.sets_completed

    @property
    def unaccounted(self) -> int:
        """
        Return sets no count explains (0 when all is well).

        An answer published but not received, or an incomplete set without a lost or unpaired
        camera message to explain it.
        """
        sent = len(NUSCENES_CAMERAS) * self.sets_sent
        lost_messages = sent - self.messages_received + self.unpaired_messages
        return (self.processed - self.answered) + max(0, self.sets_lost - lost_messages)

    def summary(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != 'latencies_ms'}
        out.update(percentiles_ms=self.percentiles(), sets_completed=self.sets_completed,
                   sets_lost=self.sets_lost, unaccounted=self.unaccounted)
        out['decode_backends'] = sorted(set(self.decode_backends))
        return out


class NodeRun:
    """A VlmNode with ``params`` and a ~/result listener, spun in this process (module doc)."""

    def __init__(self, params: dict, ready_timeout_s: float = 300.0) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.parameter import Parameter
        from std_msgs.msg import String

        from ..node.vlm_node import VlmNode

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = VlmNode(context=self.context,
                            parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        self.listener = rclpy.create_node('bench_listener', context=self.context)
        self.lock = threading.Lock()
        self.results: list[dict] = []
        self.listener.create_subscription(String, '/drive_vlm/result', self._on_result, 100)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.listener)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinner.start()
        deadline = time.monotonic() + ready_timeout_s
        while self.node.health.model_state == 'loading' and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.node.health.model_state != 'ready':
            detail = self.node.fatal or f'not ready after {ready_timeout_s:.0f} s'
            self.close()
            raise RuntimeError(f'the drive_vlm node did not start: {detail}')

    def _on_result(self, msg) -> None:
        with self.lock:
            self.results.append(json.loads(msg.data))

    def settle(self, timeout_s: float = 120.0) -> None:
        """Wait until no set runs or waits, every answer has arrived, and 1 s passes quietly."""
        def state() -> tuple[int, int, bool]:
            with self.lock:
                received = len(self.results)
            h = self.node.health
            return received, h.processed + sum(h.dropped.values()), self.node.worker.idle

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            before = state()
            if before[2] and before[0] >= self.node.health.processed:
                time.sleep(1.0)  # the last camera messages may still be in flight
                if state() == before:
                    return
            time.sleep(0.05)

    def load(self, sets_sent: int, wall_s: float) -> NodeLoad:
        h = self.node.health
        with self.lock:
            results = list(self.results)
        with h.lock:
            processed, dropped, skipped = h.processed, dict(h.dropped), dict(h.skipped)
        return NodeLoad(
            sets_sent=sets_sent, answered=len(results), processed=processed, dropped=dropped,
            skipped=skipped,
            unpaired_messages=sum(self.node.sync.evicted) + self.node.sync.pending(),
            messages_received=sum(c.received for c in h.cameras),
            latencies_ms=[r['latency_ms'] for r in results],
            decode_backends=[r.get('decode_backend', '') for r in results], wall_s=wall_s,
        )

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.spinner.join(5.0)
        self.node.destroy_node()
        self.listener.destroy_node()
        rclpy.try_shutdown(context=self.context)


def play_synthetic_bag(run: NodeRun, frames: int, size: tuple[int, int] = (225, 400)) -> NodeLoad:
    """Write a synthetic six-camera bag of ``frames`` sets and play it into the node (12 Hz)."""
    from ..bag.play import play_bag, PlayOptions
    from ..bag.synth import synth_bag, SynthOptions

    with tempfile.TemporaryDirectory() as tmp:
        bag = Path(tmp) / 'latency_bag'
        synth_bag(bag, SynthOptions(frames=frames, width=size[1], height=size[0],
                                    jitter_ms=2.0))
        start = time.monotonic()
        play_bag(bag, PlayOptions(wait_for_subscribers_s=30.0))
        run.settle()
        return run.load(frames, time.monotonic() - start)


def publish_live(run: NodeRun, frames: int, size: tuple[int, int] = (90, 160),
                 on_progress: Callable[[int], None] | None = None) -> NodeLoad:
    """Publish ``frames`` drawn six-camera sets at 12 Hz (sensor-data QoS), then settle."""
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from ..cameras import camera_topics
    from ..frames.image_decoding import encode_raw
    from ..pipeline.synthetic_frames import synthetic_frame

    publisher = run.listener
    pubs = [publisher.create_publisher(Image, t, qos_profile_sensor_data)
            for t in camera_topics(False)]
    deadline = time.monotonic() + 30.0
    while not all(p.get_subscription_count() > 0 for p in pubs):
        if time.monotonic() > deadline:
            raise RuntimeError('the node did not subscribe to the six camera topics in 30 s')
        time.sleep(0.05)
    time.sleep(0.5)  # DDS matching is one-sided: let the node's readers learn our writers
    pool = [[encode_raw(img, 'rgb8') for img in synthetic_frame(i, size=size).images]
            for i in range(12)]
    start = time.monotonic()
    for i in range(frames):
        stamp = 1_700_000_000_000_000_000 + i * 83_333_333
        for v, (pub, (h, w, step, data)) in enumerate(zip(pubs, pool[i % len(pool)])):
            header = Header(frame_id='camera')
            header.stamp.sec, header.stamp.nanosec = divmod(stamp + v * 7_000_000, 10**9)
            pub.publish(Image(header=header, height=h, width=w, encoding='rgb8', step=step,
                              data=data))
        if on_progress is not None:
            on_progress(i + 1)
        wait = start + (i + 1) * FRAME_PERIOD_S - time.monotonic()
        if wait > 0:
            time.sleep(wait)
    run.settle()
    return run.load(frames, time.monotonic() - start)
