"""``drive-vlm node``: the ROS node from our own CLI (same as ``ros2 run ... vlm_node``)."""

from __future__ import annotations

import argparse

NODE_HELP = """\
Start the drive_vlm ROS 2 node: six synchronized camera topics in; ~/answer, ~/result (JSON),
~/trajectory (nav_msgs/Path), ~/kept_tokens and /diagnostics out. The flags are shorthands for
ROS parameters; anything after them goes to ROS as is, e.g.
  drive-vlm node --model DIR --keep-ratio 0.1 -- --ros-args -r __ns:=/car1
Every parameter is listed, with its meaning, in config/vlm.yaml.
"""


def add_node_parser(sub) -> None:
    """Add ``node``."""
    node = sub.add_parser('node', help='run the ROS 2 node (needs rclpy)', description=NODE_HELP,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    node.add_argument('--model', help='checkpoint directory or cached model id')
    node.add_argument('--params-file', metavar='YAML', help='ROS parameter file (config/vlm.yaml)')
    node.add_argument('--keep-ratio', type=float, help='fraction of visual tokens kept')
    node.add_argument('--pruner', help='token pruner')
    node.add_argument('--device', help="'auto', 'cpu' or 'cuda[:N]'")
    node.add_argument('--max-new-tokens', type=int, help='tokens generated per answer')
    node.add_argument('--llm-weights', choices=['native', 'int8', 'int4'],
                      help="the LLM's linear weights (read-only parameter llm_weights)")
    node.add_argument('ros_args', nargs=argparse.REMAINDER,
                      help='after --: more ROS arguments (--ros-args -p name:=value ...)')
    node.set_defaults(run=run_node)


def ros_arguments(args: argparse.Namespace) -> list[str]:
    """Turn the shorthand flags into ``--ros-args -p name:=value`` (keep_ratio stays a double)."""
    out = ['--ros-args']
    if args.params_file:
        out += ['--params-file', args.params_file]
    shorthands = {'model': args.model, 'pruner': args.pruner, 'device': args.device,
                  'keep_ratio': None if args.keep_ratio is None else repr(float(args.keep_ratio)),
                  'max_new_tokens': args.max_new_tokens, 'llm_weights': args.llm_weights}
    for name, value in shorthands.items():
        if value is not None:
            out += ['-p', f'{name}:={value}']
    extra = [a for a in args.ros_args if a != '--']
    if extra[:1] == ['--ros-args']:
        extra = extra[1:]
    return out + extra


def run_node(args: argparse.Namespace) -> int:
    """Run ``drive-vlm node``: the node's own main with the flags as ROS arguments."""
    from ..node.main import main as node_main

    return node_main(['drive-vlm', *ros_arguments(args)])
