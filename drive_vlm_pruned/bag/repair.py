"""
``drive-vlm bag repair``: rewrite a truncated mcap (a killed recording) as a complete one.

A recording killed before it closed has no summary and no footer, which rosbags (and ``ros2 bag``)
need to open it. mcap's stream reader still reads every record up to the break; this copies
each schema, channel and message it gets there into a new file, which ``finish()`` completes
with the index and footer, as ``mcap recover`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RepairReport:
    """What a repair recovered, and why the source stopped where it did."""

    messages: int
    channels: int
    stopped: str

    def describe(self, src: Path, dst: Path) -> str:
        return (f'{src}: recovered {self.messages} messages on {self.channels} channels into '
                f'{dst} ({self.stopped})')


def repair_mcap(src: str | Path, dst: str | Path) -> RepairReport:
    """Copy every readable record of ``src`` into the complete mcap ``dst`` (a new file)."""
    from mcap.records import Channel, Message, Schema
    from mcap.stream_reader import StreamReader
    from mcap.writer import CompressionType, Writer

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f'{src} is not a file: pass the .mcap a recording left')
    if dst.exists():
        raise FileExistsError(f'{dst} exists: repair writes a new file; choose another name')
    schemas: dict[int, int] = {}
    channels: dict[int, int] = {}
    count, stopped = 0, 'the source was complete'
    with src.open('rb') as stream, dst.open('xb') as out:
        writer = Writer(out, compression=CompressionType.ZSTD)
        writer.start(profile='ros2', library='drive_vlm_pruned bag repair')
        try:
            for record in StreamReader(stream, record_size_limit=None).records:
                if isinstance(record, Schema) and record.id not in schemas:
                    schemas[record.id] = writer.register_schema(record.name, record.encoding,
                                                                record.data)
                elif isinstance(record, Channel) and record.id not in channels:
                    channels[record.id] = writer.register_channel(
                        record.topic, record.message_encoding, schemas.get(record.schema_id, 0),
                        dict(record.metadata))
                elif isinstance(record, Message) and record.channel_id in channels:
                    writer.add_message(channels[record.channel_id], record.log_time, record.data,
                                       record.publish_time, record.sequence)
                    count += 1
        except Exception as err:  # noqa: B902 - the break is what a repair is for: report it
            stopped = f'the source breaks after message {count}: {type(err).__name__}: {err}'
        writer.finish()
    return RepairReport(count, len(channels), stopped)
