"""The converted checkpoint's card (README.md): where it came from and what was done to it."""

from __future__ import annotations

from dataclasses import dataclass, field
import datetime
import hashlib
from pathlib import Path

SOURCE_KEY = 'drive_vlm_source'  # config.json field: {'converter', 'path', 'config_sha256'}


def file_sha256(path: Path) -> str:
    """Return the hex SHA-256 of a file (the source config.json identifies the source)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class Card:
    """What the README of a converted checkpoint records."""

    kind: str
    source: Path
    config_sha256: str
    target_class: str
    prompt_format: str
    dtype: str
    tensors: int
    shards: int
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        import transformers

        when = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
        lines = [
            f'# {self.source.name} converted by drive-vlm convert {self.kind}',
            '',
            '| | |',
            '| --- | --- |',
            f'| source | `{self.source}` |',
            f'| source config.json SHA-256 | `{self.config_sha256}` |',
            f'| target class | `{self.target_class}` (transformers {transformers.__version__}) |',
            f'| prompt format | `{self.prompt_format}` (config.json `drive_vlm_prompt_format`) |',
            f'| dtype | {self.dtype} |',
            f'| tensors / shards | {self.tensors} / {self.shards} |',
            f'| converted | {when} |',
            '',
            'Every source tensor was mapped, every parameter of the target class (built from the '
            'converted config) was filled, and every shape matched before any weight was written.',
            '',
            '## Notes',
            *[f'- {n}' for n in self.notes],
            '',
            '## Use',
            '`drive-vlm run --model <this directory> --bag ... --out ...`, the ROS node with '
            '`model:=<this directory>`, or plain transformers: '
            f'`AutoModelForImageTextToText.from_pretrained(<this directory>)` (loads '
            f'`{self.target_class}`; no remote code).',
            '',
        ]
        return '\n'.join(lines)

    def write(self, out_dir: Path) -> Path:
        path = Path(out_dir) / 'README.md'
        path.write_text(self.text())
        return path
