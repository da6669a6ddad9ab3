"""
Real rclpy over loopback DDS for the node tests: the node under test and a probe node.

The probe does what a user's tools do: publishes six camera streams, listens to the node's
outputs and /diagnostics, and sets parameters through the node's SetParameters service (the
service ``ros2 param set`` calls).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import io
import json
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
from drive_vlm_pruned.bag.play import MATCH_SETTLE_S
from drive_vlm_pruned.cameras import camera_topics, NUSCENES_CAMERAS
from drive_vlm_pruned.frames.image_decoding import encode_raw
from nav_msgs.msg import Path
import numpy as np
from PIL import Image as PILImage
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header, String

STAMP0 = 1_700_000_000_000_000_000
PERIOD_NS = 83_333_333
SPREAD_NS = 7_000_000  # per camera, as the nuScenes capture order (~40 ms over six)


def camera_images(seed: int, size=(90, 160)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in NUSCENES_CAMERAS]


def raw_msg(rgb: np.ndarray, stamp_ns: int, encoding: str = 'rgb8') -> Image:
    h, w, step, data = encode_raw(rgb, encoding)
    return Image(header=_header(stamp_ns), height=h, width=w, encoding=encoding, step=step,
                 data=data)


def compressed_msg(rgb: np.ndarray, stamp_ns: int, fmt: str = 'jpeg') -> CompressedImage:
    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, format='JPEG' if fmt == 'jpeg' else 'PNG')
    return CompressedImage(header=_header(stamp_ns), format=fmt, data=buf.getvalue())


def _header(stamp_ns: int) -> Header:
    h = Header(frame_id='camera')
    h.stamp.sec, h.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    return h


class Probe:
    """A test-side node in its own executor thread."""

    def __init__(self, context, node_name: str = 'drive_vlm', compressed: bool = False) -> None:
        self.node = Node('probe', context=context)
        self.lock = threading.Lock()
        self.answers: list[str] = []
        self.results: list[dict] = []
        self.paths: list[Path] = []
        self.mosaics: list[Image] = []
        self.diagnostics: dict[str, dict] = {}
        self.diag_levels: dict[str, int] = {}
        self.diag_messages: dict[str, str] = {}
        kind = CompressedImage if compressed else Image
        self.cams = [self.node.create_publisher(kind, t, qos_profile_sensor_data)
                     for t in camera_topics(compressed)]
        prefix = f'/{node_name}'
        self.question_pub = self.node.create_publisher(String, f'{prefix}/question', 10)
        sub = self.node.create_subscription
        sub(String, f'{prefix}/answer', lambda m: self._add(self.answers, m.data), 10)
        sub(String, f'{prefix}/result', lambda m: self._add(self.results, json.loads(m.data)), 10)
        sub(Path, f'{prefix}/trajectory', lambda m: self._add(self.paths, m), 10)
        sub(DiagnosticArray, '/diagnostics', self._on_diag, 10)
        self.params = AsyncParameterClient(self.node, node_name)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _add(self, target: list, item) -> None:
        with self.lock:
            target.append(item)

    def _on_diag(self, msg: DiagnosticArray) -> None:
        with self.lock:
            for status in msg.status:
                self.diagnostics[status.name] = {kv.key: kv.value for kv in status.values}
                self.diag_levels[status.name] = status.level[0]
                self.diag_messages[status.name] = status.message

    def subscribe_mosaic(self):
        return self.node.create_subscription(
            Image, '/drive_vlm/kept_tokens', lambda m: self._add(self.mosaics, m), 2)

    def wait_connected(self, timeout: float = 20.0) -> None:
        wait_for(lambda: all(p.get_subscription_count() > 0 for p in self.cams), timeout,
                 'the node to subscribe to the six camera topics')
        # Matching is one-sided: the node's best-effort readers may not know our writers yet
        # and would drop the first samples (the bag player holds the same settle time).
        time.sleep(MATCH_SETTLE_S)

    def publish_set(self, index: int, images: Sequence[np.ndarray] | None = None,
                    make: Callable | None = None, skip: Sequence[int] = ()) -> int:
        """Publish set ``index`` (CAM_FRONT at STAMP0 + index * period); return that stamp."""
        images = images if images is not None else camera_images(index)
        make = make or raw_msg
        stamp = STAMP0 + index * PERIOD_NS
        for v, (pub, img) in enumerate(zip(self.cams, images)):
            if v not in skip:
                pub.publish(make(img, stamp + v * SPREAD_NS) if callable(make) else img)
        return stamp

    def publish_msgs(self, msgs: Sequence) -> None:
        for pub, msg in zip(self.cams, msgs):
            pub.publish(msg)

    def set_params(self, **values) -> list:
        """Call SetParameters as ``ros2 param set`` does; return the per-parameter results."""
        assert self.params.wait_for_services(timeout_sec=10.0), 'no parameter service'
        future = self.params.set_parameters([Parameter(k, value=v) for k, v in values.items()])
        wait_for(future.done, 10.0, 'the SetParameters response')
        return future.result().results

    def inference_diag(self) -> dict:
        with self.lock:
            return dict(self.diagnostics.get('drive_vlm: inference', {}))

    def camera_diag(self) -> tuple[int, str, dict]:
        with self.lock:
            name = 'drive_vlm: cameras'
            return (self.diag_levels.get(name, -1), self.diag_messages.get(name, ''),
                    dict(self.diagnostics.get(name, {})))

    def close(self) -> None:
        self.executor.shutdown()
        self.thread.join(5.0)
        self.node.destroy_node()


class NodeUnderTest:
    """The VlmNode, spun by its own executor thread (as ``ros2 run`` would spin it)."""

    def __init__(self, context, **params) -> None:
        from drive_vlm_pruned.node.vlm_node import VlmNode

        overrides = [Parameter(k, value=v) for k, v in params.items()]
        self.node = VlmNode(context=context, parameter_overrides=overrides)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        wait_for(lambda: self.node.health.model_state != 'loading', 120.0, 'the model to load')
        assert self.node.health.model_state == 'ready', self.node.health.model_detail

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Wait until no set is running or waiting in the worker."""
        wait_for(lambda: self.node.worker.idle, timeout, 'the worker to finish')

    def close(self) -> None:
        self.executor.shutdown()
        self.thread.join(5.0)
        self.node.destroy_node()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out after {timeout} s waiting for {what}')
        time.sleep(0.02)


def ros_context():
    context = rclpy.Context()
    rclpy.init(context=context)
    return context
