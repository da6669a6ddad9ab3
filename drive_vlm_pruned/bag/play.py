"""
``drive-vlm bag play``: publish a rosbag2's messages over rclpy with their recorded timing.

For machines where ``ros2 bag play`` is missing (the pip-only ROS here). Each message's raw
CDR bytes go straight to ``Publisher.publish(bytes)`` (rclpy's serialized publish): nothing is
decoded or re-encoded, so subscribers receive exactly the recorded bytes, header stamps
included (like ``ros2 bag play``, stamps are not rewritten, also not when looping).

A publisher needs the message type's Python package: topics whose package is not installed
(tf2_msgs and visualization_msgs with PyPI's ROS wheels) are skipped, each with one log line,
and counted in PlayStats. QoS: reliable, volatile, keep-last ``depth`` for every topic by
default: a best-effort subscriber (the node's sensor-data QoS) receives from a reliable
publisher, a reliable one too, and on loopback nothing is lost. Topics recorded as transient
local (/tf_static) stay latched. ``qos`` forces reliable or best-effort on all topics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import importlib
from pathlib import Path
import signal
import threading
import time

from ..cameras import camera_topics

QOS_CHOICES = ('reliable', 'best-effort')
# Time for readers to learn of our writers after the writers list them (_wait_for_subscribers).
MATCH_SETTLE_S = 0.5


@dataclass(frozen=True)
class PlayOptions:
    """
    How to replay; each field has a CLI option.

    ``rate`` scales speed (2.0: twice as fast). ``start_offset_s`` skips the bag's first
    seconds. ``remap`` renames topics (recorded name, published name). ``topics`` limits
    playback to these recorded topics (empty: all). ``wait_for_subscribers_s`` waits up to
    that long, before the first message, until every camera image topic has a subscriber and
    every subscriber in the graph is matched (see _wait_for_subscribers).
    """

    rate: float = 1.0
    loop: bool = False
    start_offset_s: float = 0.0
    remap: tuple[tuple[str, str], ...] = ()
    qos: str | None = None
    topics: tuple[str, ...] = ()
    wait_for_subscribers_s: float = 0.0
    depth: int = 10
    node_name: str = 'drive_vlm_bag_player'

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError(f'--rate {self.rate}: use a positive factor (1.0 = recorded speed)')
        if self.start_offset_s < 0:
            raise ValueError(f'--start-offset {self.start_offset_s}: use seconds >= 0')
        if self.qos is not None and self.qos not in QOS_CHOICES:
            raise ValueError(f'--qos {self.qos!r}: use one of {", ".join(QOS_CHOICES)}')
        if self.depth < 1:
            raise ValueError(f'--depth {self.depth}: keep at least 1 message per topic')


@dataclass
class PlayStats:
    """What a playback did: messages per published topic, skips, timing, how it ended."""

    published: dict[str, int] = field(default_factory=dict)
    skipped_topics: dict[str, str] = field(default_factory=dict)
    skipped_messages: int = 0
    loops: int = 0
    wall_s: float = 0.0
    bag_s: float = 0.0
    max_late_s: float = 0.0
    unmatched: tuple[str, ...] = ()
    interrupted: bool = False

    @property
    def total(self) -> int:
        return sum(self.published.values())

    def summary(self) -> str:
        lines = [f'published {self.total} messages on {len(self.published)} topics in '
                 f'{self.wall_s:.2f} s ({self.loops} pass(es) over {self.bag_s:.2f} s of bag; '
                 f'latest message {self.max_late_s * 1000:.1f} ms late)'
                 + (' - interrupted' if self.interrupted else '')]
        for topic, reason in sorted(self.skipped_topics.items()):
            lines.append(f'skipped {topic}: {reason}')
        if self.unmatched:
            lines.append(f'no subscriber before the first message on: {", ".join(self.unmatched)}')
        return '\n'.join(lines)


def parse_remap(text: str) -> tuple[str, str]:
    """Parse ``FROM:=TO`` (ROS remapping syntax) into a pair of absolute topic names."""
    src, sep, dst = text.partition(':=')
    if not sep or not src or not dst or not src.startswith('/') or not dst.startswith('/'):
        raise ValueError(f'--remap {text!r}: write FROM:=TO with absolute topic names, '
                         'e.g. /cam_front/image_raw:=/front/image')
    return src, dst


def message_class(msgtype: str):
    """Return the rclpy message class of ``pkg/msg/Name``, or raise ImportError saying why."""
    package, _, name = msgtype.split('/')
    try:
        module = importlib.import_module(f'{package}.msg')
    except ImportError:
        raise ImportError(f'no Python package {package!r} for {msgtype} is installed (source '
                          'a ROS 2 install that has it)') from None
    try:
        return getattr(module, name)
    except AttributeError:
        raise ImportError(f'{package}.msg has no {name} (a different {package} version?)'
                          ) from None


def _qos(connection, options: PlayOptions):
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    latched = any(getattr(q.durability, 'name', '') == 'TRANSIENT_LOCAL'
                  for q in getattr(connection.ext, 'offered_qos_profiles', ()) or ())
    reliability = (ReliabilityPolicy.BEST_EFFORT if options.qos == 'best-effort'
                   else ReliabilityPolicy.RELIABLE)
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=options.depth,
                      reliability=reliability,
                      durability=(DurabilityPolicy.TRANSIENT_LOCAL if latched
                                  else DurabilityPolicy.VOLATILE))


def _wait_for_subscribers(node, publishers: dict, cameras: set[str], timeout_s: float,
                          stop: threading.Event) -> tuple[str, ...]:
    """
    Wait until every camera image topic has a subscriber and every publisher has matched.

    ``cameras`` are the published names of the bag's camera image topics (after remapping).
    Matched means a publisher sees as many subscriptions as the ROS graph lists for its topic,
    so the first messages are not lost to discovery still in progress. Return the camera
    topics still without a subscriber when the wait ended (timeout or ``stop``).

    DDS matching is one-sided: our writer can list a reader before that reader has learnt of
    the writer, and a best-effort reader drops samples from writers it does not know yet. No
    API shows the reader's side, so once all is matched the player holds MATCH_SETTLE_S more.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        missing = tuple(sorted(n for n, p in publishers.items()
                               if n in cameras and p.get_subscription_count() < 1))
        unmatched = [n for n, p in publishers.items()
                     if p.get_subscription_count() < node.count_subscribers(n)]
        if not missing and not unmatched:
            stop.wait(MATCH_SETTLE_S)
            return missing
        if time.monotonic() >= deadline or stop.wait(0.02):
            return missing


def play_bag(path: str | Path, options: PlayOptions = PlayOptions(), node=None,
             stop: threading.Event | None = None) -> PlayStats:
    """
    Publish the bag at ``path`` with its recorded timing; return what was published.

    Without ``node`` it makes its own rclpy context and node and shuts both down on return
    (Ctrl-C included: it stops cleanly and returns stats with ``interrupted``). With a node it
    publishes from that node and leaves it alive. Setting ``stop`` ends playback early.
    """
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    from .reading import open_any_reader

    path = Path(path)
    if not (path / 'metadata.yaml').is_file() and not path.is_file():
        raise FileNotFoundError(f'no bag at {path}: give a rosbag2 directory (with '
                                'metadata.yaml), e.g. one from `drive-vlm bag synth`')
    stop = stop or threading.Event()
    stats = PlayStats()
    context = None
    if node is None:
        context = rclpy.Context()
        # No rclpy signal handlers: Ctrl-C is _stop_on_ctrl_c's (below).
        rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
        node = rclpy.create_node(options.node_name, context=context)
    publishers: dict[str, object] = {}
    wall0 = None
    # Installed here, so the finally below always puts the old handler back.
    previous = _stop_on_ctrl_c(stop, stats) if context is not None else None
    try:
        with open_any_reader(path) as reader:
            recorded = {c.topic for c in reader.connections}
            remap = dict(options.remap)
            for name in list(remap) + list(options.topics):
                if name not in recorded:
                    raise ValueError(f'{name}: no such topic in {path} (it has: '
                                     f'{", ".join(sorted(recorded))})')
            wanted = [c for c in reader.connections
                      if not options.topics or c.topic in options.topics]
            by_connection = {}
            for conn in wanted:
                if conn.topic in stats.skipped_topics:
                    continue
                out = remap.get(conn.topic, conn.topic)
                if out not in publishers:
                    try:
                        cls = message_class(conn.msgtype)
                    except ImportError as err:
                        stats.skipped_topics[conn.topic] = str(err)
                        node.get_logger().warning(f'skipping {conn.topic}: {err}')
                        continue
                    publishers[out] = node.create_publisher(cls, out, _qos(conn, options))
                by_connection[conn.id] = (out, publishers[out])
            if options.wait_for_subscribers_s > 0:
                cameras = {remap.get(t, t) for t in camera_topics(False) + camera_topics(True)}
                stats.unmatched = _wait_for_subscribers(
                    node, publishers, cameras, options.wait_for_subscribers_s, stop)
            start_ns = reader.start_time + int(options.start_offset_s * 1e9)
            wall0 = time.perf_counter()
            while not stop.is_set():
                _play_once(reader, wanted, by_connection, start_ns, options.rate, stop, stats)
                stats.loops += 1
                if not options.loop:
                    break
    except KeyboardInterrupt:
        stats.interrupted = True
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        if wall0 is not None:
            stats.wall_s = time.perf_counter() - wall0
        for pub in publishers.values():
            node.destroy_publisher(pub)
        if context is not None:
            node.destroy_node()
            context.try_shutdown()
    return stats


def _stop_on_ctrl_c(stop: threading.Event, stats: PlayStats):
    """
    Make Ctrl-C set ``stop`` (and mark the stats interrupted); return the handler it replaces.

    Why not the KeyboardInterrupt: it can land inside an rclpy/DDS call, and a publisher torn
    down from there sometimes kept the process from exiting. With the event the loop ends at the
    next message and shuts down as after a normal pass. Only the main thread may set a handler;
    elsewhere this returns None and the KeyboardInterrupt path stays.
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def on_sigint(_signum, _frame) -> None:
        stats.interrupted = True
        stop.set()

    return signal.signal(signal.SIGINT, on_sigint)


def _play_once(reader, connections, by_connection: dict, start_ns: int, rate: float,
               stop: threading.Event, stats: PlayStats) -> None:
    """Publish one pass of the bag from ``start_ns``, pacing each message by its timestamp."""
    first = last = None
    wall0 = time.perf_counter()
    for conn, stamp_ns, raw in reader.messages(connections=connections, start=start_ns):
        if stop.is_set():
            break
        target = by_connection.get(conn.id)
        if target is None:
            stats.skipped_messages += 1
            continue
        if first is None:
            first = stamp_ns
        delay = wall0 + (stamp_ns - first) / 1e9 / rate - time.perf_counter()
        if delay > 0:
            if stop.wait(delay):
                break
        else:
            stats.max_late_s = max(stats.max_late_s, -delay)
        topic, publisher = target
        publisher.publish(raw if isinstance(raw, bytes) else bytes(raw))
        stats.published[topic] = stats.published.get(topic, 0) + 1
        last = stamp_ns
    if first is not None and last is not None:
        stats.bag_s = max(stats.bag_s, (last - first) / 1e9)
