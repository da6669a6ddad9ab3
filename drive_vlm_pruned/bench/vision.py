"""
``drive-vlm bench vision``: vision-encoder latency for six views, per available backend.

The encoder runs on every frame whatever the keep ratio, so on a pruned model it becomes a large
share of the latency. Shapes are real (SigLIP-so400m at 384 px as in LLaVA-OneVision/DriveMM;
Qwen2.5-VL's ViT at the Impromptu resolution) with random weights; ``--layers`` shortens the
tower for CPU runs (latency scales with depth, the backend ratio barely does). Every backend times
the same exportable module on the same input: for Qwen2.5-VL, the windowed-ViT encoder of the
frames' own patch grid (models/qwen_vision.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
import json
import os
from pathlib import Path
import tempfile

import torch

from .prefill import build_preset
from .shapes import ENCODERS, PRESETS
from .timing import device_label, time_call
from ..models.loading import model_dtype
from ..vision.backends import BackendRequest, BackendUnavailable, choose_backend
from ..vision.onnx_export import export_onnx


@dataclass(frozen=True)
class VisionCell:
    encoder: str
    vision_layers: int
    backend: str
    views: int
    device: str
    median_ms: float
    spread_ms: float
    repeats: int
    note: str = ''


def _shorten(preset, layers: int):
    vision = dict(preset.vision)
    key = 'depth' if 'depth' in vision else 'num_hidden_layers'
    if layers:
        vision[key] = layers
        if 'fullatt_block_indexes' in vision:
            vision['fullatt_block_indexes'] = [i for i in vision['fullatt_block_indexes']
                                               if i < layers] or [layers - 1]
    text = {**preset.text, 'num_hidden_layers': 1}  # the LLM is not timed here
    return type(preset)(**{**asdict(preset), 'vision': vision, 'text': text}), vision[key]


def bench_vision(encoder: str, backends: list[str], device: torch.device, views: int,
                 layers: int, warmup: int, repeats: int, workdir: Path) -> list[VisionCell]:
    preset, depth = _shorten(PRESETS[ENCODERS[encoder]], layers)
    dtype = model_dtype(device.type)
    adapter = build_preset(preset, str(device), dtype, None)
    pixels = adapter.preprocess(_frame_images(preset, views))
    cells = []
    for name in backends:
        run, note = _runner(name, adapter, pixels, device, dtype, workdir / f'{encoder}-{depth}')
        median = spread = float('nan')
        count = 0
        if run is not None:
            with torch.inference_mode():
                t = time_call(run, device, warmup, repeats)
            median, spread, count = round(t.median_ms, 2), round(t.spread_ms, 2), t.repeats
        cells.append(VisionCell(encoder, depth, name, views, device_label(device), median,
                                spread, count, note))
    return cells


def _runner(name, adapter, pixels, device, dtype, stem: Path):
    """Return ``(run, '')`` timing one encoder call with this backend, or ``(None, why not)``."""
    module, shape, values = _encoder(adapter, pixels)
    request = BackendRequest(name)
    if name == 'onnxruntime':
        too_big = _eager_attention_note(module, values.shape[0])
        if too_big:
            return None, too_big
        path = export_onnx(module, shape, stem.with_suffix('.onnx'))
        request = BackendRequest(name, onnx_path=str(path))
    try:
        backend = choose_backend(request, module, device, dtype, log=lambda s: None)
    except BackendUnavailable as err:
        return None, str(err)
    if backend.name != name:
        return None, backend.reasons[0]
    return (lambda: backend(values)), ''


def _encoder(adapter, pixels):
    """Return the exportable encoder, one view's input shape and the views' input tensor."""
    if pixels.grid_thw is None:
        return adapter.vision_module(), adapter.image_shape, pixels.values
    # Qwen2.5-VL: the encoder of the frames' patch grid (the preset's image size and pixel
    # budget), fed the processor's patches of each view.
    module = adapter.vision_module(tuple(pixels.grid_thw[0, 1:].tolist()))
    return module, module.input_shape, pixels.values.reshape(-1, *module.input_shape)


def _eager_attention_note(module, views: int) -> str:
    """
    Return why the exported graph would not fit in memory here, or '' when it fits.

    The ONNX graph of Qwen2.5-VL's ViT computes its full-attention blocks eagerly: fp32 scores and
    softmax of views x heads x patches^2 (6 x 16 x 12996^2: 65 GB for 1596 px frames).
    """
    patches = getattr(module, 'patches', 0)
    if not patches:
        return ''
    heads = module.blocks[0].attn.num_heads
    need = 2 * 4 * views * heads * patches ** 2
    have = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    if need <= have // 2:
        return ''
    return (f'eager full attention of {views} x {patches} patches needs ~{need / 2**30:.0f} GiB '
            f'({have / 2**30:.0f} GiB here); time qwen2.5-vl-vit-262k or fewer views')


def _frame_images(preset, views: int):
    from ..pipeline.synthetic_frames import synthetic_frame

    return list(synthetic_frame(0, size=preset.image_hw).images)[:views]


@dataclass(frozen=True)
class VisionBenchOptions:
    """What ``drive-vlm bench vision`` runs; the CLI builds it from its flags."""

    encoders: tuple[str, ...] = ('siglip-so400m',)  # shapes.ENCODERS
    backends: tuple[str, ...] = ()  # (): torch onnxruntime on CPU, torch compile tensorrt on CUDA
    device: str = 'cpu'
    views: int = 6
    layers: int = 0  # shorten the tower (0: full depth)
    warmup: int = 1
    repeats: int = 5
    threads: int = 0  # torch CPU threads; 0: torch's default
    json_out: str | None = None


def run_vision_bench(options: VisionBenchOptions) -> int:
    """Time every encoder x backend, print the table and write --json-out when asked."""
    if options.threads:
        torch.set_num_threads(options.threads)
    device = torch.device(options.device)
    backends = list(options.backends) or (['torch', 'compile', 'tensorrt']
                                          if device.type == 'cuda' else ['torch', 'onnxruntime'])
    cells = []
    with tempfile.TemporaryDirectory() as tmp:
        for encoder in options.encoders:
            cells += bench_vision(encoder, backends, device, options.views, options.layers,
                                  options.warmup, options.repeats, Path(tmp))
    print('| encoder | layers | backend | views | device | median ms | IQR ms | note |')
    print('|---|---|---|---|---|---|---|---|')
    for c in cells:
        print(f'| {c.encoder} | {c.vision_layers} | {c.backend} | {c.views} | {c.device} | '
              f'{c.median_ms} | {c.spread_ms} | {c.note} |')
    if options.json_out:
        Path(options.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(options.json_out).write_text(json.dumps([asdict(c) for c in cells], indent=1)
                                          + '\n')
    return 0
