"""
A conversion plan: rules from source tensors to target parameters, checked before any write.

A ``Rule`` reads one or more source tensors and builds one or more target tensors (a rename, a
packed q/k/v matrix split into three, a LoRA merge, an embedding padded for new tokens). Shapes
are computed from the source headers alone, so ``check_plan`` can compare the whole plan with the
parameters of the target class (built on the ``meta`` device from the converted config, which
costs no memory) before a byte is written: every source tensor mapped, every target parameter
filled, every shape equal, or a ConversionError that lists what is wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
import re

import torch
from torch import Tensor
from tqdm import tqdm

from .safetensors_stream import (
    ConversionError,
    LiveBytes,
    SafetensorsSource,
    ShardedWriter,
    ShardPlan,
    TensorInfo,
)

Shape = tuple[int, ...]
LIST_LIMIT = 20


@dataclass(frozen=True)
class Rule:
    """Build ``outputs`` (target name, shape) from the ``sources`` tensors."""

    sources: tuple[str, ...]
    outputs: tuple[tuple[str, Shape], ...]
    build: Callable[[list[Tensor]], list[Tensor]]
    dtype: str  # safetensors dtype name of the first source (for size planning)


def rename(source: str, target: str, infos: dict[str, TensorInfo]) -> Rule:
    info = infos[source]
    return Rule((source,), ((target, info.shape),), lambda ts: [ts[0]], info.dtype)


def split_rows(source: str, targets: Sequence[tuple[str, int, int]],
               infos: dict[str, TensorInfo]) -> Rule:
    """Slice rows ``[start, stop)`` of ``source`` (dim 0) into each target."""
    info = infos[source]
    outputs = tuple((name, (stop - start, *info.shape[1:])) for name, start, stop in targets)

    def build(ts: list[Tensor]) -> list[Tensor]:
        return [ts[0][start:stop].clone() for _, start, stop in targets]

    return Rule((source,), outputs, build, info.dtype)


def pad_rows(source: str, target: str, rows: int, infos: dict[str, TensorInfo]) -> Rule:
    """
    Append rows to an embedding or output matrix for tokens the converter added.

    The new rows are the mean of the existing rows, as transformers' own LLaVA-OneVision
    conversion centres them; image and video placeholder rows are replaced by visual features
    before the LLM sees them, so their value never reaches a layer.
    """
    info = infos[source]
    if info.shape[0] > rows:
        raise ConversionError(f'shape mismatch at {target}: {source} has {info.shape[0]} rows, '
                              f'more than the {rows} the converted config expects')

    def build(ts: list[Tensor]) -> list[Tensor]:
        old = ts[0]
        extra = rows - old.shape[0]
        mean = old.float().mean(0, keepdim=True).to(old.dtype)
        return [torch.cat([old, mean.expand(extra, -1)])]

    return Rule((source,), ((target, (rows, *info.shape[1:])),), build, info.dtype)


def lora_merged(rule: Rule, lora: dict[str, tuple[str, str]], scale: float,
                infos: dict[str, TensorInfo]) -> Rule:
    """
    Wrap ``rule`` so its first source is merged with its LoRA pair first: W + scale * B @ A.

    PEFT stores a wrapped linear as ``<m>.base_layer.weight`` with ``<m>.lora_A.<adapter>.weight``
    ``[r, in]`` and ``<m>.lora_B.<adapter>.weight`` ``[out, r]``; the merged weight is what the
    wrapped module computes in eval mode (dropout off).
    """
    base = rule.sources[0]
    if base not in lora:
        return rule
    a_name, b_name = lora[base]
    a, b = infos[a_name].shape, infos[b_name].shape
    w = infos[base].shape
    if len(a) != 2 or len(b) != 2 or b[1] != a[0] or (b[0], a[1]) != tuple(w):
        raise ConversionError(
            f'LoRA pair for {base} does not fit it: weight {list(w)}, lora_A {list(a)}, '
            f'lora_B {list(b)}'
        )
    inner = rule.build

    def build(ts: list[Tensor]) -> list[Tensor]:
        weight, lora_a, lora_b = ts[0], ts[-2], ts[-1]
        delta = (lora_b.float() @ lora_a.float()) * scale
        merged = (weight.float() + delta).to(weight.dtype)
        return inner([merged, *ts[1:-2]])

    return Rule((*rule.sources, a_name, b_name), rule.outputs, build, rule.dtype)


def check_plan(rules: Sequence[Rule], infos: dict[str, TensorInfo], expected: dict[str, Shape],
               ignored: Iterable[str], target_class: str, kind: str) -> None:
    """Raise ConversionError unless the plan maps every source and fills every parameter."""
    used = {s for r in rules for s in r.sources}
    unmapped = sorted(set(infos) - used - set(ignored))
    if unmapped:
        raise ConversionError(
            f'{len(unmapped)} source tensors have no mapping to {target_class}: '
            f'{_listing(unmapped)}. Is this a {kind} checkpoint? (An extra module, such as a '
            'vision resampler or a LoRA adapter of a kind the converter does not know, shows up '
            'here.) Nothing was written'
        )
    produced: dict[str, tuple[Shape, tuple[str, ...]]] = {}
    for rule in rules:
        for name, shape in rule.outputs:
            if name in produced:
                raise ConversionError(f'target {name} is produced twice (a converter bug)')
            produced[name] = (shape, rule.sources)
    missing = sorted(set(expected) - set(produced))
    if missing:
        raise ConversionError(
            f'{len(missing)} parameters of {target_class} would stay unfilled: '
            f'{_listing(missing)}. The source lacks them (a truncated or partial checkpoint?). '
            'Nothing was written'
        )
    unknown = sorted(set(produced) - set(expected))
    if unknown:
        raise ConversionError(
            f'{len(unknown)} converted tensors are not parameters of {target_class}: '
            f'{_listing(unknown)}; the source config does not describe these weights. '
            'Nothing was written'
        )
    for name, (shape, sources) in produced.items():
        if tuple(shape) != tuple(expected[name]):
            raise ConversionError(
                f'shape mismatch at {name} (from {", ".join(sources)}): the source tensors give '
                f'{list(shape)}, but {target_class} built from the converted config expects '
                f'{list(expected[name])}. The source config.json does not match its weights. '
                'Nothing was written'
            )


def _listing(names: Sequence[str]) -> str:
    shown = ', '.join(names[:LIST_LIMIT])
    return shown + (f' ... ({len(names) - LIST_LIMIT} more)' if len(names) > LIST_LIMIT else '')


def match(pattern: str, name: str) -> re.Match | None:
    return re.fullmatch(pattern, name)


def execute(rules: Sequence[Rule], source: SafetensorsSource, writer: ShardedWriter,
            shards: Sequence[ShardPlan], dtype: torch.dtype | None, live: LiveBytes,
            progress: bool, description: str) -> int:
    """Stream ``rules`` into ``writer``; return the number of target tensors written now."""
    shard_of = {name: shard for shard in shards for name in shard.tensors}
    pending = {s.name for s in writer.pending()}
    buffers: dict[str, dict[str, Tensor]] = {}
    todo = [r for r in rules if any(shard_of[n].name in pending for n, _ in r.outputs)]
    written = 0
    with tqdm(total=len(todo), desc=description, unit='tensor', disable=not progress) as bar:
        for rule in todo:
            inputs = [live.track(source.read(name)) for name in rule.sources]
            outputs = rule.build(inputs)
            del inputs
            for (name, shape), tensor in zip(rule.outputs, outputs):
                shard = shard_of[name]
                if shard.name not in pending:
                    continue
                if dtype is not None and tensor.is_floating_point():
                    tensor = tensor.to(dtype)
                if tuple(tensor.shape) != tuple(shape):
                    raise ConversionError(f'{name} came out {list(tensor.shape)}, planned '
                                          f'{list(shape)} (a converter bug)')
                buffers.setdefault(shard.name, {})[name] = live.track(tensor.contiguous())
                if len(buffers[shard.name]) == len(shard.tensors):
                    writer.write(shard, buffers.pop(shard.name))
                    written += len(shard.tensors)
            del outputs, tensor
            bar.update(1)
    source.close()
    if buffers:
        raise ConversionError(f'shards {sorted(buffers)} were left incomplete (a converter bug)')
    return written
