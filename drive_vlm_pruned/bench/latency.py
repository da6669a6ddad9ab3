"""
``drive-vlm bench latency``: the latency budget of a frame, camera set to trajectory.

Per keep ratio and decode backend it runs synthetic six-camera frames through the one
``Pipeline`` and reports the median of preprocess, vision, prune, prefill, time to first token
(TTFT: the four before decode; the first token comes from the prefill logits) and decode
ms/token (decode time / (tokens - 1): one model step per token after the first), with end to
end, tokens generated, the KV cache bytes the answer ends with, and peak memory.

The decode roofline ratio is measured ms/token / (bytes one step reads / memory bandwidth):
one step reads the LLM's decoder weights and LM head, and the KV cache up to its position (taken
at the answer's mid-point). The bandwidth is measured here, with a large tensor copy (read +
write bytes / time), not taken from a data sheet. A ratio near 1 means decode runs at the memory
roofline; on a small CPU model it is far above 1, since per-step overheads dominate.

Then it plays a synthetic bag into the ROS node, six cameras at 12 Hz over DDS, latest-wins,
and reports p50 / p90 / p99 of the node's own latency (set complete -> result published) and
how many sets were answered or dropped.

``--device-spec NAME`` instead prints, for model presets, the decode floor a device's memory
bandwidth sets at bf16, int8 and int4 weights (bench/device_specs.py), without building a model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
import json
from pathlib import Path
import resource
import statistics
import sys

import torch

from .device_specs import print_device_floors
from .shapes import PRESETS
from .timing import device_label, time_call

STAGES = ('preprocess', 'vision', 'prune', 'prefill')
COMPILED_GOAL = 0.6  # CPU goal: compiled decode ms/token <= 0.6 x eager
ROOFLINE_GOAL = 1.3  # GPU goal: decode <= 1.3 x the bandwidth roofline
BYTES_GOALS = {'int8': 0.55, 'int4': 0.32}  # issue 26: LLM weight bytes <= this x native
INT8_DECODE_GOAL = 0.8  # issue 26, CPU: int8 decode ms/token <= 0.8 x native ...
INT8_DECODE_KEEP = 0.1  # ... at this keep ratio


@dataclass(frozen=True)
class Bandwidth:
    """Memory bandwidth measured with a tensor copy: (read + write bytes) / time."""

    gb_s: float
    megabytes: int
    copy_ms: float


def measure_bandwidth(device: torch.device, megabytes: int | None = None,
                      repeats: int = 10) -> Bandwidth:
    """Time ``dst.copy_(src)`` on ``device`` for a tensor far larger than any cache."""
    megabytes = megabytes or (2048 if device.type == 'cuda' else 512)
    src = torch.ones(megabytes * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    timing = time_call(lambda: dst.copy_(src), device, warmup=2, repeats=repeats)
    gb_s = 2 * src.numel() / (timing.median_ms / 1e3) / 1e9
    return Bandwidth(gb_s, megabytes, timing.median_ms)


def weight_bytes_per_step(model) -> int:
    """Return bytes of weights one decode step reads: decoder layers, final norm, LM head."""
    from ..models.llm_weights import tensor_bytes, weight_bytes

    language = model.model.language_model
    embed = language.embed_tokens.weight
    head = model.lm_head.weight
    total = weight_bytes([language]) - tensor_bytes(embed)  # one embedding row per token
    return total + tensor_bytes(head)


def llm_weight_bytes(model) -> int:
    """Return the bytes the LLM holds: embeddings, decoder layers, final norm and LM head."""
    from ..models.llm_weights import weight_bytes

    return weight_bytes([model.model.language_model, model.lm_head])


def kv_bytes_per_position(model) -> int:
    """Return bytes of keys + values one position holds, all layers, in the model's dtype."""
    text = model.config.get_text_config()
    heads = text.num_attention_heads
    head_dim = getattr(text, 'head_dim', None) or text.hidden_size // heads
    kv_heads = getattr(text, 'num_key_value_heads', None) or heads
    element = next(model.parameters()).element_size()
    return 2 * text.num_hidden_layers * kv_heads * head_dim * element


@dataclass
class LatencyCell:
    """One keep ratio x decode backend; times are medians over the timed frames, in ms."""

    keep_ratio: float
    pruner: str
    prune_layer: int
    llm_weights: str  # native | int8 | int4 (models/llm_weights.py)
    llm_weight_bytes: int  # what the LLM holds in this setting
    decode_backend: str  # asked for
    decode_backend_used: str
    preprocess_ms: float
    vision_ms: float
    prune_ms: float
    prefill_ms: float
    ttft_ms: float
    decode_ms: float
    decode_ms_per_token: float
    decode_spread_ms_per_token: float
    end_to_end_ms: float
    tokens_generated: int
    prompt_tokens: int
    prompt_tokens_kept: int
    kv_cache_bytes: int  # the answer's KV cache: (kept prompt + generated) positions
    static_cache_bytes: int  # the compiled backend's static cache (its rounded capacity)
    peak_memory_mb: float
    peak_memory_kind: str  # 'cuda max allocated' or 'process max RSS'
    weight_bytes_per_step: int
    kv_bytes_per_step: int
    roofline_ms_per_token: float
    roofline_ratio: float
    repeats: int


@dataclass
class LatencyReport:
    title: str
    device: str
    bandwidth: Bandwidth
    cells: list[LatencyCell]
    node: dict | None = None
    answer_tokens: dict[str, int] = field(default_factory=dict)
    goals: list[str] = field(default_factory=list)


def run_latency_cell(pipe, settings, frames, warmup: int, repeats: int, bandwidth: Bandwidth,
                     per_position: int, weights: int) -> LatencyCell:
    """Time ``repeats`` frames after ``warmup`` (the first compiles, on the compiled backend)."""
    device = pipe.adapter.device
    for i in range(warmup):
        pipe.run(frames[i % len(frames)], settings)
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats(device)
    runs = [pipe.run(frames[i % len(frames)], settings) for i in range(max(1, repeats))]
    steps = max(settings.max_new_tokens - 1, 1)

    def median(key):
        return statistics.median(r.timings_ms[key] for r in runs)

    per_token = [r.timings_ms['decode'] / steps for r in runs]
    q = statistics.quantiles(per_token, n=4, method='inclusive') if len(runs) > 1 else [0, 0, 0]
    last = runs[-1]
    kept = last.prompt_tokens_kept
    kv_step = per_position * (kept + settings.max_new_tokens // 2)
    roofline = (weights + kv_step) / (bandwidth.gb_s * 1e9) * 1e3
    if device.type == 'cuda':
        peak, kind = torch.cuda.max_memory_allocated(device) / 2**20, 'cuda max allocated'
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 'process max RSS'
    ttft = statistics.median(sum(r.timings_ms[k] for k in STAGES) for r in runs)
    decode_per_token = statistics.median(per_token)
    return LatencyCell(
        keep_ratio=settings.keep_ratio, pruner=settings.pruner, prune_layer=settings.prune_layer,
        llm_weights=pipe.adapter.llm_weights,
        llm_weight_bytes=llm_weight_bytes(pipe.adapter.model),
        decode_backend=settings.decode_backend, decode_backend_used=last.decode_backend,
        preprocess_ms=median('preprocess'), vision_ms=median('vision'), prune_ms=median('prune'),
        prefill_ms=median('prefill'), ttft_ms=ttft, decode_ms=median('decode'),
        decode_ms_per_token=decode_per_token, decode_spread_ms_per_token=q[2] - q[0],
        end_to_end_ms=statistics.median(sum(r.timings_ms.values()) for r in runs),
        tokens_generated=settings.max_new_tokens, prompt_tokens=last.prompt_tokens,
        prompt_tokens_kept=kept, kv_cache_bytes=per_position * (kept + settings.max_new_tokens),
        static_cache_bytes=pipe.decoder.cache_bytes, peak_memory_mb=peak,
        peak_memory_kind=kind, weight_bytes_per_step=weights, kv_bytes_per_step=kv_step,
        roofline_ms_per_token=roofline, roofline_ratio=decode_per_token / roofline,
        repeats=len(runs),
    )


# How Impromptu-VLA's planning targets open: the answer repeats this before its waypoints.
IMPROMPTU_ANSWER_HEAD = (
    '<PLANNING>Predicted future movement details for the next 3 seconds (sampled at 0.5-second '
    'intervals), including BEV location in x and y directions (in meters). Positive x means '
    'forward direction while positive y means leftwards. The output is formatted as [x, y]: ')


def answer_tokens(tokenizer) -> dict[str, int]:
    """Return tokens of one six-waypoint answer in the compact format and two longer ones."""
    points = ((1.25, 0.0), (2.6, -0.12), (3.98, 0.31), (5.4, 0.55), (6.83, 0.9), (8.31, 1.32))
    compact = ','.join(f'[{x:.1f},{y:.1f}]' for x, y in points)
    two_decimals = ', '.join(f'[{x:.2f}, {y:.2f}]' for x, y in points)
    count = lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)  # noqa: E731
    return {'compact (asked by the planning prompt)': count(compact),
            'two decimals with spaces': count(two_decimals),
            'Impromptu-VLA style (preamble + two decimals)': count(
                IMPROMPTU_ANSWER_HEAD + two_decimals + '</PLANNING>')}


def goal_lines(cells: list[LatencyCell], device: torch.device) -> list[str]:
    """Return the issues' goals as printed lines, each with the measured figure."""
    lines = []
    settings = list(dict.fromkeys(c.llm_weights for c in cells))
    for weights in settings:
        for keep in sorted({c.keep_ratio for c in cells}, reverse=True):
            by = {c.decode_backend_used: c for c in cells
                  if c.keep_ratio == keep and c.llm_weights == weights}
            lines += _backend_goals(by, keep, weights, device)
    lines += _weight_goals(cells, device)
    return lines


def _backend_goals(by: dict[str, LatencyCell], keep: float, weights: str,
                   device: torch.device) -> list[str]:
    lines = []
    if 'eager' in by and 'compiled' in by and device.type == 'cpu':
        ratio = by['compiled'].decode_ms_per_token / by['eager'].decode_ms_per_token
        verdict = 'met' if ratio <= COMPILED_GOAL else 'NOT met'
        lines.append(f'goal (CPU) compiled decode <= {COMPILED_GOAL} x eager at keep {keep}, '
                     f'{weights} weights: {ratio:.2f} x ({by["compiled"].decode_ms_per_token:.2f}'
                     f' vs {by["eager"].decode_ms_per_token:.2f} ms/token) -> {verdict}')
    if device.type == 'cuda':
        for c in by.values():
            verdict = 'met' if c.roofline_ratio <= ROOFLINE_GOAL else 'NOT met'
            lines.append(f'goal (GPU) {c.decode_backend_used} decode <= {ROOFLINE_GOAL} x '
                         f'roofline at keep {keep}, {weights} weights: {c.roofline_ratio:.2f} x '
                         f'-> {verdict}')
    return lines


def _weight_goals(cells: list[LatencyCell], device: torch.device) -> list[str]:
    """Issue 26: LLM bytes per setting against native, and int8 decode at keep 0.1 on a CPU."""
    native = [c for c in cells if c.llm_weights == 'native']
    if not native:
        return []
    lines = []
    for weights, goal in BYTES_GOALS.items():
        mine = [c for c in cells if c.llm_weights == weights]
        if mine:
            ratio = mine[0].llm_weight_bytes / native[0].llm_weight_bytes
            verdict = 'met' if ratio <= goal else 'NOT met'
            lines.append(f'goal {weights} LLM weight bytes <= {goal} x native: {ratio:.3f} x '
                         f'({mine[0].llm_weight_bytes / 2**20:.2f} vs '
                         f'{native[0].llm_weight_bytes / 2**20:.2f} MiB) -> {verdict}')
    if device.type != 'cpu':
        return lines
    for backend in dict.fromkeys(c.decode_backend_used for c in cells):
        pair = {c.llm_weights: c for c in cells if c.keep_ratio == INT8_DECODE_KEEP
                and c.decode_backend_used == backend and c.llm_weights in ('native', 'int8')}
        if len(pair) == 2:
            ratio = pair['int8'].decode_ms_per_token / pair['native'].decode_ms_per_token
            verdict = 'met' if ratio <= INT8_DECODE_GOAL else 'NOT met'
            lines.append(f'goal (CPU) int8 decode <= {INT8_DECODE_GOAL} x native at keep '
                         f'{INT8_DECODE_KEEP:g}, {backend}: {ratio:.2f} x '
                         f'({pair["int8"].decode_ms_per_token:.2f} vs '
                         f'{pair["native"].decode_ms_per_token:.2f} ms/token) -> {verdict}')
    return lines


def markdown(report: LatencyReport) -> str:
    out = [f'{report.title}', '',
           f'Memory bandwidth measured by a {report.bandwidth.megabytes} MiB copy: '
           f'{report.bandwidth.gb_s:.1f} GB/s.', '',
           '| LLM weights | LLM MB | keep | decode | preprocess | vision | prune | prefill | '
           'TTFT | decode ms/token | end to end | tokens | prompt kept | KV cache MB | peak MB | '
           'roofline ms/token | roofline ratio |',
           '|' + '---|' * 17]
    for c in report.cells:
        backend = c.decode_backend_used + ('' if c.decode_backend_used == c.decode_backend
                                           else f' (asked {c.decode_backend})')
        out.append(
            f'| {c.llm_weights} | {c.llm_weight_bytes / 2**20:.2f} | {c.keep_ratio:g} | '
            f'{backend} | {c.preprocess_ms:.1f} | {c.vision_ms:.1f} | '
            f'{c.prune_ms:.1f} | {c.prefill_ms:.1f} | {c.ttft_ms:.1f} | '
            f'{c.decode_ms_per_token:.2f} ± {c.decode_spread_ms_per_token:.2f} | '
            f'{c.end_to_end_ms:.1f} | {c.tokens_generated} | {c.prompt_tokens_kept}/'
            f'{c.prompt_tokens} | {c.kv_cache_bytes / 2**20:.2f} | {c.peak_memory_mb:.0f} | '
            f'{c.roofline_ms_per_token:.3f} | {c.roofline_ratio:.1f} |')
    if report.cells:
        out += ['', f'Peak memory is the {report.cells[0].peak_memory_kind}. Times in ms, '
                'medians; decode ms/token ± its interquartile range.']
    if report.answer_tokens:
        out += ['', 'Tokens per six-waypoint trajectory answer (this tokenizer): '
                + '; '.join(f'{k}: {v}' for k, v in report.answer_tokens.items()) + '.']
    if report.node:
        n = report.node
        p = n['percentiles_ms']
        pct = ', '.join(f'{k} {v:.0f} ms' for k, v in p.items()) if p else 'no answers'
        out += ['', f'Node under load ({n["sets_sent"]} six-camera sets at 12 Hz over DDS, '
                f'latest-wins, decode {", ".join(n["decode_backends"])}): {pct}; answered '
                f'{n["answered"]}, dropped {n["dropped"] or 0}, skipped {n["skipped"] or 0}, '
                f'sets lost {n["sets_lost"]}, unaccounted {n["unaccounted"]}.']
    if report.goals:
        out += [''] + [f'- {g}' for g in report.goals]
    return '\n'.join(out)


def plot(report: LatencyReport, path: Path) -> None:
    """PNG: stacked stage times per cell, and the node's latency distribution."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    panels = 2 if report.node and report.node.get('latencies') else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.5), squeeze=False)
    ax = axes[0][0]
    labels = [f'keep {c.keep_ratio:g}\n{c.decode_backend_used}' for c in report.cells]
    bottom = [0.0] * len(report.cells)
    for key in (*STAGES, 'decode'):
        values = [getattr(c, f'{key}_ms') for c in report.cells]
        ax.bar(labels, values, bottom=bottom, label=key)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel('ms per frame (median)')
    ax.set_title('stage budget')
    ax.legend(fontsize=8)
    if panels == 2:
        ax = axes[0][1]
        values = sorted(report.node['latencies'])
        ax.plot(values, [(i + 1) / len(values) for i in range(len(values))])
        ax.set_xlabel('node latency, set complete -> result (ms)')
        ax.set_ylabel('fraction of answered sets')
        ax.set_title('node under 6 x 12 Hz load')
        ax.grid(True, alpha=0.3)
    fig.suptitle(report.title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass(frozen=True)
class LatencyOptions:
    """What ``drive-vlm bench latency`` runs; the CLI builds it from its flags."""

    model: str = ''  # a checkpoint; '' (and no preset): the embedded model
    preset: str | None = None  # a real-size shape of shapes.PRESETS with random weights instead
    layers: int = 0  # shorten a preset's LLM to N layers
    device_spec: str | None = None  # print the bandwidth decode floor on this device and stop
    keep_ratios: tuple[float, ...] = (1.0, 0.25, 0.1)
    pruner: str = 'tfps'
    prune_layer: int = 0
    new_tokens: int = 64  # tokens per answer, EOS ignored
    decode_backends: tuple[str, ...] = ('eager', 'compiled')
    device: str = 'cpu'
    dtype: str = 'auto'
    attn: str = 'sdpa'
    llm_weights: tuple[str, ...] = ('native',)  # one set of rows per setting
    image_size: tuple[int, int] | None = None  # (H, W); None: the preset's, else 400 x 225
    warmup: int = 2
    repeats: int = 5
    node_frames: int = 48  # six-camera sets played into the node at 12 Hz (0: skip)
    node_decode_backend: str = 'auto'
    threads: int = 0  # torch CPU threads; 0: torch's default
    out_dir: str | None = None


def _pipeline_and_model_dir(options: LatencyOptions, llm_weights: str = 'native'):
    """Return (adapter, checkpoint dir or None, title): --model, --preset or the embedded model."""
    from .prefill import build_preset
    from ..models.adapters import load_adapter
    from ..models.llm_weights import check_llm_weights, quantize_llm
    from ..models.loading import LoadSpec, model_dtype, resolve_checkpoint

    device = torch.device(options.device)
    if options.preset and not options.model:
        preset = PRESETS[options.preset]
        dtype = model_dtype(device.type, options.dtype)
        check_llm_weights(llm_weights, str(device), dtype)
        adapter = build_preset(preset, str(device), dtype, options.layers, options.attn)
        quantize_llm(adapter.decoder_layers, llm_weights)
        adapter.llm_weights = llm_weights
        depth = f', LLM shortened to {options.layers} layers' if options.layers else ''
        return adapter, None, f'{preset.name} ({preset.description}){depth}'
    directory = options.model or str(resolve_checkpoint(''))
    adapter = load_adapter(LoadSpec(directory, device=str(device), dtype=options.dtype,
                                    attn_implementation=options.attn, llm_weights=llm_weights))
    name = directory if options.model else f'{directory} (the embedded model)'
    return adapter, directory, name


def run_latency_bench(options: LatencyOptions) -> int:
    """Time every setting (module doc), then the node under load; print and write the report."""
    from ..models.llm_weights import check_llm_weights
    from ..models.loading import model_dtype

    if options.device_spec:
        return print_device_floors(options.device_spec, options.preset, options.keep_ratios,
                                   options.new_tokens, options.out_dir)
    if options.threads:
        torch.set_num_threads(options.threads)
    for weights in options.llm_weights:  # every setting fails here, before the first row runs
        check_llm_weights(weights, options.device, model_dtype(options.device, options.dtype))
    bandwidth = measure_bandwidth(torch.device(options.device))  # once: it is the device's
    print(f'memory bandwidth (copy of {bandwidth.megabytes} MiB): {bandwidth.gb_s:.1f} GB/s')
    cells, report = [], None
    for weights in options.llm_weights:
        adapter, directory, name = _pipeline_and_model_dir(options, weights)
        report = _setting_rows(options, adapter, name, cells, bandwidth)
    report.goals = goal_lines(cells, adapter.device)
    if options.node_frames and directory is not None:
        report.node = _node_run(options, directory)
    elif options.node_frames:
        print('node under load: skipped, the node loads a checkpoint directory (give --model)')
    print()
    print(markdown(report))
    if options.out_dir:
        out = Path(options.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / 'latency.json').write_text(json.dumps(asdict(report), indent=1) + '\n')
        (out / 'latency.md').write_text(markdown(report) + '\n')
        plot(report, out / 'latency.png')
        print(f'\nwrote {out}/latency.json, latency.md, latency.png')
    return 0


def _setting_rows(options: LatencyOptions, adapter, name: str, cells: list[LatencyCell],
                  bandwidth: Bandwidth) -> LatencyReport:
    """Time every keep ratio x decode backend of one ``--llm-weights`` setting into ``cells``."""
    from ..pipeline.pipeline import Pipeline, RuntimeSettings
    from ..pipeline.synthetic_frames import synthetic_frame

    device = adapter.device
    pipes = {b: Pipeline(adapter, log=lambda m: print(f'  [decode] {m}', file=sys.stderr))
             for b in options.decode_backends}
    frames = [synthetic_frame(i, size=_image_hw(options)) for i in range(4)]
    title = f'{name} on {device_label(device)}, {options.new_tokens} tokens per answer'
    print(f'bench latency: {title}, LLM weights {adapter.llm_weights} '
          f'({llm_weight_bytes(adapter.model) / 2**20:.2f} MiB)')
    weights, per_position = weight_bytes_per_step(adapter.model), kv_bytes_per_position(
        adapter.model)
    for keep in options.keep_ratios:
        for backend in options.decode_backends:
            settings = RuntimeSettings(keep_ratio=keep, pruner=options.pruner,
                                       prune_layer=options.prune_layer,
                                       max_new_tokens=options.new_tokens, stop_at_eos=False,
                                       decode_backend=backend)
            cell = run_latency_cell(pipes[backend], settings, frames, options.warmup,
                                    options.repeats, bandwidth, per_position, weights)
            cells.append(cell)
            print(f'  {cell.llm_weights:<6} keep {keep:<5g} {cell.decode_backend_used:<8} TTFT '
                  f'{cell.ttft_ms:8.1f} ms  decode {cell.decode_ms_per_token:7.2f} ms/token  end '
                  f'to end {cell.end_to_end_ms:8.1f} ms  roofline x{cell.roofline_ratio:.1f}')
    return LatencyReport(title, device_label(device), bandwidth, cells,
                         answer_tokens=answer_tokens(adapter.tokenizer))


def _image_hw(options: LatencyOptions) -> tuple[int, int]:
    """Return the camera size: --image-size, else the preset's, else 400 x 225 (the demo's)."""
    if options.image_size:
        return options.image_size
    if options.preset and not options.model:
        return PRESETS[options.preset].image_hw
    return (225, 400)


def _node_run(options: LatencyOptions, directory: str) -> dict:
    from .node_load import NodeRun, play_synthetic_bag

    keep = min(options.keep_ratios)
    backend = options.node_decode_backend
    params = {'model': directory, 'keep_ratio': float(keep), 'pruner': options.pruner,
              'prune_layer': options.prune_layer, 'max_new_tokens': options.new_tokens,
              'device': options.device, 'dtype': options.dtype,
              'attn_implementation': options.attn, 'decode_backend': backend}
    print(f'node under load: {options.node_frames} sets at 12 Hz, keep {keep}, decode '
          f'{backend}...')
    run = NodeRun(params)
    try:
        load = play_synthetic_bag(run, options.node_frames, _image_hw(options))
    finally:
        run.close()
    summary = load.summary()
    summary['latencies'] = load.latencies_ms
    summary['keep_ratio'] = keep
    return summary
