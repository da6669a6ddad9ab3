"""
Read a rosbag2's messages in log-time order, and say exactly where a damaged bag breaks.

rosbags' AnyReader reads intact bags (mcap and sqlite3). A truncated mcap has no footer, so
AnyReader cannot open it; then the mcap stream reader recovers every record before the break.
Either way the caller gets the messages up to the damage and a ``BagBreak`` naming it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
import tempfile

from .topics import typestore


@dataclass(frozen=True)
class BagMessage:
    """One deserialized message with its topic, type and log time."""

    topic: str
    msgtype: str
    log_time_ns: int
    msg: object


@dataclass
class BagBreak:
    """Where reading stopped early: after ``messages_read`` messages, at ``log_time_ns``."""

    messages_read: int
    log_time_ns: int | None
    reason: str

    def describe(self, bag: str | Path) -> str:
        at = f'after log time {self.log_time_ns} ns' if self.log_time_ns is not None else ''
        return (f'bag {bag} is damaged: reading stopped after {self.messages_read} messages '
                f'{at} ({self.reason}); results up to there are kept')


@contextmanager
def rosbag2_path(path: Path) -> Iterator[Path]:
    """
    Yield a path that rosbags' AnyReader opens as rosbag2, whatever the directory is called.

    AnyReader takes every path whose suffix is ``.bag`` for a ROS 1 bag file (rosbags 0.11), so
    a rosbag2 directory named ``drive.bag`` failed with "Is a directory" and was then reported
    as damaged. Such a directory is read through a symlink with a neutral name.
    """
    if not (path.is_dir() and path.suffix == '.bag'):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix='drive-vlm-bag-') as tmp:
        link = Path(tmp) / 'rosbag2'
        link.symlink_to(path.resolve(), target_is_directory=True)
        yield link


@contextmanager
def open_any_reader(path: Path):
    """Open ``path`` (a rosbag2 directory of any name, or a ROS 1 bag file) with AnyReader."""
    from rosbags.highlevel import AnyReader

    with rosbag2_path(path) as readable, AnyReader(
            [readable], default_typestore=typestore()) as reader:
        yield reader


class BagReader:
    """Iterate the messages of chosen topics; ``damage`` is set if the bag broke."""

    def __init__(self, path: str | Path, topics: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f'bag {self.path} does not exist: pass a rosbag2 directory')
        self.topics = set(topics) if topics else None
        self.damage: BagBreak | None = None
        self.available: dict[str, str] = {}  # topic -> msgtype

    def check_topics(self) -> None:
        """Raise ValueError listing the bag's topics if it has none of the wanted ones."""
        from rosbags.highlevel import AnyReaderError

        try:
            with open_any_reader(self.path) as reader:
                found = {c.topic for c in reader.connections}
        except AnyReaderError:
            return  # damaged: messages() recovers what it can and reports the break
        if self.topics is not None and not found & self.topics:
            raise ValueError(f'bag {self.path} has none of the camera topics '
                             f'{", ".join(sorted(self.topics)[:2])}, ...; it has '
                             f'{", ".join(sorted(found))}: set the camera namespace')

    def messages(self) -> Iterator[BagMessage]:
        with rosbag2_path(self.path) as readable:
            yield from self._messages(readable)

    def _messages(self, readable: Path) -> Iterator[BagMessage]:
        from rosbags.highlevel import AnyReader, AnyReaderError

        try:
            reader = AnyReader([readable], default_typestore=typestore())
            reader.open()
        except AnyReaderError as err:
            mcaps = sorted(self.path.glob('*.mcap')) if self.path.is_dir() else [self.path]
            if not mcaps or mcaps[0].suffix != '.mcap':
                raise ValueError(f'cannot open bag {self.path}: {err}') from None
            yield from self._stream_mcap(mcaps[0], str(err))
            return
        try:
            self.available = {c.topic: c.msgtype for c in reader.connections}
            wanted = [c for c in reader.connections
                      if self.topics is None or c.topic in self.topics]
            if not wanted:  # rosbags reads EVERY topic for an empty connection list
                return
            count, last = 0, None
            try:
                for conn, log_time, raw in reader.messages(connections=wanted):
                    msg = reader.deserialize(raw, conn.msgtype)
                    yield BagMessage(conn.topic, conn.msgtype, log_time, msg)
                    count, last = count + 1, log_time
            except Exception as err:  # noqa: B902 - any storage error: report where, keep going
                self.damage = BagBreak(count, last, f'{type(err).__name__}: {err}')
        finally:
            reader.close()

    def _stream_mcap(self, path: Path, open_error: str) -> Iterator[BagMessage]:
        from mcap.records import Channel, Message, Schema
        from mcap.stream_reader import StreamReader

        store = typestore()
        schemas, channels = {}, {}
        count, last = 0, None
        with path.open('rb') as stream:
            records = StreamReader(stream, record_size_limit=None).records
            try:
                for record in records:
                    if isinstance(record, Schema):
                        schemas[record.id] = record.name
                        if record.name not in store.types and record.data:
                            self._register(store, record)
                    elif isinstance(record, Channel):
                        channels[record.id] = (record.topic, schemas.get(record.schema_id, ''))
                        self.available[record.topic] = channels[record.id][1]
                    elif isinstance(record, Message) and record.channel_id in channels:
                        topic, msgtype = channels[record.channel_id]
                        if self.topics is not None and topic not in self.topics:
                            continue
                        msg = store.deserialize_cdr(record.data, msgtype)
                        yield BagMessage(topic, msgtype, record.log_time, msg)
                        count, last = count + 1, record.log_time
            except Exception as err:  # noqa: B902 - the break itself is what we report
                self.damage = BagBreak(count, last, f'{open_error}; then {type(err).__name__}: '
                                                    f'{err}')
                return
        self.damage = BagBreak(count, last, f'{open_error}; the stream ended without a footer')

    @staticmethod
    def _register(store, schema) -> None:
        from rosbags.typesys import get_types_from_msg

        try:
            store.register(get_types_from_msg(schema.data.decode(), schema.name))
        except Exception:  # noqa: B902 - a type we cannot parse is simply not deserialized
            pass
