"""``drive-vlm data ...``: write synthetic driving QA in DriveLM-nuScenes format."""

from __future__ import annotations

import argparse
import sys

DATA_HELP = """\
Driving QA data sets in DriveLM-nuScenes format.

  synth   render procedural six-camera scenes and write images, masks and <split>.json
"""

SYNTH_HELP = """\
Render procedural driving scenes on the six nuScenes cameras and write a DriveLM-nuScenes data
set: OUT/samples/<CAM>/*.jpg, OUT/masks/<CAM>/*.png (label masks), OUT/<split>.json (key
objects with c-tags, perception / prediction / planning / behavior QA with DriveLM tags, and
the ground truth DriveLM lacks: ego history, GT future trajectory, future agent boxes) and
OUT/<split>.meta.json. Every answer follows a rule of docs/qa_rules.md. Key frames lie 0.5 s
apart in each scene. Scene i has the seed <split base> + --seed + i (train 0, val 1,000,000,
test 2,000,000): the splits never share a scene, and the same options give the same bytes.
An interrupted run resumes: finished scenes are kept under OUT/.partial/ until the JSON is
written.

example: drive-vlm data synth data/ --split test --scenes 10 --frames-per-scene 20
"""


def add_data_parser(subparsers) -> None:
    """Add ``data`` with its ``synth`` subcommand."""
    from ..data.synth import DataOptions, SPLITS

    defaults = DataOptions()
    data = subparsers.add_parser('data', help='write synthetic driving QA (DriveLM format)',
                                 description=DATA_HELP,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    data.set_defaults(run=run_data)
    sub = data.add_subparsers(dest='data_command', metavar='DATA_COMMAND', required=True)
    synth = sub.add_parser('synth', help='render scenes into a DriveLM-format data set',
                           description=SYNTH_HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    synth.add_argument('out', metavar='OUT', help='data directory (created if missing)')
    synth.add_argument('--scenes', type=int, default=defaults.scenes,
                       help=f'scenes to render ({defaults.scenes})')
    synth.add_argument('--frames-per-scene', type=int, default=defaults.frames_per_scene,
                       help=f'key frames per scene, 0.5 s apart ({defaults.frames_per_scene})')
    synth.add_argument('--seed', type=int, default=defaults.seed,
                       help=f'offset of the scene seeds within the split ({defaults.seed})')
    synth.add_argument('--split', choices=SPLITS, default=defaults.split,
                       help=f'which split, and so which seed range ({defaults.split})')
    synth.add_argument('--width', type=int, default=defaults.width,
                       help=f'image width in px ({defaults.width})')
    synth.add_argument('--height', type=int, default=defaults.height,
                       help=f'image height in px ({defaults.height})')
    synth.add_argument('--overwrite', action='store_true',
                       help='replace an existing OUT/<split>.json')
    synth.add_argument('--quiet', action='store_true', help='no progress bar')


def run_data(args: argparse.Namespace) -> int:
    """Run the ``data`` subcommand in ``args``; return the exit status."""
    name = f'drive-vlm data {args.data_command}'
    try:
        if args.data_command == 'synth':
            return _synth(args)
    except (ValueError, FileExistsError) as err:
        print(f'{name}: {err}', file=sys.stderr)
        return 2
    return 2


def _synth(args: argparse.Namespace) -> int:
    from ..data.synth import DataOptions, write_dataset

    options = DataOptions(scenes=args.scenes, frames_per_scene=args.frames_per_scene,
                          seed=args.seed, split=args.split, width=args.width,
                          height=args.height)
    result = write_dataset(args.out, options, progress=not args.quiet, overwrite=args.overwrite)
    resumed = f' ({result.resumed_scenes} scenes kept from an earlier run)' \
        if result.resumed_scenes else ''
    print(f'wrote {result.json_path}: {result.scenes} scenes, {result.key_frames} key frames, '
          f'{result.qa} QA{resumed}; meta in {result.meta_path}')
    print('family                 questions  majority answer share  (its answer)')
    for family, (n, answer, share) in result.majority.items():
        shown = answer if len(answer) <= 40 else answer[:37] + '...'
        print(f'{family:22s} {n:9d}  {100 * share:20.1f}%  ({shown})')
    print(f'{result.seconds:.1f} s: {result.frames_per_s:.2f} key frames/s')
    return 0
