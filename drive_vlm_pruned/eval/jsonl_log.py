"""
The resumable JSON-lines log of a long run: a header naming the run, then one record per line.

Used by the eval loop (one line per answered QA, eval/runner.py) and by the accuracy sweep
(one line per finished cell and data seed, bench/accuracy_sweep.py). Rules, the same for both:

- A new log is written with its header alone; each record is appended and flushed when it is
  finished, so a killed run keeps everything up to its last record.
- Reopening reads the records back, keyed by ``key(record)`` (a later line supersedes an
  earlier one with the same key). A torn last line, which a kill mid-write leaves, is dropped
  from the file.
- The header must match the run's, key for key, so a resumed run never mixes settings; the
  error names the first key that differs.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
import json
from pathlib import Path


@dataclass(frozen=True)
class LogHints:
    """What the errors of one kind of log tell the user to do."""

    what: str  # e.g. 'an eval items file'
    exists: str = ''  # when the log exists and the run may not resume it ('' : it resumes)
    mismatch: str = 'resume with the same options, or choose another --out'
    not_a_log: str = 'choose another --out or pass --overwrite'


class ResumableLog:
    """A header line, then one JSON record per line, resumed by key (module doc)."""

    def __init__(self, path: Path, header: Mapping, key: Callable[[dict], Hashable],
                 hints: LogHints, resume: bool = True, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.header = json.loads(json.dumps(dict(header)))  # as it reads back
        self.key = key
        self.hints = hints
        self.done: dict[Hashable, dict] = {}
        if self.path.exists() and not overwrite:
            if not resume:
                raise ValueError(f'{self.path} exists ({hints.exists})')
            self._read()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({'header': self.header}) + '\n')

    def _read(self) -> None:
        raw = self.path.read_bytes()
        good = raw[:raw.rfind(b'\n') + 1]  # a kill mid-write leaves a torn last line
        lines = good.decode().splitlines()
        if not lines:
            raise ValueError(f'{self.path} is empty: delete it, or pass --overwrite')
        try:
            header = json.loads(lines[0])['header']
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(f'{self.path} does not start with a header: not {self.hints.what}; '
                             f'{self.hints.not_a_log}') from None
        diff = sorted(k for k in set(header) | set(self.header)
                      if header.get(k) != self.header.get(k))
        if diff:
            k = diff[0]
            raise ValueError(f'{self.path} was written with {k}={header.get(k)!r}, this run has '
                             f'{k}={self.header.get(k)!r}: {self.hints.mismatch}')
        for line in lines[1:]:
            record = json.loads(line)
            self.done[self.key(record)] = record
        if len(good) != len(raw):
            self.path.write_bytes(good)

    def append(self, records: list[dict]) -> None:
        """Write ``records`` and flush them: they survive a kill from here on."""
        with open(self.path, 'a') as out:
            for record in records:
                out.write(json.dumps(record) + '\n')
            out.flush()
        for record in records:
            self.done[self.key(record)] = record
