"""
Read a checkpoint tensor by tensor and write sharded safetensors with an index.

``SafetensorsSource`` reads only the JSON headers of the source shards up front (names, shapes,
dtypes: no tensor data), then hands out one tensor at a time through ``safe_open``, so a
conversion holds about one output shard in memory however large the model is. Pickled weights
(``.bin``, ``.pt``, ...) are refused before anything is opened: unpickling runs arbitrary code.

``ShardedWriter`` writes the output shards of a plan made in advance (``model-0000i-of-0000N``
plus ``model.safetensors.index.json``, the layout ``from_pretrained`` reads). Each shard is written
to a temporary name and renamed when complete, and a progress file records finished shards, so
an interrupted run resumes where it stopped and keeps what it finished.

``LiveBytes`` counts the bytes of every tensor the conversion holds (weak references, released
when the tensor is freed), which is how the tests check the memory bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import json
import os
from pathlib import Path
import struct
import weakref

from safetensors import safe_open
from safetensors.torch import save_file
import torch
from torch import Tensor

PICKLE_SUFFIXES = ('.bin', '.pt', '.pth', '.ckpt', '.pkl', '.pickle')
INDEX_NAME = 'model.safetensors.index.json'
PROGRESS_NAME = '.drive-vlm-convert.json'
DTYPE_BYTES = {'F64': 8, 'F32': 4, 'F16': 2, 'BF16': 2, 'I64': 8, 'I32': 4, 'I16': 2, 'I8': 1,
               'U8': 1, 'BOOL': 1, 'F8_E4M3': 1, 'F8_E5M2': 1}
TORCH_DTYPE_NAMES = {torch.float32: 'F32', torch.float16: 'F16', torch.bfloat16: 'BF16',
                     torch.float64: 'F64'}


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message names the problem and the fix."""


@dataclass(frozen=True)
class TensorInfo:
    """Where a source tensor lives and what it is, read from its shard's header."""

    shard: Path
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype name, e.g. 'BF16'

    @property
    def nbytes(self) -> int:
        count = 1
        for dim in self.shape:
            count *= dim
        return count * DTYPE_BYTES.get(self.dtype, 4)


def refuse_pickles(directory: Path) -> None:
    """Raise if ``directory`` holds pickled weights and no safetensors (nothing is unpickled)."""
    pickled = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled and not any(directory.glob('*.safetensors')):
        raise ConversionError(
            f'{directory} holds pickled weights ({", ".join(pickled[:4])}) and no .safetensors: '
            'drive-vlm never unpickles a file, because loading a pickle runs whatever code it '
            'contains. Convert it once on a machine you trust, inside a sandbox, e.g. '
            '`python -c "import torch; from safetensors.torch import save_file; '
            "save_file(torch.load('pytorch_model.bin', weights_only=True), "
            "'model.safetensors', metadata={'format': 'pt'})\"` (one shard at a time for a "
            'sharded checkpoint), or download the safetensors revision of the model, then run '
            'this command again'
        )


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Return name -> TensorInfo from a safetensors file's JSON header (no tensor data read)."""
    with open(path, 'rb') as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ConversionError(f'{path} is not a safetensors file (shorter than its header)')
        (length,) = struct.unpack('<Q', raw)
        if length > 100_000_000:
            raise ConversionError(f'{path} is not a safetensors file (header of {length} bytes)')
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConversionError(f'{path} has a damaged safetensors header: {err}') from None
    return {name: TensorInfo(path, tuple(meta['shape']), meta['dtype'])
            for name, meta in header.items() if name != '__metadata__'}


class SafetensorsSource:
    """The tensors of a checkpoint directory, read lazily one at a time."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        refuse_pickles(self.directory)
        self.shards = self._shard_files()
        self.infos: dict[str, TensorInfo] = {}
        for shard in self.shards:
            for name, info in read_header(shard).items():
                if name in self.infos:
                    raise ConversionError(f'tensor {name} is in both {self.infos[name].shard.name}'
                                          f' and {shard.name}')
                self.infos[name] = info
        self._open: tuple[Path, object] | None = None

    def _shard_files(self) -> list[Path]:
        index = self.directory / INDEX_NAME
        if index.is_file():
            weight_map = json.loads(index.read_text()).get('weight_map', {})
            names = sorted(set(weight_map.values()))
            bad = [n for n in names if not n.endswith('.safetensors')]
            if bad:
                raise ConversionError(f'{index} points at non-safetensors files {bad[:3]}')
            missing = [n for n in names if not (self.directory / n).is_file()]
            if missing:
                raise ConversionError(f'{index} lists shards that are not there: {missing[:3]} '
                                      '(an interrupted download?)')
            return [self.directory / n for n in names]
        shards = sorted(self.directory.glob('*.safetensors'))
        if not shards:
            raise ConversionError(f'{self.directory} has no .safetensors weights')
        return shards

    def read(self, name: str) -> Tensor:
        """Return one tensor (a fresh CPU tensor; the shard stays open for the next read)."""
        shard = self.infos[name].shard
        if self._open is None or self._open[0] != shard:
            self.close()
            self._open = (shard, safe_open(str(shard), framework='pt', device='cpu'))
        return self._open[1].get_tensor(name)

    def close(self) -> None:
        self._open = None


class LiveBytes:
    """The bytes of the tracked tensors still alive, and the peak of that sum."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self._storages: set[int] = set()

    def track(self, tensor: Tensor) -> Tensor:
        """Count ``tensor``'s storage until the tensor is freed; return it unchanged."""
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self._storages or storage.nbytes() == 0:
            return tensor
        self._storages.add(key)
        self.now += storage.nbytes()
        self.peak = max(self.peak, self.now)
        weakref.finalize(tensor, self._release, key, storage.nbytes())
        return tensor

    def _release(self, key: int, nbytes: int) -> None:
        self._storages.discard(key)
        self.now -= nbytes


@dataclass(frozen=True)
class ShardPlan:
    """Output file name and the target tensors it holds, in write order."""

    name: str
    tensors: tuple[str, ...]


def plan_shards(sizes: Sequence[tuple[str, int]], max_bytes: int) -> list[ShardPlan]:
    """Split ``(name, nbytes)`` (in processing order) into shards of at most ``max_bytes``."""
    groups: list[list[str]] = [[]]
    used = 0
    for name, nbytes in sizes:
        if groups[-1] and used + nbytes > max_bytes:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += nbytes
    total = len(groups)
    if total == 1:
        return [ShardPlan('model.safetensors', tuple(groups[0]))]
    return [ShardPlan(f'model-{i + 1:05d}-of-{total:05d}.safetensors', tuple(g))
            for i, g in enumerate(groups)]


class ShardedWriter:
    """Write planned shards one at a time; resume a run with the same plan."""

    def __init__(self, out_dir: Path, shards: Sequence[ShardPlan], plan_id: str) -> None:
        self.out_dir = out_dir
        self.shards = list(shards)
        self.plan_id = plan_id
        self.done: set[str] = set()
        progress = out_dir / PROGRESS_NAME
        if progress.is_file():
            state = json.loads(progress.read_text())
            if state.get('plan') != plan_id:
                raise ConversionError(
                    f'{out_dir} holds an unfinished conversion of a different source or '
                    'settings; delete that directory or pick another output directory'
                )
            self.done = {n for n in state.get('done', []) if (out_dir / n).is_file()}
        self._save_progress()

    def pending(self) -> list[ShardPlan]:
        return [s for s in self.shards if s.name not in self.done]

    def write(self, shard: ShardPlan, tensors: dict[str, Tensor]) -> None:
        """Write one complete shard atomically and record it as done."""
        missing = [n for n in shard.tensors if n not in tensors]
        if missing:
            raise ConversionError(f'shard {shard.name} is missing {missing[:3]} (a bug)')
        tmp = self.out_dir / (shard.name + '.partial')
        save_file({n: tensors[n].contiguous() for n in shard.tensors}, str(tmp),
                  metadata={'format': 'pt'})
        os.replace(tmp, self.out_dir / shard.name)
        self.done.add(shard.name)
        self._save_progress()

    def finish(self, sizes: dict[str, int]) -> None:
        """Write the index (for sharded output) and drop the progress file."""
        if len(self.shards) > 1:
            index = {'metadata': {'total_size': sum(sizes.values())},
                     'weight_map': {t: s.name for s in self.shards for t in s.tensors}}
            (self.out_dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + '\n')
        (self.out_dir / PROGRESS_NAME).unlink(missing_ok=True)

    def _save_progress(self) -> None:
        state = {'plan': self.plan_id, 'done': sorted(self.done)}
        (self.out_dir / PROGRESS_NAME).write_text(json.dumps(state) + '\n')


def parse_size(text: str) -> int:
    """Parse '5GB', '500MB', '2GiB' or a byte count into bytes."""
    units = {'kib': 2**10, 'mib': 2**20, 'gib': 2**30, 'kb': 10**3, 'mb': 10**6, 'gb': 10**9,
             'b': 1}
    value = text.strip().lower()
    suffix = next((u for u in units if value.endswith(u)), '')
    number = value[:len(value) - len(suffix)].strip()
    try:
        size = int(float(number) * units.get(suffix, 1))
    except ValueError:
        raise ConversionError(f'{text!r} is not a size; give e.g. 5GB, 500MB or 2GiB') from None
    if size < 1:
        raise ConversionError(f'{text!r}: the shard size must be positive')
    return size


def dtype_name(dtype: torch.dtype) -> str:
    return TORCH_DTYPE_NAMES.get(dtype, str(dtype))


def element_bytes(dtype: str) -> int:
    return DTYPE_BYTES.get(dtype, 4)
