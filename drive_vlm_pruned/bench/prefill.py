"""
``drive-vlm bench prefill``: prefill speed-up vs keep ratio, against the FLOPs ideal.

Real-size model shapes are built from configs with the families' real transformers classes and
random weights (timing does not depend on the weight values) and run through the same
``Pipeline`` as everything else. Per cell (pruner x keep ratio x prune layer) it reports median and
interquartile spread after warm-up of: vision ms, prune ms, prefill ms, time to first token
(preprocess + vision + prune + prefill), decode ms per token, peak GPU memory, analytic prefill
FLOPs, the FLOPs-ideal speed-up, the measured speed-up over keep 1.0 at the same prune layer, and
efficiency = measured / ideal.

The speed-up is prefill time of keep 1.0 over (prune + prefill) time of the cell: pruning overhead
is included, the vision encoder is not (it runs whatever the keep ratio; it is reported apart).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
import json
from pathlib import Path

import torch

from .shapes import KEEP_RATIOS, Preset, PRESETS
from .timing import device_label, summarize
from ..models.adapters import ADAPTERS, load_adapter
from ..models.loading import LoadSpec, model_dtype
from ..models.tiny import build_llava_onevision, build_qwen2_5_vl, build_tokenizer
from ..pipeline.pipeline import Pipeline, RuntimeSettings
from ..pipeline.synthetic_frames import synthetic_frame
from ..pruning import make_pruner, Stage


def build_preset(preset: Preset, device: str, dtype: torch.dtype, layers: int | None,
                 attn: str = 'sdpa'):
    """Instantiate the preset's model (random weights, real classes) as a pipeline adapter."""
    text = dict(preset.text)
    if layers:
        text['num_hidden_layers'] = layers
    tokenizer = build_tokenizer()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            if preset.family == 'qwen2.5-vl':
                text.pop('model_type', None)
                model, processor = build_qwen2_5_vl(tokenizer, preset.vision, text,
                                                    preset.qwen_pixels)
            else:
                model, processor = build_llava_onevision(tokenizer, preset.vision, text)
    finally:
        torch.set_default_dtype(previous)
    model.config.get_text_config()._attn_implementation = attn
    model.config._attn_implementation = attn
    return ADAPTERS[preset.family](model.eval(), tokenizer, processor, torch.device(device),
                                   dtype)


@dataclass
class PrefillCell:
    """One benchmark cell; times in ms as median and interquartile spread over the repeats."""

    preset: str
    llm_layers: int
    pruner: str
    keep_ratio: float
    prune_layer: int
    device: str
    dtype: str
    visual_tokens: int
    visual_tokens_kept: int
    prompt_tokens: int
    vision_ms: float
    vision_spread_ms: float
    prune_ms: float
    prune_spread_ms: float
    prefill_ms: float
    prefill_spread_ms: float
    ttft_ms: float
    ttft_spread_ms: float
    decode_ms_per_token: float
    decode_spread_ms: float
    peak_gpu_mem_mb: float | None
    prefill_flops: int
    prefill_flops_unpruned: int
    ideal_speedup: float
    measured_speedup: float = float('nan')
    efficiency: float = float('nan')
    repeats: int = 0
    notes: list[str] = field(default_factory=list)


def run_prefill_cell(pipe: Pipeline, preset: Preset, settings: RuntimeSettings, warmup: int,
                     repeats: int, device: torch.device) -> PrefillCell:
    frame = synthetic_frame(0, size=preset.image_hw)
    for _ in range(warmup):
        pipe.run(frame, settings)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    runs = [pipe.run(frame, settings) for _ in range(max(1, repeats))]
    stage = {k: summarize([r.timings_ms[k] for r in runs])
             for k in ('vision', 'prune', 'prefill')}
    ttft = summarize([sum(r.timings_ms[k] for k in ('preprocess', 'vision', 'prune', 'prefill'))
                      for r in runs])
    per_token = summarize([r.timings_ms['decode'] / max(r.generated_tokens, 1) for r in runs])
    last = runs[-1]
    peak = (torch.cuda.max_memory_allocated(device) / 2**20) if device.type == 'cuda' else None
    return PrefillCell(
        preset=preset.name, llm_layers=pipe.shape.layers, pruner=settings.pruner,
        keep_ratio=settings.keep_ratio, prune_layer=settings.prune_layer,
        device=device_label(device), dtype=str(pipe.adapter.dtype).replace('torch.', ''),
        visual_tokens=sum(last.tokens_before), visual_tokens_kept=sum(last.tokens_after),
        prompt_tokens=last.prompt_tokens,
        vision_ms=stage['vision'].median_ms, vision_spread_ms=stage['vision'].spread_ms,
        prune_ms=stage['prune'].median_ms, prune_spread_ms=stage['prune'].spread_ms,
        prefill_ms=stage['prefill'].median_ms, prefill_spread_ms=stage['prefill'].spread_ms,
        ttft_ms=ttft.median_ms, ttft_spread_ms=ttft.spread_ms,
        decode_ms_per_token=per_token.median_ms, decode_spread_ms=per_token.spread_ms,
        peak_gpu_mem_mb=peak, prefill_flops=last.prefill_flops,
        prefill_flops_unpruned=last.prefill_flops_unpruned,
        ideal_speedup=last.prefill_flops_unpruned / last.prefill_flops, repeats=len(runs),
    )


def sweep(pipe: Pipeline, preset: Preset, pruners: Sequence[str], keep_ratios: Sequence[float],
          prune_layers: Sequence[int], warmup: int, repeats: int, new_tokens: int,
          progress: Callable[[str], None] = print) -> list[PrefillCell]:
    """Every valid (prune layer, pruner, keep ratio) cell plus keep 1.0 as the baseline."""
    device = pipe.adapter.device
    cells = []
    for layer in prune_layers:
        # Eager decode: a compiled one would compile per keep ratio (bench latency times it).
        base_settings = RuntimeSettings(keep_ratio=1.0, pruner='tfps', prune_layer=layer,
                                        max_new_tokens=new_tokens, stop_at_eos=False,
                                        decode_backend='eager')
        base = run_prefill_cell(pipe, preset, base_settings, warmup, repeats, device)
        base.pruner = 'none'
        _speedup(base, base)
        cells.append(base)
        progress(_line(base))
        for name in pruners:
            if not _valid_at(name, layer):
                continue
            for keep in keep_ratios:
                if keep >= 1.0:
                    continue
                settings = RuntimeSettings(keep_ratio=keep, pruner=name, prune_layer=layer,
                                           max_new_tokens=new_tokens, stop_at_eos=False,
                                           decode_backend='eager')
                cell = run_prefill_cell(pipe, preset, settings, warmup, repeats, device)
                _speedup(cell, base)
                cells.append(cell)
                progress(_line(cell))
    return cells


def _valid_at(name: str, layer: int) -> bool:
    return layer > 0 or make_pruner(name).stage is Stage.PRE_LLM


def _speedup(cell: PrefillCell, base: PrefillCell) -> None:
    cell.measured_speedup = base.prefill_ms / max(cell.prefill_ms + cell.prune_ms, 1e-9)
    cell.efficiency = cell.measured_speedup / cell.ideal_speedup


def _line(c: PrefillCell) -> str:
    return (f'  K={c.prune_layer} {c.pruner:<12} keep={c.keep_ratio:<6} prefill '
            f'{c.prefill_ms:9.1f} ms  prune {c.prune_ms:7.1f} ms  speed-up '
            f'{c.measured_speedup:5.2f}x (ideal {c.ideal_speedup:5.2f}x)')


def markdown_table(cells: Sequence[PrefillCell]) -> str:
    head = ('| K | pruner | keep | tokens kept | vision ms | prune ms | prefill ms | TTFT ms | '
            'decode ms/tok | peak MB | GFLOPs | ideal x | measured x | efficiency |')
    lines = [head, '|' + '---|' * 14]
    for c in cells:
        peak = f'{c.peak_gpu_mem_mb:.0f}' if c.peak_gpu_mem_mb is not None else '-'
        lines.append(
            f'| {c.prune_layer} | {c.pruner} | {c.keep_ratio} | {c.visual_tokens_kept}/'
            f'{c.visual_tokens} | {c.vision_ms:.1f} | {c.prune_ms:.1f} ± {c.prune_spread_ms:.1f}'
            f' | {c.prefill_ms:.1f} ± {c.prefill_spread_ms:.1f} | {c.ttft_ms:.1f} | '
            f'{c.decode_ms_per_token:.2f} | {peak} | {c.prefill_flops / 1e9:.1f} | '
            f'{c.ideal_speedup:.2f} | {c.measured_speedup:.2f} | {c.efficiency:.2f} |'
        )
    return '\n'.join(lines)


def plot(cells: Sequence[PrefillCell], path: str | Path, title: str) -> None:
    """PNG: measured speed-up vs keep ratio per pruner and prune layer, with the FLOPs ideal."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    layers = sorted({c.prune_layer for c in cells})
    fig, axes = plt.subplots(1, len(layers), figsize=(6 * len(layers), 4.5), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        at = [c for c in cells if c.prune_layer == layer]
        base = [(c.keep_ratio, c.measured_speedup, 1.0) for c in at if c.pruner == 'none']
        for name in sorted({c.pruner for c in at if c.pruner != 'none'}):
            pts = sorted(base + [(c.keep_ratio, c.measured_speedup, c.ideal_speedup)
                                 for c in at if c.pruner == name])
            keeps = [k for k, _, _ in pts]
            line, = ax.plot(keeps, [m for _, m, _ in pts], 'o-', label=f'{name} measured')
            ax.plot(keeps, [i for _, _, i in pts], '--', color=line.get_color(), alpha=0.6,
                    label=f'{name} FLOPs ideal')
        ax.set_xscale('log')
        ax.set_yscale('log')
        ax.set_xlabel('keep ratio')
        ax.set_ylabel('prefill speed-up vs keep 1.0')
        ax.set_title(f'prune layer {layer}')
        ax.grid(True, which='both', alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


@dataclass(frozen=True)
class PrefillOptions:
    """What ``drive-vlm bench prefill`` runs; the CLI builds it from its flags."""

    preset: str = 'cpu-small'  # a model shape of shapes.PRESETS (random weights)
    model: str | None = None  # a local checkpoint instead of the preset
    layers: int = 0  # shorten the preset's LLM to N layers (0: its depth)
    pruners: tuple[str, ...] = ('tfps', 'divprune', 'fastv', 'mvpruner')
    keep_ratios: tuple[float, ...] = KEEP_RATIOS
    prune_layers: tuple[int, ...] = (0, 2)
    device: str = 'cpu'
    dtype: str = 'auto'
    attn: str = 'sdpa'
    warmup: int = 1
    repeats: int = 3
    new_tokens: int = 8
    threads: int = 0  # torch CPU threads; 0: torch's default
    json_out: str | None = None
    markdown_out: str | None = None
    plot: str | None = None


def run_prefill_bench(options: PrefillOptions) -> int:
    """Time every cell (module doc), print the table and write the files asked for."""
    if options.threads:
        torch.set_num_threads(options.threads)
    device = torch.device(options.device)
    dtype = model_dtype(device.type, options.dtype)
    layers = options.layers
    if options.model:
        adapter = load_adapter(LoadSpec(options.model, device=str(device), dtype=options.dtype,
                                        attn_implementation=options.attn))
        preset = Preset(Path(options.model).name, adapter.family, f'checkpoint {options.model}',
                        {}, {})
        if layers:
            print('--layers is ignored with --model: a checkpoint keeps its depth')
            layers = 0
    else:
        preset = PRESETS[options.preset]
        adapter = build_preset(preset, str(device), dtype, layers, options.attn)
    pipe = Pipeline(adapter)
    depth = f', LLM shortened to {layers} layers' if layers else ''
    title = f'{preset.name} ({preset.description}){depth} on {device_label(device)}'
    print(f'Benchmarking {title}, {options.repeats} repeats after {options.warmup} warm-up runs.')
    print('Speed-up = prefill(keep 1.0) / (prune + prefill); the vision encoder is outside it.')
    if layers:
        print('The LLM is shortened: at prune layer 0 the speed-up ratios barely change (every '
              'layer scales alike); at layer K they depend on K / depth, so read them with care.')
    cells = sweep(pipe, preset, list(options.pruners), list(options.keep_ratios),
                  list(options.prune_layers), options.warmup, options.repeats, options.new_tokens)
    print()
    print(markdown_table(cells))
    if options.json_out:
        Path(options.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(options.json_out).write_text(json.dumps([asdict(c) for c in cells], indent=1) + '\n')
        print(f'\nwrote {len(cells)} records to {options.json_out}')
    if options.markdown_out:
        Path(options.markdown_out).write_text(f'{title}\n\n{markdown_table(cells)}\n')
    if options.plot:
        plot(cells, options.plot, title)
        print(f'wrote {options.plot}')
    return 0
