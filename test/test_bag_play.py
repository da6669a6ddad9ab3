"""
`drive-vlm bag play`: real rclpy over loopback DDS, a subscriber in the test, a real bag.

Each test makes its own rclpy Context (never the global one) and destroys its nodes and
executor, so nothing leaks between tests and nothing hangs. DDS settings come from the
environment (scripts/test.sh sets a loopback discovery range and a per-run domain id).
"""

import importlib.util
from pathlib import Path
import signal
import subprocess
import sys
import threading
import time

from drive_vlm_pruned.bag.play import parse_remap, play_bag, PlayOptions
from drive_vlm_pruned.bag.synth import synth_bag, SynthOptions
from drive_vlm_pruned.bag.topics import typestore
from drive_vlm_pruned.cameras import camera_topics
from nav_msgs.msg import Odometry
from nav_msgs.msg import Path as PathMsg
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import qos_profile_sensor_data, QoSProfile, ReliabilityPolicy
from rosbags.highlevel import AnyReader
from sensor_msgs.msg import Image

FRONT = '/cam_front/image_raw'
FRAMES = 6


@pytest.fixture(scope='module')
def bag(tmp_path_factory):
    path = tmp_path_factory.mktemp('play') / 'bag'
    synth_bag(path, SynthOptions(frames=FRAMES, width=64, height=36, seed=1))
    return path


def recorded(path: Path, topic: str) -> list[tuple[int, bytes]]:
    with AnyReader([path], default_typestore=typestore()) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        return [(t, bytes(raw)) for _, t, raw in reader.messages(connections=conns)]


class Listener:
    """A node in its own context that records raw messages (and arrival times) per topic."""

    def __init__(self, topics: dict[str, tuple[type, object]]):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node('bag_play_listener', context=self.context)
        self.got: dict[str, list[tuple[float, bytes]]] = {topic: [] for topic in topics}
        for topic, (msg_type, qos) in topics.items():
            self.node.create_subscription(
                msg_type, topic, lambda raw, t=topic: self.got[t].append((time.monotonic(), raw)),
                qos, raw=True)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def wait_for(self, topic: str, count: int, timeout: float = 5.0) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while len(self.got[topic]) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return [raw for _, raw in self.got[topic]]

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()
        self.thread.join(timeout=5)
        assert not self.thread.is_alive()


@pytest.fixture
def listener_factory():
    made = []

    def make(topics):
        made.append(Listener(topics))
        return made[-1]

    yield make
    for listener in made:
        listener.close()


def test_publishes_the_recorded_bytes_and_skips_missing_types(bag, listener_factory):
    checked = dict.fromkeys(camera_topics(), (Image, qos_profile_sensor_data))
    checked.update({'/odom': (Odometry, 10), '/gt/future_trajectory': (PathMsg, 10)})
    listener = listener_factory(checked)
    threads = threading.active_count()
    stats = play_bag(bag, PlayOptions(rate=4.0, wait_for_subscribers_s=5.0))
    assert stats.unmatched == ()
    for topic in checked:
        expected = [raw for _, raw in recorded(bag, topic)]
        assert listener.wait_for(topic, len(expected)) == expected, topic
        assert stats.published[topic] == len(expected)
    assert stats.published[FRONT] == FRAMES and stats.loops == 1 and not stats.interrupted
    for topic, package in (('/tf', 'tf2_msgs'), ('/tf_static', 'tf2_msgs'),
                           ('/gt/objects', 'visualization_msgs')):
        if importlib.util.find_spec(package) is None:
            assert package in stats.skipped_topics[topic]
            assert topic not in stats.published
    assert stats.skipped_messages == sum(
        len(recorded(bag, t)) for t in stats.skipped_topics)
    assert threading.active_count() <= threads  # the player left no thread behind


def test_rate_scales_the_timing(bag, listener_factory):
    listener = listener_factory({FRONT: (Image, qos_profile_sensor_data)})
    spans = {}
    for rate in (0.5, 4.0):
        listener.got[FRONT].clear()
        stats = play_bag(bag, PlayOptions(rate=rate, topics=(FRONT,),
                                          wait_for_subscribers_s=3.0))
        listener.wait_for(FRONT, FRAMES)
        arrivals = [t for t, _ in listener.got[FRONT]]
        spans[rate] = arrivals[-1] - arrivals[0]
        assert stats.published == {FRONT: FRAMES}
    recorded_span = (FRAMES - 1) * 0.0833
    assert spans[0.5] == pytest.approx(recorded_span / 0.5, rel=0.25)
    assert spans[4.0] < spans[0.5] / 4


def test_remap_start_offset_and_topic_filter(bag, listener_factory):
    # Reliable both ends: a reliable writer resends what a reader missed while it was still
    # learning of the writer, so an exact count cannot be lost to discovery timing.
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    listener = listener_factory({'/remapped/front': (Image, reliable), FRONT: (Image, reliable)})
    stats = play_bag(bag, PlayOptions(rate=4.0, remap=(parse_remap(f'{FRONT}:=/remapped/front'),),
                                      topics=(FRONT,), start_offset_s=0.2, qos='reliable',
                                      wait_for_subscribers_s=10.0))
    stamps = [t for t, _ in recorded(bag, FRONT)]
    start = recorded(bag, '/tf_static')[0][0] + 200_000_000
    expected = [raw for t, raw in recorded(bag, FRONT) if t >= start]
    assert 0 < len(expected) < len(stamps)
    assert listener.wait_for('/remapped/front', len(expected)) == expected
    time.sleep(0.1)
    assert listener.got[FRONT] == [] and stats.published == {'/remapped/front': len(expected)}
    with pytest.raises(ValueError, match='FROM:=TO'):
        parse_remap('/a=/b')
    with pytest.raises(ValueError, match='no such topic'):
        play_bag(bag, PlayOptions(remap=(('/nope', '/x'),)))


def test_best_effort_override_reaches_only_best_effort_subscribers(bag, listener_factory):
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    listener = listener_factory({FRONT: (Image, qos_profile_sensor_data),
                                 '/odom': (Odometry, reliable)})
    stats = play_bag(bag, PlayOptions(rate=4.0, qos='best-effort', topics=(FRONT, '/odom'),
                                      wait_for_subscribers_s=3.0))
    assert len(listener.wait_for(FRONT, FRAMES)) == FRAMES
    assert listener.got['/odom'] == []  # a reliable subscriber never matches best-effort
    assert stats.published['/odom'] == 6 * FRAMES


def test_loop_until_stopped(bag, listener_factory):
    listener = listener_factory({FRONT: (Image, qos_profile_sensor_data)})
    stop = threading.Event()
    result = {}
    runner = threading.Thread(target=lambda: result.update(stats=play_bag(
        bag, PlayOptions(rate=8.0, loop=True, topics=(FRONT,), wait_for_subscribers_s=3.0),
        stop=stop)))
    runner.start()
    listener.wait_for(FRONT, 2 * FRAMES + 1)
    stop.set()
    runner.join(timeout=5)
    assert not runner.is_alive()
    stats = result['stats']
    assert stats.loops >= 2 and stats.published[FRONT] >= 2 * FRAMES


def test_cli_play_stops_cleanly_on_ctrl_c(bag, listener_factory):
    listener = listener_factory({FRONT: (Image, qos_profile_sensor_data)})
    proc = subprocess.Popen(
        [sys.executable, '-m', 'drive_vlm_pruned.cli.main', 'bag', 'play', str(bag), '--loop',
         '--topics', FRONT, '--rate', '4'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert len(listener.wait_for(FRONT, 3, timeout=30.0)) >= 3, proc.stderr
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert 'interrupted' in out and 'Traceback' not in err
