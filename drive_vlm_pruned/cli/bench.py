"""
``drive-vlm bench ...``: the benchmark group, and the flags of prefill, latency, soak and vision.

Each benchmark's flags become the frozen options of its module under bench/, which runs it;
pruners, accuracy, llm-weights and probes have their own modules here.
"""

from __future__ import annotations

import argparse

from .bench_accuracy import add_bench_accuracy_parser
from .bench_llm_weights import add_bench_llm_weights_parser
from .bench_pruners import add_bench_pruners_parser
from .flags import (
    add_llm_weights_argument,
    camera_size_type,
    has_cuda,
    keep_ratio_type,
    pruner_type,
)
from .probes import add_probes_parser


def add_bench_parser(sub) -> None:
    """Add ``bench`` with every benchmark under it."""
    bench = sub.add_parser('bench', help='benchmarks that print figures',
                           description='Benchmarks. Each prints a table; none is a test.')
    bench_sub = bench.add_subparsers(dest='bench', metavar='BENCH', required=True)
    add_bench_pruners_parser(bench_sub)
    add_bench_prefill_parser(bench_sub)
    add_bench_accuracy_parser(bench_sub)
    add_bench_latency_parser(bench_sub)
    add_bench_llm_weights_parser(bench_sub)
    add_bench_soak_parser(bench_sub)
    add_probes_parser(bench_sub)
    add_bench_vision_parser(bench_sub)


BENCH_PREFILL_HELP = """\
Prefill speed-up vs keep ratio. Builds a real-size model shape (real transformers classes,
random weights: timing does not depend on weight values), runs synthetic six-view frames through
the pipeline for every pruner x keep ratio x prune layer, and reports vision / prune / prefill /
time-to-first-token / decode ms (median and IQR), peak GPU memory, analytic FLOPs, the FLOPs-ideal
speed-up, the measured speed-up over keep 1.0 (pruning overhead included, vision excluded) and
efficiency = measured / ideal. Writes JSON, a markdown table and a PNG plot on request.

presets: tiny, cpu-small (CPU), llava-ov-0.5b, llava-ov-7b, drivemm-8b, qwen2.5-vl-3b-1596,
qwen2.5-vl-3b-262k (GPU). --layers N shortens the LLM for CPU runs.

example: drive-vlm bench prefill --preset llava-ov-7b --device cuda --plot bench-out/7b.png
"""


def add_bench_prefill_parser(bench_sub) -> None:
    """Add ``bench prefill``."""
    from ..bench.shapes import KEEP_RATIOS, PRESETS

    bp = bench_sub.add_parser(
        'prefill', help='prefill speed-up vs keep ratio against the FLOPs ideal',
        description=BENCH_PREFILL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bp.add_argument('--preset', default='cpu-small', choices=sorted(PRESETS),
                    help='model shape (default cpu-small)')
    bp.add_argument('--model', metavar='DIR',
                    help='benchmark this local checkpoint (directory or cached id) instead')
    bp.add_argument('--layers', type=int, default=0,
                    help='shorten the LLM to N layers (0 = the preset depth)')
    bp.add_argument('--pruners', nargs='+', type=pruner_type,
                    default=['tfps', 'divprune', 'fastv', 'mvpruner'],
                    metavar='NAME', help='pruners (default tfps divprune fastv mvpruner)')
    bp.add_argument('--keep-ratios', nargs='+', type=keep_ratio_type, default=list(KEEP_RATIOS),
                    help='fractions KEPT (default 1.0 0.5 0.25 0.125 0.1 0.05)')
    bp.add_argument('--prune-layers', nargs='+', type=int, default=[0, 2],
                    help='0: after the projector; K: before LLM layer K (default 0 2)')
    bp.add_argument('--device', default='cuda' if has_cuda() else 'cpu',
                    help='cpu or cuda[:N] (default: cuda when available)')
    bp.add_argument('--dtype', default='auto', choices=['auto', 'float32', 'bfloat16', 'float16'],
                    help='model dtype (default: bfloat16 on CUDA, float32 on CPU)')
    bp.add_argument('--attn', default='sdpa', choices=['sdpa', 'eager', 'flash_attention_2'],
                    help='attention implementation (default sdpa)')
    bp.add_argument('--warmup', type=int, default=1, help='untimed runs per cell (default 1)')
    bp.add_argument('--repeats', type=int, default=3, help='timed runs per cell (default 3)')
    bp.add_argument('--new-tokens', type=int, default=8,
                    help='tokens decoded per run, for decode ms/token (default 8)')
    bp.add_argument('--threads', type=int, default=0, help='torch CPU threads (default: torch)')
    bp.add_argument('--json-out', metavar='PATH', help='write one JSON record per cell')
    bp.add_argument('--markdown-out', metavar='PATH', help='write the markdown table')
    bp.add_argument('--plot', metavar='PNG', help='write speed-up vs keep ratio as a PNG')
    bp.set_defaults(run=run_bench_prefill)


BENCH_LATENCY_HELP = """\
Latency budget of a frame, camera set to trajectory: per keep ratio and decode backend, the
median preprocess, vision, prune, prefill, time to first token and decode ms/token, end to end,
tokens generated, KV cache bytes and peak memory, with the decode roofline ratio (measured
ms/token over (weight + KV bytes one step reads) / the bandwidth of a measured tensor copy).
Then the ROS node under its real load (a synthetic bag, six cameras at 12 Hz over DDS,
latest-wins): p50 / p90 / p99 latency and sets answered / dropped. Writes JSON, markdown and a
PNG with --out-dir. Without --model or --preset it uses the embedded trained model, the default
of every command (before issue 24 it used the demo's tiny random-weight model).

--device-spec orin-agx|orin-nx|h100|h200 prints instead the decode floor that device's memory
bandwidth sets for every GPU preset (or --preset) at bf16, int8 and int4 weights; nothing is built.

examples:
  drive-vlm bench latency --out-dir bench-out/latency
  drive-vlm bench latency --preset drivemm-8b --device cuda --node-frames 0
  drive-vlm bench latency --device-spec orin-agx
"""

BENCH_SOAK_HELP = """\
Run the pipeline (or, with --node, the ROS node over DDS at 12 Hz) for N frames and watch it:
process RSS and GPU memory every --report-every frames, latency drift (median of the last
window against the first after warm-up), and that every frame was answered or counted. Exits 1
with a message if memory grows more than --max-growth (5%) over its level after warm-up, or if
a frame is unaccounted for.
Without --model it runs the embedded trained model, the default of every command (before
issue 24 it ran the demo's tiny random-weight model).

example: drive-vlm bench soak --frames 10000 --node
"""


def add_bench_latency_parser(bench_sub) -> None:
    """Add ``bench latency``."""
    from ..bench.device_specs import DEVICE_SPECS
    from ..bench.shapes import PRESETS

    bl = bench_sub.add_parser(
        'latency', help='frame latency budget, decode roofline, node p50/p90/p99',
        description=BENCH_LATENCY_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bl.add_argument('--model', metavar='DIR',
                    help='checkpoint directory (default: the embedded model, as every command; '
                         'until issue 24 the tiny random-weight LLaVA-OneVision of the demo)')
    bl.add_argument('--preset', choices=sorted(PRESETS),
                    help='a real-size model shape with random weights instead (no node run)')
    bl.add_argument('--layers', type=int, default=0, help='shorten a --preset LLM to N layers')
    bl.add_argument('--device-spec', choices=sorted(DEVICE_SPECS),
                    help='print the bandwidth decode floor per preset on this device and exit')
    bl.add_argument('--keep-ratios', nargs='+', type=keep_ratio_type, default=[1.0, 0.25, 0.1],
                    help='fractions KEPT (default 1.0 0.25 0.1)')
    bl.add_argument('--pruner', type=pruner_type, default='tfps', help='pruner (default tfps)')
    bl.add_argument('--prune-layer', type=int, default=0, help='0 or LLM layer K (default 0)')
    bl.add_argument('--new-tokens', type=int, default=64,
                    help='tokens per answer, EOS ignored (default 64)')
    bl.add_argument('--decode-backends', nargs='+', choices=['eager', 'compiled'],
                    default=['eager', 'compiled'], help='default: eager compiled')
    bl.add_argument('--device', default='cuda' if has_cuda() else 'cpu',
                    help='cpu or cuda[:N] (default: cuda when available)')
    bl.add_argument('--dtype', default='auto', choices=['auto', 'float32', 'bfloat16', 'float16'])
    bl.add_argument('--attn', default='sdpa', choices=['sdpa', 'eager', 'flash_attention_2'])
    add_llm_weights_argument(bl, several=True)
    bl.add_argument('--image-size', type=camera_size_type, metavar='WxH',
                    help="camera frame size (default: the preset's, else 400x225)")
    bl.add_argument('--warmup', type=int, default=2,
                    help='untimed frames per cell; the first compiles (default 2)')
    bl.add_argument('--repeats', type=int, default=5, help='timed frames per cell (default 5)')
    bl.add_argument('--node-frames', type=int, default=48,
                    help='six-camera sets played into the node at 12 Hz (0: skip; default 48)')
    bl.add_argument('--node-decode-backend', default='auto',
                    choices=['auto', 'eager', 'compiled'], help="the node's (default auto)")
    bl.add_argument('--threads', type=int, default=0, help='torch CPU threads (default: torch)')
    bl.add_argument('--out-dir', metavar='DIR', help='write latency.json, .md and .png here')
    bl.set_defaults(run=run_bench_latency)


def add_bench_soak_parser(bench_sub) -> None:
    """Add ``bench soak``."""
    bs = bench_sub.add_parser(
        'soak', help='run N frames; fail on memory growth or unaccounted frames',
        description=BENCH_SOAK_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bs.add_argument('--frames', type=int, default=10000, help='frames to run (default 10000)')
    bs.add_argument('--node', action='store_true',
                    help='drive the ROS node over DDS at 12 Hz instead of the pipeline')
    bs.add_argument('--model', metavar='DIR',
                    help='checkpoint directory (default: the embedded model, as every command; '
                         'until issue 24 the tiny random-weight LLaVA-OneVision of the demo)')
    bs.add_argument('--report-every', type=int, default=500,
                    help='frames between memory and latency reports (default 500)')
    bs.add_argument('--warmup-frames', type=int, default=0,
                    help='frames before the memory baseline (default: one report window)')
    bs.add_argument('--max-growth', type=float, default=0.05,
                    help='allowed memory growth after warm-up, as a fraction (default 0.05)')
    bs.add_argument('--keep-ratio', type=keep_ratio_type, default=0.1, help='default 0.1')
    bs.add_argument('--pruner', type=pruner_type, default='tfps', help='pruner (default tfps)')
    bs.add_argument('--max-new-tokens', type=int, default=16, help='default 16')
    bs.add_argument('--decode-backend', default='auto', choices=['auto', 'eager', 'compiled'])
    bs.add_argument('--device', default='cpu', help="'cpu' or 'cuda[:N]' (default cpu)")
    bs.add_argument('--threads', type=int, default=0, help='torch CPU threads (default: torch)')
    bs.add_argument('--json-out', metavar='PATH', help='write the reports and verdict here')
    bs.set_defaults(run=run_bench_soak)


def add_bench_vision_parser(bench_sub) -> None:
    """Add ``bench vision``."""
    from ..bench.shapes import ENCODERS

    bv = bench_sub.add_parser(
        'vision', help='vision-encoder latency for six views per backend',
        description='Time the vision encoder (+ projector) on six views with every backend '
                    'available here: on CPU torch vs onnxruntime, on GPU torch vs compile (vs '
                    'TensorRT where installed). Real-size shapes with random weights; --layers '
                    'shortens the tower for CPU runs.',
    )
    bv.add_argument('--encoders', nargs='+', default=['siglip-so400m'], choices=sorted(ENCODERS),
                    help='encoder shapes (default siglip-so400m)')
    bv.add_argument('--backends', nargs='+', choices=['torch', 'compile', 'onnxruntime',
                                                      'tensorrt'],
                    help='default: torch onnxruntime on CPU, torch compile tensorrt on CUDA')
    bv.add_argument('--device', default='cuda' if has_cuda() else 'cpu')
    bv.add_argument('--views', type=int, default=6, help='camera views (default 6)')
    bv.add_argument('--layers', type=int, default=0, help='shorten the tower (0 = full depth)')
    bv.add_argument('--warmup', type=int, default=1)
    bv.add_argument('--repeats', type=int, default=5)
    bv.add_argument('--threads', type=int, default=0)
    bv.add_argument('--json-out', metavar='PATH')
    bv.set_defaults(run=run_bench_vision)


def run_bench_prefill(args: argparse.Namespace) -> int:
    """Run ``drive-vlm bench prefill``; return the exit status."""
    from ..bench.prefill import PrefillOptions, run_prefill_bench

    return run_prefill_bench(PrefillOptions(
        preset=args.preset, model=args.model, layers=args.layers, pruners=tuple(args.pruners),
        keep_ratios=tuple(args.keep_ratios), prune_layers=tuple(args.prune_layers),
        device=args.device, dtype=args.dtype, attn=args.attn, warmup=args.warmup,
        repeats=args.repeats, new_tokens=args.new_tokens, threads=args.threads,
        json_out=args.json_out, markdown_out=args.markdown_out, plot=args.plot))


def run_bench_latency(args: argparse.Namespace) -> int:
    """Run ``drive-vlm bench latency``; return the exit status."""
    from ..bench.latency import LatencyOptions, run_latency_bench

    return run_latency_bench(LatencyOptions(
        model=args.model or '', preset=args.preset, layers=args.layers,
        device_spec=args.device_spec, keep_ratios=tuple(args.keep_ratios), pruner=args.pruner,
        prune_layer=args.prune_layer, new_tokens=args.new_tokens,
        decode_backends=tuple(args.decode_backends), device=args.device, dtype=args.dtype,
        attn=args.attn, llm_weights=tuple(args.llm_weights), image_size=args.image_size,
        warmup=args.warmup, repeats=args.repeats, node_frames=args.node_frames,
        node_decode_backend=args.node_decode_backend, threads=args.threads,
        out_dir=args.out_dir))


def run_bench_soak(args: argparse.Namespace) -> int:
    """Run ``drive-vlm bench soak``; return the exit status."""
    from ..bench.soak import run_soak_bench, SoakOptions

    return run_soak_bench(SoakOptions(
        frames=args.frames, node=args.node, model=args.model or '',
        report_every=args.report_every, warmup_frames=args.warmup_frames,
        max_growth=args.max_growth, keep_ratio=args.keep_ratio, pruner=args.pruner,
        max_new_tokens=args.max_new_tokens, decode_backend=args.decode_backend,
        device=args.device, threads=args.threads, json_out=args.json_out))


def run_bench_vision(args: argparse.Namespace) -> int:
    """Run ``drive-vlm bench vision``; return the exit status."""
    from ..bench.vision import run_vision_bench, VisionBenchOptions

    return run_vision_bench(VisionBenchOptions(
        encoders=tuple(args.encoders), backends=tuple(args.backends or ()), device=args.device,
        views=args.views, layers=args.layers, warmup=args.warmup, repeats=args.repeats,
        threads=args.threads, json_out=args.json_out))
