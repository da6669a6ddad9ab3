"""
``convert_checkpoint``: one published checkpoint in, one HF-native checkpoint directory out.

Order of work: read the source config and the shard headers; plan (target config, tokenizer,
image processor, every weight rule); check the plan against the target class built on the meta
device; write the small files; stream the weights shard by shard; write the index and the card.
A failed check writes nothing; an interrupted weight stream resumes on the next run.
"""

from __future__ import annotations

from dataclasses import dataclass
import hashlib
import json
from pathlib import Path

import torch

from .card import Card, file_sha256, SOURCE_KEY
from .kinds import KINDS
from .mapping import check_plan, execute
from .safetensors_stream import (
    ConversionError,
    dtype_name,
    element_bytes,
    LiveBytes,
    plan_shards,
    PROGRESS_NAME,
    read_header,
    SafetensorsSource,
    ShardedWriter,
)
from ..models.prompts import PROMPT_FORMAT_KEY

DTYPES = {'auto': None, 'bf16': torch.bfloat16, 'bfloat16': torch.bfloat16,
          'fp16': torch.float16, 'float16': torch.float16, 'fp32': torch.float32,
          'float32': torch.float32}
DEFAULT_SHARD_BYTES = 5 * 10**9


@dataclass(frozen=True)
class ConvertOptions:
    """How to convert: output dtype, shard size, progress bar, a vision config override."""

    dtype: str = 'auto'  # auto (keep the source dtype) | bf16 | fp16 | fp32
    max_shard_bytes: int = DEFAULT_SHARD_BYTES
    vision_config: Path | None = None  # drivemm: the SigLIP tower's config.json
    progress: bool = True


@dataclass(frozen=True)
class ConversionReport:
    """What a conversion did (the memory figures back the tests' one-shard bound)."""

    out_dir: Path
    kind: str
    tensors: int
    shards: int
    tensors_written_now: int
    peak_live_bytes: int
    largest_source_shard_bytes: int
    plan_id: str = ''  # what an interrupted run's progress file must name to resume


def read_config(src: Path) -> dict:
    path = src / 'config.json'
    if not path.is_file():
        raise ConversionError(f'{src} has no config.json: pass the checkpoint DIRECTORY')
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConversionError(f'{path} is not valid JSON: {err}') from None


def check_dirs(src: Path, out: Path) -> None:
    if not src.is_dir():
        raise ConversionError(f'source {src} is not a directory')
    if out.resolve() == src.resolve():
        raise ConversionError('the output directory must differ from the source directory')
    if out.exists() and any(out.iterdir()) and not (out / PROGRESS_NAME).is_file():
        raise ConversionError(f'{out} is not empty: pick a new directory for the conversion')


def convert_checkpoint(kind: str, src: str | Path, out: str | Path,
                       options: ConvertOptions = ConvertOptions()) -> ConversionReport:
    """Convert ``src`` (a published ``kind`` checkpoint) into ``out``; ConversionError if not."""
    if kind not in KINDS:
        raise ConversionError(f'unknown kind {kind!r}; one of {", ".join(KINDS)}')
    if options.dtype not in DTYPES:
        raise ConversionError(f'dtype {options.dtype!r} is not one of {", ".join(DTYPES)}')
    src, out = Path(src).expanduser(), Path(out).expanduser()
    check_dirs(src, out)
    config = read_config(src)
    config_hash = file_sha256(src / 'config.json')
    source_record = {'converter': kind, 'path': str(src.resolve()), 'config_sha256': config_hash}
    if kind == 'impromptu-vla':
        return _impromptu(src, out, config, source_record)
    from . import drivelmm_o1, drivemm

    source = SafetensorsSource(src)
    module = drivemm if kind == 'drivemm' else drivelmm_o1
    prepared = module.prepare(src, config, source, options.vision_config)
    target_class = prepared.model_class.__name__
    check_plan(prepared.rules, source.infos, expected_shapes(prepared), prepared.ignored,
               target_class, kind)
    dtype = DTYPES[options.dtype]
    out_dtype = dtype or _source_dtype(source)
    sizes = [(name, _numel(shape) * element_bytes(dtype_name(out_dtype)))
             for rule in prepared.rules for name, shape in rule.outputs]
    shards = plan_shards(sizes, options.max_shard_bytes)
    plan_id = _plan_id(kind, config_hash, options, sizes, source)
    out.mkdir(parents=True, exist_ok=True)
    writer = ShardedWriter(out, shards, plan_id)
    config_out = prepared.config
    config_out.architectures = [target_class]
    config_out.dtype = str(out_dtype).removeprefix('torch.')
    setattr(config_out, PROMPT_FORMAT_KEY, kind)
    setattr(config_out, SOURCE_KEY, source_record)
    config_out.save_pretrained(out)
    prepared.tokenizer.save_pretrained(out)
    prepared.image_processor.save_pretrained(out)
    prepared.generation_config.save_pretrained(out)
    live = LiveBytes()
    written = execute(prepared.rules, source, writer, shards, dtype, live, options.progress,
                      f'drive-vlm convert {kind}')
    writer.finish(dict(sizes))
    Card(kind, src.resolve(), config_hash, target_class, kind, config_out.dtype, len(sizes),
         len(shards), prepared.notes).write(out)
    largest = max((sum(i.nbytes for i in source.infos.values() if i.shard == s)
                   for s in source.shards), default=0)
    return ConversionReport(out, kind, len(sizes), len(shards), written, live.peak, largest,
                            plan_id)


def expected_shapes(prepared) -> dict[str, tuple[int, ...]]:
    """Return the parameter shapes of the target class built from the converted config."""
    with torch.device('meta'):
        model = prepared.model_class(prepared.config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if prepared.config.get_text_config().tie_word_embeddings:
        shapes.pop('lm_head.weight', None)
    return shapes


def _source_dtype(source: SafetensorsSource) -> torch.dtype:
    names = {'BF16': torch.bfloat16, 'F16': torch.float16, 'F32': torch.float32}
    for info in source.infos.values():
        if info.dtype in names:
            return names[info.dtype]
    return torch.float32


def _numel(shape) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _plan_id(kind: str, config_hash: str, options: ConvertOptions, sizes, source) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([kind, config_hash, options.dtype, options.max_shard_bytes,
                              sizes, sorted((s.name, s.stat().st_size) for s in source.shards)])
                  .encode())
    return digest.hexdigest()


def _impromptu(src: Path, out: Path, config: dict, record: dict) -> ConversionReport:
    from .impromptu import check_source, copy_checkpoint

    notes = check_source(src, config)
    out.mkdir(parents=True, exist_ok=True)
    config = {**config, PROMPT_FORMAT_KEY: 'impromptu-vla', SOURCE_KEY: record}
    files = copy_checkpoint(src, out, config)
    tensors = sum(len(read_header(p)) for p in out.glob('*.safetensors'))
    Card('impromptu-vla', src.resolve(), record['config_sha256'], config['architectures'][0],
         'impromptu-vla', str(config.get('torch_dtype', config.get('dtype', 'as source'))),
         tensors, len(list(out.glob('*.safetensors'))),
         [*notes, f'{files} files linked or copied unchanged; config.json gained '
          f'{PROMPT_FORMAT_KEY} and {SOURCE_KEY}']).write(out)
    return ConversionReport(out, 'impromptu-vla', tensors, len(list(out.glob('*.safetensors'))),
                            0, 0, 0)
