"""
Weight-only quantization of the LLM's linear layers: the ``llm_weights`` setting (issue 26).

Decode reads every LLM weight once per token, so its time follows the weight bytes; storing the
decoder layers' ``nn.Linear`` weights in 8 or 4 bits cuts those bytes (and, where a kernel reads
them packed, the time). Only the decoder layers are quantized: the vision tower keeps its own
backends, and the projector, the embeddings and the LM head (tied to the embeddings in most
checkpoints) stay in the model's dtype. Activations stay in the model's dtype too.

The settings, through torchao's ``quantize_`` (the maintained library; no hand-rolled kernels):

- ``native``: the weights as loaded.
- ``int8``: ``Int8WeightOnlyConfig``, int8 per output row with one scale each. Kernels exist on
  CUDA and on x86 CPUs (a dequantizing matmul).
- ``int4``: ``Int4WeightOnlyConfig`` in the ``tile_packed_to_4d`` layout (tinygemm), groups of
  128 (or the largest of 64, 32 that divides a layer's input), two weights per byte. Its kernel
  needs CUDA of compute capability 8.0 or newer (Jetson Orin is 8.7) and bfloat16. torchao has no
  int4 kernel for x86 CPUs, so there it fails at start, naming the alternatives; it never falls
  back to another setting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

LLM_WEIGHTS = ('native', 'int8', 'int4')
INT4_GROUPS = (128, 64, 32)  # tinygemm's group sizes, preferred first
INT4_MIN_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class QuantizedLayers:
    """What :func:`quantize_llm` did: the setting, the linears it converted and those it left."""

    setting: str
    quantized: int
    skipped: tuple[str, ...]  # names of linears whose shape the layout cannot hold


def check_llm_weights(setting: str, device: str, dtype: torch.dtype) -> None:
    """
    Fail when ``setting`` has no kernel for ``device`` and ``dtype``; the message names all three.

    Cheap (no weights): the node and the CLI call it before loading, so a wrong setting fails
    at start.
    """
    if setting not in LLM_WEIGHTS:
        raise ValueError(f'llm_weights {setting!r}: use one of {", ".join(LLM_WEIGHTS)}')
    if setting == 'native':
        return
    _import_torchao(setting)
    if setting != 'int4':
        return
    alternatives = 'use llm_weights int8 (CUDA and CPU) or native'
    if not device.startswith('cuda'):
        raise ValueError(
            f'llm_weights int4 has no kernel on device {device!r}: torchao packs int4 for CUDA '
            f'(compute capability 8.0+, e.g. Jetson Orin 8.7) only; {alternatives}')
    if not torch.cuda.is_available():
        raise ValueError(f'llm_weights int4 needs CUDA, and torch sees no CUDA device '
                         f'({device!r}); {alternatives}')
    capability = torch.cuda.get_device_capability(torch.device(device))
    if capability < INT4_MIN_CAPABILITY:
        raise ValueError(
            f'llm_weights int4 needs compute capability 8.0+, {device} has '
            f'{capability[0]}.{capability[1]}; {alternatives}')
    if dtype != torch.bfloat16:
        raise ValueError(f'llm_weights int4 runs in bfloat16 (tinygemm), not {dtype}: pass '
                         f'dtype bfloat16 (the CUDA default, auto), or {alternatives}')


def quantize_llm(layers: Iterable[nn.Module], setting: str) -> QuantizedLayers:
    """Quantize the ``nn.Linear`` weights of the decoder ``layers`` in place (module doc)."""
    if setting == 'native':
        return QuantizedLayers(setting, 0, ())
    _import_torchao(setting)
    from torchao.quantization import quantize_

    skipped: list[str] = []
    count = 0
    for index, layer in enumerate(layers):
        layouts = {n: _layout(setting, m) for n, m in layer.named_modules()
                   if isinstance(m, nn.Linear)}
        skipped += [f'layers.{index}.{n}' for n, k in layouts.items() if k is None]
        for layout in set(layouts.values()) - {None}:  # one quantize_ call per group size
            quantize_(layer, _config(setting, layout),
                      filter_fn=lambda _m, fqn, k=layout, by=layouts: by.get(fqn) == k)
        count += sum(k is not None for k in layouts.values())
    return QuantizedLayers(setting, count, tuple(skipped))


def _layout(setting: str, linear: nn.Linear) -> int | None:
    """Return the group size a linear is quantized with (0: per row), or None: left native."""
    if setting == 'int8':
        return 0
    group = next((g for g in INT4_GROUPS if linear.in_features % g == 0), None)
    return None if group is None or linear.out_features % 8 else group


def _config(setting: str, group: int):
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig

    if setting == 'int8':
        return Int8WeightOnlyConfig()
    return Int4WeightOnlyConfig(group_size=group, int4_packing_format='tile_packed_to_4d')


def _import_torchao(setting: str) -> None:
    try:  # its expected import-time warnings are filtered by drive_vlm_pruned/library_logs.py
        import torchao.quantization  # noqa: F401
    except ImportError as err:
        raise ValueError(f'llm_weights {setting} needs torchao ({err}): pip install -c '
                         'constraints.txt torchao, or use llm_weights native') from None


def tensor_bytes(t: torch.Tensor) -> int:
    """Return the bytes ``t`` stores, through the inner tensors of a torchao tensor subclass."""
    flatten: Callable | None = getattr(type(t), '__tensor_flatten__', None)
    if flatten is None or type(t) in (torch.Tensor, nn.Parameter):
        return t.numel() * t.element_size()
    names, _ = t.__tensor_flatten__()
    return sum(tensor_bytes(getattr(t, n)) for n in names)


def weight_bytes(modules: Iterable[nn.Module]) -> int:
    """Return the bytes of every parameter of ``modules``, each counted once (tied ones too)."""
    seen: set[int] = set()
    total = 0
    for module in modules:
        for t in module.parameters():
            if id(t) not in seen:
                seen.add(id(t))
                total += tensor_bytes(t)
    return total
