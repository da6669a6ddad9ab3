"""``drive-vlm``: the one command-line front door, with a subcommand per job."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import sys

from .bag import add_bag_parser, run_bag_command
from .bench_llm_weights import add_bench_llm_weights_parser, run_bench_llm_weights
from .bench_pruners import add_bench_pruners_parser
from .convert import add_convert_parser, run_convert
from .data import add_data_parser, run_data
from .eval import add_eval_parser
from .node import add_node_parser
from .probes import add_probes_parser, run_probes
from .run import add_llm_weights_argument, add_run_parser
from .search import add_bench_accuracy_parser, add_search_parser, run_search
from .train import add_train_parser, run_train
from ..pruning import check_keep_ratio, check_pruner_name

TINY_FAMILIES = ('llava-onevision', 'internvl', 'qwen2.5-vl')

DESCRIPTION = """\
drive-vlm: a multi-view driving VLM whose visual tokens are pruned before or inside the LLM.

Six surround cameras give ~4,400 visual tokens; keeping a well-chosen 10-25% of them keeps most
of the accuracy at a fraction of the prefill cost. Run a subcommand with --help for details.
"""

DEMO_HELP = """\
Write a synthetic six-camera bag, start the drive_vlm ROS node on the embedded trained model
(or --model), play the bag into it over DDS (loopback when ROS_AUTOMATIC_DISCOVERY_RANGE=
LOCALHOST) while asking in turn, over ~/question, whether a vehicle is in the front view, how
many, and the planning question. Print every ~/result: tokens kept per camera, prefill ms,
latency, question, answer and the ground truth from the bag's scene (correct or not; L2 for a
trajectory). Then set keep_ratio 1.0 through the parameter service (as `ros2 param set` does),
replay, and print accuracy and prefill at both keep ratios. Without rclpy it runs `drive-vlm run`.
"""

DEMO_PRUNERS_HELP = """\
Show what each pruner keeps on a synthetic six-view scene (6 x 729 tokens): tokens kept per
camera, how many planted objects still have a token, the share spent on sky/road, the time per
call, and ASCII maps of the front camera. Needs no model and no ROS.
"""


def _keep_ratio(text: str) -> float:
    try:
        return check_keep_ratio(float(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _pruner(text: str) -> str:
    try:
        return check_pruner_name(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='drive-vlm', description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)

    main_demo = sub.add_parser(
        'demo', help='run the pruned VLM on synthetic six-view frames (the main demo)',
        description=DEMO_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    main_demo.add_argument('--frames', type=int, default=12,
                           help='six-camera sets in the bag, 12 per second (default 12)')
    main_demo.add_argument('--keep-ratio', type=_keep_ratio, default=0.1,
                           help='fraction of visual tokens KEPT, in (0, 1] (default 0.1)')
    main_demo.add_argument('--pruner', type=_pruner, default='tfps', help='pruner (default tfps)')
    main_demo.add_argument('--prune-layer', type=int, default=0,
                           help='0: after the projector; K >= 1: before LLM layer K (default 0)')
    main_demo.add_argument('--model', help='checkpoint directory or cached model id '
                                           '(default: the embedded trained model)')
    main_demo.add_argument('--max-new-tokens', type=int, default=80,
                           help='tokens to generate (default 80: room for a 6-waypoint plan)')
    main_demo.add_argument('--device', default='cpu', help="'cpu' or 'cuda[:N]' (default cpu)")
    main_demo.add_argument('--dtype', default='auto',
                           choices=['auto', 'float32', 'bfloat16', 'float16'],
                           help='model dtype (default auto: bfloat16 on CUDA, float32 on CPU)')
    main_demo.add_argument('--attn', default='auto',
                           choices=['auto', 'sdpa', 'eager', 'flash_attention_2'],
                           help='attention implementation (default auto: flash_attention_2 '
                                'when flash-attn is installed on CUDA, else sdpa)')
    main_demo.add_argument('--record-dir', default='demo-recordings', metavar='DIR',
                           help='record both passes into DIR/<time>/keep<R>.mcap (default '
                                "demo-recordings; '' records nothing)")

    demo = sub.add_parser(
        'demo-pruners', help='show which tokens each pruner keeps (synthetic tokens, no model)',
        description=DEMO_PRUNERS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument('--keep-ratio', type=_keep_ratio, default=0.1,
                      help='fraction of visual tokens KEPT, in (0, 1] (default 0.1)')
    demo.add_argument('--dim', type=int, default=1152, help='token width D (default 1152)')
    demo.add_argument('--seed', type=int, default=0, help='scene seed (default 0)')
    demo.add_argument('--view-weights', metavar='YAML',
                      help='also run T-FPS with these per-view keep weights '
                           '(e.g. config/view_weights.yaml)')
    demo.add_argument('--reconpruner-weights', default='', metavar='W.safetensors',
                      help='ReconPruner weights (synthetic scene: of width --dim; with --model: '
                           "default the model's own reconpruner.safetensors)")
    demo.add_argument('--model', metavar='DIR', help='with --data: foreground recall of every '
                                                     'pruner on real frames of this model')
    demo.add_argument('--data', metavar='DIR', help='`drive-vlm data synth` data set (GT masks)')
    demo.add_argument('--split', default='test', help='data split (default test)')
    demo.add_argument('--frames', type=int, default=8, help='key frames to measure (default 8)')
    demo.add_argument('--keep-ratios', nargs='+', type=_keep_ratio, default=[0.5, 0.25, 0.1],
                      help='fractions KEPT for the recall table (default 0.5 0.25 0.1)')
    demo.add_argument('--device', default='cpu', help="'cpu' or 'cuda[:N]' (default cpu)")

    tiny = sub.add_parser(
        'make-tiny-model', help='write a tiny random-weight checkpoint of a VLM family',
        description='Write a real Hugging Face checkpoint directory (config.json, '
                    'model.safetensors, tokenizer, image-processor config) built with the '
                    "family's own transformers classes and random weights. It loads exactly like "
                    'a real checkpoint; tests and the demo use it. It answers nonsense.',
    )
    tiny.add_argument('--family', required=True, choices=TINY_FAMILIES, help='model family')
    tiny.add_argument('out_dir', metavar='OUT_DIR', help='new (or empty) directory to write')
    tiny.add_argument('--seed', type=int, default=0, help='weight seed (default 0)')

    export = sub.add_parser(
        'export-vision', help='export the vision encoder + projector to ONNX and check it',
        description='Export the vision tower and projector of a checkpoint to ONNX (fixed image '
                    'size, dynamic number of views), then run the graph in ONNX Runtime and '
                    'PyTorch on the same random views and print the max abs error.',
    )
    export.add_argument('--model', required=True, help='checkpoint directory or cached model id')
    export.add_argument('--onnx', required=True, metavar='OUT.onnx', help='file to write')
    export.add_argument('--views', type=int, default=6, help='views in the check (default 6)')
    export.add_argument('--camera-size', type=_camera_size, metavar='WxH',
                        help='camera frame size the graph is fixed for (Qwen2.5-VL, whose ViT '
                             'grid follows the frame; default 1600x900, nuScenes). The other '
                             'families resize every frame to their fixed input')
    export.add_argument('--fp16', action='store_true',
                        help='FP16 graph (FP16 input, weights and output); what build-engine '
                             '--fp16 needs on TensorRT 11, which builds strongly typed networks')

    engine = sub.add_parser(
        'build-engine', help='build (or reuse) a TensorRT engine from an exported ONNX graph',
        description='Build a TensorRT engine for the vision encoder, cached under a key of '
                    'TensorRT version, GPU compute capability, precision and shape: a matching '
                    'engine is reused, anything else rebuilt. Needs a CUDA GPU with TensorRT.',
    )
    engine.add_argument('--onnx', required=True, help='ONNX graph from export-vision')
    engine.add_argument('--engine', required=True, metavar='OUT.plan', help='engine file')
    engine.add_argument('--fp16', action='store_true', help='FP16 engine')
    engine.add_argument('--views', type=int, default=6, help='largest number of views (6)')
    engine.add_argument('--force', action='store_true', help='rebuild even if the key matches')

    add_node_parser(sub)
    add_run_parser(sub, _keep_ratio, _pruner)
    add_eval_parser(sub, _keep_ratio, _pruner)

    bench = sub.add_parser('bench', help='benchmarks that print figures',
                           description='Benchmarks. Each prints a table; none is a test.')
    bench_sub = bench.add_subparsers(dest='bench', metavar='BENCH', required=True)
    add_bench_pruners_parser(bench_sub, _keep_ratio, _pruner)
    bench_prefill_parser(bench_sub)
    add_bench_accuracy_parser(bench_sub, _keep_ratio, _pruner)
    bench_latency_parser(bench_sub)
    add_bench_llm_weights_parser(bench_sub, _keep_ratio)
    bench_soak_parser(bench_sub)
    add_probes_parser(bench_sub)
    bv = bench_sub.add_parser(
        'vision', help='vision-encoder latency for six views per backend',
        description='Time the vision encoder (+ projector) on six views with every backend '
                    'available here: on CPU torch vs onnxruntime, on GPU torch vs compile (vs '
                    'TensorRT where installed). Real-size shapes with random weights; --layers '
                    'shortens the tower for CPU runs.',
    )
    from ..bench.shapes import ENCODERS

    bv.add_argument('--encoders', nargs='+', default=['siglip-so400m'], choices=sorted(ENCODERS),
                    help='encoder shapes (default siglip-so400m)')
    bv.add_argument('--backends', nargs='+', choices=['torch', 'compile', 'onnxruntime',
                                                      'tensorrt'],
                    help='default: torch onnxruntime on CPU, torch compile tensorrt on CUDA')
    bv.add_argument('--device', default='cuda' if _has_cuda() else 'cpu')
    bv.add_argument('--views', type=int, default=6, help='camera views (default 6)')
    bv.add_argument('--layers', type=int, default=0, help='shorten the tower (0 = full depth)')
    bv.add_argument('--warmup', type=int, default=1)
    bv.add_argument('--repeats', type=int, default=5)
    bv.add_argument('--threads', type=int, default=0)
    bv.add_argument('--json-out', metavar='PATH')
    add_bag_parser(sub)
    add_convert_parser(sub)
    add_train_parser(sub)
    add_data_parser(sub)
    add_search_parser(sub, _pruner)
    return parser


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


def bench_prefill_parser(bench_sub) -> None:
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
    bp.add_argument('--pruners', nargs='+', type=_pruner, default=['tfps', 'divprune', 'fastv',
                                                                   'mvpruner'],
                    metavar='NAME', help='pruners (default tfps divprune fastv mvpruner)')
    bp.add_argument('--keep-ratios', nargs='+', type=_keep_ratio, default=list(KEEP_RATIOS),
                    help='fractions KEPT (default 1.0 0.5 0.25 0.125 0.1 0.05)')
    bp.add_argument('--prune-layers', nargs='+', type=int, default=[0, 2],
                    help='0: after the projector; K: before LLM layer K (default 0 2)')
    bp.add_argument('--device', default='cuda' if _has_cuda() else 'cpu',
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


BENCH_LATENCY_HELP = """\
Latency budget of a frame, camera set to trajectory: per keep ratio and decode backend, the
median preprocess, vision, prune, prefill, time to first token and decode ms/token, end to end,
tokens generated, KV cache bytes and peak memory, with the decode roofline ratio (measured
ms/token over (weight + KV bytes one step reads) / the bandwidth of a measured tensor copy).
Then the ROS node under its real load (a synthetic bag, six cameras at 12 Hz over DDS,
latest-wins): p50 / p90 / p99 latency and sets answered / dropped. Writes JSON, markdown and a
PNG with --out-dir. Without --model or --preset it uses the demo's tiny random-weight model.

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

example: drive-vlm bench soak --frames 10000 --node
"""


def bench_latency_parser(bench_sub) -> None:
    from ..bench.device_specs import DEVICE_SPECS
    from ..bench.shapes import PRESETS

    bl = bench_sub.add_parser(
        'latency', help='frame latency budget, decode roofline, node p50/p90/p99',
        description=BENCH_LATENCY_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bl.add_argument('--model', metavar='DIR', help='checkpoint directory (default: the tiny '
                                                   'random-weight LLaVA-OneVision of the demo)')
    bl.add_argument('--preset', choices=sorted(PRESETS),
                    help='a real-size model shape with random weights instead (no node run)')
    bl.add_argument('--layers', type=int, default=0, help='shorten a --preset LLM to N layers')
    bl.add_argument('--device-spec', choices=sorted(DEVICE_SPECS),
                    help='print the bandwidth decode floor per preset on this device and exit')
    bl.add_argument('--keep-ratios', nargs='+', type=_keep_ratio, default=[1.0, 0.25, 0.1],
                    help='fractions KEPT (default 1.0 0.25 0.1)')
    bl.add_argument('--pruner', type=_pruner, default='tfps', help='pruner (default tfps)')
    bl.add_argument('--prune-layer', type=int, default=0, help='0 or LLM layer K (default 0)')
    bl.add_argument('--new-tokens', type=int, default=64,
                    help='tokens per answer, EOS ignored (default 64)')
    bl.add_argument('--decode-backends', nargs='+', choices=['eager', 'compiled'],
                    default=['eager', 'compiled'], help='default: eager compiled')
    bl.add_argument('--device', default='cuda' if _has_cuda() else 'cpu',
                    help='cpu or cuda[:N] (default: cuda when available)')
    bl.add_argument('--dtype', default='auto', choices=['auto', 'float32', 'bfloat16', 'float16'])
    bl.add_argument('--attn', default='sdpa', choices=['sdpa', 'eager', 'flash_attention_2'])
    add_llm_weights_argument(bl, several=True)
    bl.add_argument('--image-size', type=_camera_size, metavar='WxH',
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


def bench_soak_parser(bench_sub) -> None:
    bs = bench_sub.add_parser(
        'soak', help='run N frames; fail on memory growth or unaccounted frames',
        description=BENCH_SOAK_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bs.add_argument('--frames', type=int, default=10000, help='frames to run (default 10000)')
    bs.add_argument('--node', action='store_true',
                    help='drive the ROS node over DDS at 12 Hz instead of the pipeline')
    bs.add_argument('--model', metavar='DIR', help='checkpoint directory (default: the tiny '
                                                   'random-weight LLaVA-OneVision of the demo)')
    bs.add_argument('--report-every', type=int, default=500,
                    help='frames between memory and latency reports (default 500)')
    bs.add_argument('--warmup-frames', type=int, default=0,
                    help='frames before the memory baseline (default: one report window)')
    bs.add_argument('--max-growth', type=float, default=0.05,
                    help='allowed memory growth after warm-up, as a fraction (default 0.05)')
    bs.add_argument('--keep-ratio', type=_keep_ratio, default=0.1, help='default 0.1')
    bs.add_argument('--pruner', type=_pruner, default='tfps', help='pruner (default tfps)')
    bs.add_argument('--max-new-tokens', type=int, default=16, help='default 16')
    bs.add_argument('--decode-backend', default='auto', choices=['auto', 'eager', 'compiled'])
    bs.add_argument('--device', default='cpu', help="'cpu' or 'cuda[:N]' (default cpu)")
    bs.add_argument('--threads', type=int, default=0, help='torch CPU threads (default: torch)')
    bs.add_argument('--json-out', metavar='PATH', help='write the reports and verdict here')


def _export_vision(args) -> int:
    import torch

    from ..models.load import load_adapter
    from ..models.loading import LoadSpec
    from ..vision.onnx_export import check_parity, export_onnx

    try:
        adapter = load_adapter(LoadSpec(args.model))
    except ValueError as err:
        print(f'drive-vlm export-vision: {err}', file=sys.stderr)
        return 2
    if args.camera_size:
        if not hasattr(adapter, 'set_camera_hw'):
            print(f'drive-vlm export-vision: --camera-size: {adapter.family} resizes every '
                  f'frame to its fixed {adapter.image_shape[-1]} px input, so its graph fits any '
                  'camera; leave the option out', file=sys.stderr)
            return 2
        adapter.set_camera_hw(args.camera_size)
    module = adapter.vision_module()
    if module is None:
        print(f'drive-vlm export-vision: {adapter.family} has no exportable vision module yet',
              file=sys.stderr)
        return 2
    path = export_onnx(module, adapter.image_shape, args.onnx, fp16=args.fp16,
                       metadata=adapter.vision_metadata())
    pixels = torch.randn(args.views, *adapter.image_shape)
    parity = check_parity(path, module, pixels)
    print(f'wrote {path} ({_onnx_mib(path):.1f} MiB, {parity.graph_dtype}), input [views, '
          f'{", ".join(map(str, adapter.image_shape))}]')
    if hasattr(adapter, 'set_camera_hw'):
        h, w = adapter.camera_hw
        print(f'fixed to {w}x{h} camera frames ({adapter.vision_grid[0]} x '
              f'{adapter.vision_grid[1]} patches); other sizes: --camera-size WxH')
    print(f'ONNX Runtime ({parity.graph_dtype}) vs PyTorch (float32) on {args.views} random '
          f'views: max abs error {parity.max_abs_error:.2e} (max |feature| '
          f'{parity.max_abs_feature:.2e})')
    return 0


def _camera_size(text: str) -> tuple[int, int]:
    """Parse ``WxH`` (e.g. 1600x900) into ``(H, W)``."""
    try:
        width, height = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r}: give WxH in pixels, e.g. 1600x900') from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f'{text!r}: width and height must be positive')
    return height, width


def _onnx_mib(path) -> float:
    """Size of a graph with its external-data file ``<name>.data``, where torch put weights."""
    files = [path, path.with_name(path.name + '.data')]
    return sum(p.stat().st_size for p in files if p.is_file()) / 2**20


def _build_engine(args) -> int:
    from ..vision.backends import BackendUnavailable
    from ..vision.tensorrt_engine import build_engine

    try:
        path, what = build_engine(args.onnx, args.engine, args.fp16, args.views, args.force)
    except (BackendUnavailable, ValueError) as err:
        print(f'drive-vlm build-engine: {err}', file=sys.stderr)
        return 2
    print(f'{path}: {what}')
    return 0


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == 'demo':
        from .demo import run_node_demo

        return run_node_demo(args.frames, args.keep_ratio, args.pruner, args.prune_layer,
                             args.model, args.max_new_tokens, args.device, args.dtype, args.attn,
                             args.record_dir)
    if args.command == 'demo-pruners':
        from .demo_pruners import run_pruner_demo

        return run_pruner_demo(args.keep_ratio, args.dim, args.seed, args.view_weights,
                               args.reconpruner_weights, args.model, args.data, args.split,
                               args.frames, tuple(args.keep_ratios), args.device)
    if args.command == 'make-tiny-model':
        from ..models.tiny import make_tiny_model

        print(make_tiny_model(args.family, args.out_dir, args.seed))
        return 0
    if args.command == 'run':
        from .run import run_command

        return run_command(args)
    if args.command == 'eval':
        from .eval import run_eval

        return run_eval(args)
    if args.command == 'node':
        from .node import run_node

        return run_node(args)
    if args.command == 'export-vision':
        return _export_vision(args)
    if args.command == 'build-engine':
        return _build_engine(args)
    if args.command == 'bench' and args.bench == 'vision':
        from ..bench.vision import main as bench_vision_main

        return bench_vision_main(args)
    if args.command == 'bench' and args.bench == 'prefill':
        from ..bench.prefill import main as bench_prefill_main

        return bench_prefill_main(args)
    if args.command == 'bench' and args.bench == 'accuracy':
        from ..bench.accuracy import main as bench_accuracy_main

        return bench_accuracy_main(args)
    if args.command == 'search':
        return run_search(args)
    if args.command == 'bench' and args.bench == 'pruners':
        from ..bench.pruners import main as bench_pruners_main

        return bench_pruners_main(args)
    if args.command == 'bench' and args.bench == 'latency':
        from ..bench.latency import main as bench_latency_main

        return bench_latency_main(args)
    if args.command == 'bench' and args.bench == 'llm-weights':
        return run_bench_llm_weights(args)
    if args.command == 'bench' and args.bench == 'probes':
        return run_probes(args)
    if args.command == 'bench' and args.bench == 'soak':
        from ..bench.soak import main as bench_soak_main

        return bench_soak_main(args)
    if args.command == 'train':
        return run_train(args)
    if args.command == 'bag':
        return run_bag_command(args)
    if args.command == 'convert':
        return run_convert(args)
    if args.command == 'data':
        return run_data(args)
    return 2


if __name__ == '__main__':
    sys.exit(main())
