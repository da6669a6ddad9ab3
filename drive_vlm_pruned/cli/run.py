"""``drive-vlm run``: the offline runner over a bag (bag/run.py)."""

from __future__ import annotations

import argparse
import sys

RUN_HELP = """\
Run the pruned VLM over a rosbag2 without ROS: the six camera topics are paired by the node's
own synchronizer and run through the same pipeline. Writes one JSON line per frame set (or the
fault that skipped it) and prints a summary table. With a ground_truth.json in the bag (bags
from `drive-vlm bag synth` / `bag from-nuscenes`) it scores each trajectory: L2 at 1/2/3 s
(cumulative convention) and collision against the GT objects.

example: drive-vlm run --model DIR --bag /tmp/drive.bag --keep-ratio 0.1 --out results.jsonl
"""


def add_run_parser(sub, keep_ratio_type, pruner_type) -> None:
    run = sub.add_parser('run', help='run the pipeline offline over a bag and score it',
                         description=RUN_HELP,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument('--model', required=True, help='checkpoint directory or cached model id')
    run.add_argument('--bag', required=True, help='rosbag2 directory (mcap or sqlite3)')
    run.add_argument('--out', required=True, metavar='results.jsonl', help='JSON lines to write')
    run.add_argument('--keep-ratio', type=keep_ratio_type, default=0.25,
                     help='fraction of visual tokens KEPT (default 0.25, as the node)')
    run.add_argument('--pruner', type=pruner_type, default='tfps', help='pruner (default tfps)')
    run.add_argument('--prune-layer', type=int, default=0, help='0 or LLM layer K (default 0)')
    run.add_argument('--max-new-tokens', type=int, default=64, help='default 64, as the node')
    run.add_argument('--question', help='question (default: the planning prompt, as the node)')
    run.add_argument('--slop', type=float, default=0.06, help='synchronizer slop s (0.06)')
    run.add_argument('--camera-namespace', default='',
                     help="prefix of the camera topics in the bag, e.g. '/car1' (default none)")
    run.add_argument('--limit', type=int, default=0, help='stop after N sets (default: all)')
    run.add_argument('--device', default='cpu', help="'cpu' or 'cuda[:N]' (default cpu)")
    run.add_argument('--dtype', default='auto', choices=['auto', 'float32', 'bfloat16',
                                                         'float16'])
    run.add_argument('--attn', default='auto', choices=['auto', 'sdpa', 'eager',
                                                        'flash_attention_2'])
    run.add_argument('--vision-backend', default='torch',
                     choices=['torch', 'compile', 'onnxruntime', 'tensorrt'],
                     help='vision encoder backend; unavailable ones fall back (default torch)')
    run.add_argument('--vision-onnx', default='', help='ONNX file for onnxruntime')
    run.add_argument('--vision-engine', default='', help='TensorRT engine file')
    run.add_argument('--no-progress', action='store_true', help='no progress bar')


def run_command(args: argparse.Namespace) -> int:
    from ..bag.run import run_bag, RunOptions
    from ..models.loading import LoadSpec
    from ..models.prompts import PLANNING
    from ..pipeline.pipeline import RuntimeSettings

    settings = RuntimeSettings(keep_ratio=args.keep_ratio, pruner=args.pruner,
                               prune_layer=args.prune_layer, question=args.question or PLANNING,
                               max_new_tokens=args.max_new_tokens)
    load = LoadSpec(args.model, device=args.device, dtype=args.dtype,
                    attn_implementation=args.attn, vision_backend=args.vision_backend,
                    vision_onnx=args.vision_onnx, vision_engine=args.vision_engine)
    options = RunOptions(args.model, args.bag, args.out, settings, load, args.slop, args.limit,
                         args.camera_namespace, not args.no_progress)
    try:
        summary = run_bag(options, log=lambda text: print(text, file=sys.stderr))
    except (ValueError, FileNotFoundError) as err:
        print(f'drive-vlm run: {err}', file=sys.stderr)
        return 2
    print(summary.table())
    print(f'results: {args.out}')
    return 3 if summary.damage else 0
