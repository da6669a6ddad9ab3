"""``drive-vlm run``: the offline runner over a bag (bag/run.py)."""

from __future__ import annotations

import argparse
import sys

from .flags import (
    add_load_arguments,
    add_settings_arguments,
    check_reconpruner_weights,
    load_spec_from_args,
)

RUN_HELP = """\
Run the pruned VLM over a rosbag2 without ROS: the six camera topics are paired by the node's
own synchronizer and run through the same pipeline. Writes one JSON line per frame set (or the
fault that skipped it) and prints a summary table. With a ground_truth.json in the bag (bags
from `drive-vlm bag synth` / `bag from-nuscenes`) it scores each trajectory: L2 at 1/2/3 s
(cumulative convention) and collision against the GT objects.

example: drive-vlm run --model DIR --bag /tmp/drive.bag --keep-ratio 0.1 --out results.jsonl
"""


def add_run_parser(sub) -> None:
    """Add ``run``."""
    run = sub.add_parser('run', help='run the pipeline offline over a bag and score it',
                         description=RUN_HELP,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument('--model', default='',
                     help='checkpoint directory or cached model id (default: the embedded model)')
    run.add_argument('--bag', required=True, help='rosbag2 directory (mcap or sqlite3)')
    run.add_argument('--out', required=True, metavar='results.jsonl', help='JSON lines to write')
    add_settings_arguments(run)
    run.add_argument('--decode-backend', default='auto', choices=['auto', 'eager', 'compiled'],
                     help='auto (compiled on CUDA, eager on CPU; default) | eager | compiled '
                          '(static KV cache + torch.compile; falls back to eager, saying why)')
    run.add_argument('--question', help='question, or a preset name: planning, drivelm-qa, '
                     'drivemm-important-objects, impromptu-planning (models/prompts.py '
                     'QUESTION_PRESETS; default: the planning prompt, as the node)')
    run.add_argument('--slop', type=float, default=0.06, help='synchronizer slop s (0.06)')
    run.add_argument('--camera-namespace', default='',
                     help="prefix of the camera topics in the bag, e.g. '/car1' (default none)")
    run.add_argument('--limit', type=int, default=0, help='stop after N sets (default: all)')
    run.add_argument('--record', default='', metavar='OUT.mcap',
                     help='also record the inputs and outputs into this ROS 2 mcap file (images, '
                          'CameraInfo, answer, result, trajectory, plan overlays, diagnostics, '
                          'ground-truth future; Foxglove layout: config/foxglove_layout.json)')
    run.add_argument('--views', nargs='+', default=['CAM_FRONT'], type=camera_name,
                     metavar='CAM', help='views whose plan overlay --record draws (default '
                                         'CAM_FRONT)')
    add_load_arguments(run)
    run.add_argument('--no-progress', action='store_true', help='no progress bar')
    run.set_defaults(run=run_command)


def camera_name(text: str) -> str:
    """Parse a camera name (``CAM_FRONT`` or ``cam_front``), naming the six on a typo."""
    from ..cameras import NUSCENES_CAMERAS

    name = text.upper()
    if name not in NUSCENES_CAMERAS:
        raise argparse.ArgumentTypeError(f'{text!r} is not a camera: use one of '
                                         f'{", ".join(NUSCENES_CAMERAS)}')
    return name


def run_command(args: argparse.Namespace) -> int:
    """Run ``drive-vlm run``; return the exit status."""
    from ..bag.run import run_bag, RunOptions
    from ..models.prompts import PLANNING, resolve_question
    from ..pipeline.pipeline import RuntimeSettings

    settings = RuntimeSettings(keep_ratio=args.keep_ratio, pruner=args.pruner,
                               prune_layer=args.prune_layer,
                               question=resolve_question(args.question or PLANNING),
                               max_new_tokens=args.max_new_tokens,
                               reconpruner_weights=args.reconpruner_weights,
                               decode_backend=args.decode_backend,
                               waypoint_grammar=args.waypoint_grammar)
    load = load_spec_from_args(args, args.model)
    try:
        check_reconpruner_weights(args.pruner, args.reconpruner_weights, args.model)
    except ValueError as err:
        print(f'drive-vlm run: {err}', file=sys.stderr)
        return 2
    options = RunOptions(args.model, args.bag, args.out, settings, load, args.slop, args.limit,
                         args.camera_namespace, not args.no_progress, args.record,
                         tuple(args.views))
    try:
        summary = run_bag(options, log=lambda text: print(text, file=sys.stderr))
    except (ValueError, OSError) as err:  # RecordingError (an OSError) included
        print(f'drive-vlm run: {err}', file=sys.stderr)
        return 2
    print(summary.table())
    print(f'results: {args.out}')
    return 3 if summary.damage else 0
