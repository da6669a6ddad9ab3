"""``drive-vlm bag ...``: write synthetic or nuScenes bags, and play bags over rclpy."""

from __future__ import annotations

import argparse
from pathlib import Path
import sys

BAG_HELP = """\
rosbag2 tools (mcap or sqlite3, written with the pure-Python rosbags library; no ROS needed
to write). Bags written here also play with `ros2 bag play` on a real ROS 2 install.

  synth          a procedurally rendered six-camera drive with ground truth
  from-nuscenes  one bag per nuScenes scene (original JPEGs, calibration, poses, GT trajectory)
  play           publish a bag over rclpy with its recorded timing (raw CDR bytes)
  repair         rewrite a killed recording (an mcap with no footer) as a complete one
  snapshot       render a recording's Foxglove panels (config/foxglove_layout.json) to a PNG
"""

SYNTH_HELP = """\
Render a driving scene on six cameras in nuScenes layout (road, lanes, vehicles, pedestrians,
signs, barriers; straight or curving road) and write it as a rosbag2 at 12 Hz, the six stamps
of a set within 50 ms. Ground truth goes in as topics (/gt/future_trajectory, /gt/objects,
/gt/frame, /<cam>/foreground_mask, /odom, /tf) and as OUT_BAG/ground_truth.json, keyed by each
set's CAM_FRONT stamp. The same --seed gives the same bytes.

example: drive-vlm bag synth /tmp/drive.bag --frames 60 --compressed --curve 0.02
"""

NUSCENES_HELP = """\
Convert nuScenes scenes into one rosbag2 each (OUT_DIR/<scene name>): the six cameras as
CompressedImage with the original JPEG bytes, CameraInfo, ego Odometry and TF, and at each
keyframe the GT future trajectory (6 waypoints at 0.5 s, ego frame) plus a ground_truth.json.
Stamps are the sample_data timestamps. Uses nuscenes-devkit when installed (the `nuscenes`
extra, numpy<2), else reads the same JSON tables directly.

example: drive-vlm bag from-nuscenes --dataroot /data/nuscenes --scene scene-0061 bags/
"""

PLAY_HELP = """\
Publish a bag's messages over rclpy with the recorded timing, sending the raw CDR bytes (no
decode/re-encode). Works where `ros2 bag play` is missing. Topics whose message package is not
installed (e.g. tf2_msgs with the pip ROS wheels) are skipped with one log line each. QoS:
reliable for all topics by default (best-effort subscribers receive it too); /tf_static stays
latched. Ctrl-C stops cleanly and prints what was published.

example: drive-vlm bag play /tmp/drive.bag --rate 0.5 --remap /cam_front/image_raw:=/front
"""


def _remap(text: str) -> tuple[str, str]:
    from ..bag.play import parse_remap

    try:
        return parse_remap(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_bag_parser(subparsers) -> None:
    """Add ``bag`` with its ``synth``, ``from-nuscenes`` and ``play`` subcommands."""
    bag = subparsers.add_parser('bag', help='write synthetic or nuScenes bags; play bags',
                                description=BAG_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    bag.set_defaults(run=run_bag_command)
    sub = bag.add_subparsers(dest='bag_command', metavar='BAG_COMMAND', required=True)

    synth = sub.add_parser('synth', help='write a synthetic six-camera driving bag with GT',
                           description=SYNTH_HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    synth.add_argument('out_bag', metavar='OUT_BAG', help='bag directory to create (new path)')
    synth.add_argument('--frames', type=int, default=36, help='frame sets, 12 per second (36)')
    synth.add_argument('--width', type=int, default=400, help='image width in px (400)')
    synth.add_argument('--height', type=int, default=225, help='image height in px (225)')
    synth.add_argument('--compressed', action='store_true',
                       help='JPEG CompressedImage on /<cam>/image_raw/compressed instead of raw '
                            'rgb8 Image on /<cam>/image_raw')
    synth.add_argument('--jpeg-quality', type=int, default=90, help='JPEG quality 1-100 (90)')
    synth.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap',
                       help='rosbag2 storage (mcap)')
    synth.add_argument('--no-compression', dest='compression', action='store_false',
                       help='write mcap chunks uncompressed (default: zstd chunks)')
    synth.add_argument('--seed', type=int, default=0, help='scene seed (0)')
    synth.add_argument('--jitter-ms', type=float, default=0.0,
                       help='uniform +-J ms on each camera stamp, within the 50 ms set (0)')
    synth.add_argument('--drop-prob', type=float, default=0.0,
                       help='probability of dropping each camera message (0)')
    synth.add_argument('--curve', type=float, default=0.0,
                       help='road curvature in 1/m, + = left (0: straight; 0.02: 50 m radius)')
    synth.add_argument('--speed', type=float, default=8.0, help='ego speed in m/s (8)')
    synth.add_argument('--quiet', action='store_true', help='no progress bar')

    nus = sub.add_parser('from-nuscenes', help='convert nuScenes scenes into bags',
                         description=NUSCENES_HELP,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    nus.add_argument('out_dir', metavar='OUT_DIR', help='folder for the bags (one per scene)')
    nus.add_argument('--dataroot', required=True,
                     help='nuScenes folder holding <version>/, samples/ and sweeps/')
    nus.add_argument('--version', default='v1.0-mini', help='table version (v1.0-mini)')
    nus.add_argument('--scene', nargs='+', action='extend', default=[], metavar='NAME',
                     help='scene names, e.g. scene-0061 (default: every scene)')
    nus.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap',
                     help='rosbag2 storage (mcap)')
    nus.add_argument('--reader', choices=('auto', 'devkit', 'tables'), default='auto',
                     help='table reader: nuscenes-devkit, the built-in JSON reader, or auto '
                          '(devkit when it imports)')
    nus.add_argument('--quiet', action='store_true', help='no progress bars')

    play = sub.add_parser('play', help='publish a bag over rclpy with its recorded timing',
                          description=PLAY_HELP,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    play.add_argument('bag', metavar='BAG', help='rosbag2 directory')
    play.add_argument('--rate', type=float, default=1.0, help='speed factor (1.0)')
    play.add_argument('--loop', action='store_true', help='start over at the end, until Ctrl-C')
    play.add_argument('--start-offset', type=float, default=0.0, metavar='S',
                      help='skip the first S seconds of the bag (0)')
    play.add_argument('--remap', type=_remap, action='append', default=[],
                      metavar='FROM:=TO', help='publish topic FROM as TO (repeatable)')
    play.add_argument('--qos', choices=('reliable', 'best-effort'),
                      help='force this reliability on every topic (default: reliable)')
    play.add_argument('--topics', nargs='+', default=[], metavar='TOPIC',
                      help='play only these recorded topics (default: all)')
    play.add_argument('--wait-for-subscribers', type=float, default=0.0, metavar='S',
                      help='wait up to S seconds for a subscriber on every camera image topic '
                           'before the first message (0: start at once)')
    play.add_argument('--depth', type=int, default=10, help='publisher queue depth (10)')
    repair = sub.add_parser('repair', help='rewrite a killed recording as a complete mcap',
                            description='Copy every record of a truncated mcap (a recording '
                                        'killed before it closed) up to the break into a new, '
                                        'complete file that rosbags and ros2 bag open.')
    repair.add_argument('src', metavar='BROKEN.mcap')
    repair.add_argument('dst', metavar='OUT.mcap', help='the complete file to write (new)')
    snap = sub.add_parser('snapshot', help="render a recording's panels to a PNG",
                          description='Draw one set of a recording (drive-vlm run --record, the '
                                      "node's record_path) as the shipped Foxglove layout shows "
                                      'it: six cameras, the plan overlay, prefill ms and kept '
                                      'tokens over time, the answer log and the top-down path.')
    snap.add_argument('recording', metavar='REC.mcap')
    snap.add_argument('--out', required=True, metavar='PNG')
    snap.add_argument('--index', type=int, default=-1,
                      help='which answered set to show (default -1: the last)')


def run_bag_command(args: argparse.Namespace) -> int:
    """Run the ``bag`` subcommand in ``args``; return the exit status."""
    name = f'drive-vlm bag {args.bag_command}'
    try:
        if args.bag_command == 'synth':
            return _synth(args)
        if args.bag_command == 'from-nuscenes':
            return _from_nuscenes(args)
        if args.bag_command == 'play':
            return _play(args)
        if args.bag_command == 'repair':
            return _repair(args)
        if args.bag_command == 'snapshot':
            return _snapshot(args)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        print(f'{name}: {err}', file=sys.stderr)
        return 2
    return 2


def _size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob('*') if p.is_file()) / 1e6


def _synth(args: argparse.Namespace) -> int:
    from ..bag.synth import synth_bag, SynthOptions

    options = SynthOptions(
        frames=args.frames, width=args.width, height=args.height, compressed=args.compressed,
        jpeg_quality=args.jpeg_quality, storage=args.storage, compression=args.compression,
        seed=args.seed, jitter_ms=args.jitter_ms, drop_prob=args.drop_prob, curve=args.curve,
        speed=args.speed)
    result = synth_bag(args.out_bag, options, progress=not args.quiet)
    total = sum(result.counts.values())
    print(f'wrote {result.path} ({_size_mb(result.path):.1f} MB, {args.storage}): '
          f'{result.frames} frame sets, {total} messages on {len(result.counts)} topics, '
          f'{result.dropped} camera messages dropped; ground truth in {result.sidecar}')
    return 0


def _from_nuscenes(args: argparse.Namespace) -> int:
    from ..bag.nuscenes import convert_nuscenes

    bags, reader = convert_nuscenes(args.dataroot, args.version, args.out_dir, args.scene,
                                    args.storage, args.reader, progress=not args.quiet)
    print(f'read the tables with {"nuscenes-devkit" if reader == "devkit" else "the JSON reader"}')
    for bag in bags:
        print(f'{bag.path}: {bag.keyframes} keyframes, {sum(bag.counts.values())} messages, '
              f'{_size_mb(bag.path):.1f} MB')
    return 0


def _play(args: argparse.Namespace) -> int:
    from ..bag.play import play_bag, PlayOptions

    options = PlayOptions(rate=args.rate, loop=args.loop, start_offset_s=args.start_offset,
                          remap=tuple(args.remap), qos=args.qos, topics=tuple(args.topics),
                          wait_for_subscribers_s=args.wait_for_subscribers, depth=args.depth)
    stats = play_bag(args.bag, options)
    print(stats.summary())
    return 0


def _repair(args: argparse.Namespace) -> int:
    from ..bag.repair import repair_mcap

    report = repair_mcap(args.src, args.dst)
    print(report.describe(Path(args.src), Path(args.dst)))
    return 0


def _snapshot(args: argparse.Namespace) -> int:
    from ..bag.snapshot import render_snapshot

    print(f'wrote {render_snapshot(args.recording, args.out, args.index)}')
    return 0
