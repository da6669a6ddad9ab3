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
- ``int4``: groups of 128 (or the largest of 64, 32 that divides a layer's input) with an
  asymmetric scale and zero point each, two weights per byte, in the layout of the device's
  kernel:

  - CUDA: ``Int4WeightOnlyConfig`` in the ``tile_packed_to_4d`` layout (tinygemm). Its kernel
    needs compute capability 8.0 or newer (Jetson Orin is 8.7) and bfloat16.
  - CPU: torchao's CPU config (``PrototypeInt4WeightOnlyConfig``: ``Int4OpaqueTensor``, packed
    by ``aten._convert_weight_to_int4pack_for_cpu``, run by ``aten._weight_int4pack_mm_for_cpu``)
    with float32, bfloat16 or float16 activations. Only bfloat16 takes the kernel's fast path:
    on an AVX-512 BF16 CPU, a 1341 x 192 x 768 matmul took 13 ms in bfloat16 and 892 ms in
    float32 (docs/latency.md), so :func:`llm_weights_note` says so at load. The layout is chosen
    by the CPU's ISA at packing time, so a CPU-packed model is not moved to CUDA (nor the
    reverse): quantize on the device that runs it, which ``load_adapter`` does.

  Any other device fails at start, naming the setting, the device and the alternatives; no
  setting ever falls back to another.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

LLM_WEIGHTS = ('native', 'int8', 'int4')
INT4_GROUPS = (128, 64, 32)  # tinygemm's group sizes, preferred first
INT4_MIN_CAPABILITY = (8, 0)
INT4_CPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


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
    if device.startswith('cpu'):
        if dtype not in INT4_CPU_DTYPES:
            raise ValueError(f'llm_weights int4 on the CPU runs in float32, bfloat16 or float16, '
                             f'not {dtype}; use one of those dtypes, llm_weights int8 or native')
        return
    alternatives = 'use llm_weights int8 or native, or int4 on device cpu'
    if not device.startswith('cuda'):
        raise ValueError(
            f'llm_weights int4 has no kernel on device {device!r}: torchao packs int4 for CUDA '
            f'(compute capability 8.0+, e.g. Jetson Orin 8.7) and for the CPU only; '
            f'{alternatives}')
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


def llm_weights_note(setting: str, device: str, dtype: torch.dtype) -> str | None:
    """Return what a user should know about a setting that runs, but slowly (module doc)."""
    if setting == 'int4' and device.startswith('cpu') and dtype != torch.bfloat16:
        return (f'llm_weights int4 on the CPU in {dtype}: torch runs this int4 matmul on its slow '
                'path (prefill ~50x slower than bfloat16 here); pass dtype bfloat16 for the fast '
                'kernel')
    return None


def quantize_llm(layers: Iterable[nn.Module], setting: str) -> QuantizedLayers:
    """
    Quantize the ``nn.Linear`` weights of the decoder ``layers`` in place (module doc).

    int4 takes the layout of the device the weights are on (CPU or CUDA); on ``meta`` it takes
    CUDA's, the one published checkpoints are sized for (bench/device_specs.py).
    """
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
        on_cpu = next(layer.parameters()).device.type == 'cpu'
        for layout in set(layouts.values()) - {None}:  # one quantize_ call per group size
            quantize_(layer, _config(setting, layout, on_cpu),
                      filter_fn=lambda _m, fqn, k=layout, by=layouts: by.get(fqn) == k)
        count += sum(k is not None for k in layouts.values())
    return QuantizedLayers(setting, count, tuple(skipped))


def _layout(setting: str, linear: nn.Linear) -> int | None:
    """Return the group size a linear is quantized with (0: per row), or None: left native."""
    if setting == 'int8':
        return 0
    group = next((g for g in INT4_GROUPS if linear.in_features % g == 0), None)
    return None if group is None or linear.out_features % 8 else group


def _config(setting: str, group: int, on_cpu: bool):
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig

    if setting == 'int8':
        return Int8WeightOnlyConfig()
    if on_cpu:
        from torchao.prototype.quantization.int4 import PrototypeInt4WeightOnlyConfig

        # set_inductor_config would change torch.compile's global settings for the process
        return PrototypeInt4WeightOnlyConfig(group_size=group, set_inductor_config=False)
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
