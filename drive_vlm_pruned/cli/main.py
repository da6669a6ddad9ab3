"""
``drive-vlm``: the one command-line front door, with a subcommand per job.

Each command's module adds its parser and, with ``set_defaults(run=...)``, the function that
turns the parsed flags into its options and runs it; ``main`` only parses and calls it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import sys

from .bag import add_bag_parser
from .bench import add_bench_parser
from .convert import add_convert_parser
from .data import add_data_parser
from .demo import add_demo_parser
from .demo_pruners import add_demo_pruners_parser
from .eval import add_eval_parser
from .make_tiny_model import add_make_tiny_model_parser
from .node import add_node_parser
from .run import add_run_parser
from .search import add_search_parser
from .train import add_train_parser
from .vision import add_build_engine_parser, add_export_vision_parser

DESCRIPTION = """\
drive-vlm: a multi-view driving VLM whose visual tokens are pruned before or inside the LLM.

Six surround cameras give ~4,400 visual tokens; keeping a well-chosen 10-25% of them keeps most
of the accuracy at a fraction of the prefill cost. Run a subcommand with --help for details.
"""

# The subcommands in the order --help lists them.
COMMANDS = (
    add_demo_parser,             # demo
    add_demo_pruners_parser,     # demo-pruners
    add_make_tiny_model_parser,  # make-tiny-model
    add_export_vision_parser,    # export-vision
    add_build_engine_parser,     # build-engine
    add_node_parser,             # node
    add_run_parser,              # run
    add_eval_parser,             # eval
    add_bench_parser,            # bench pruners|prefill|accuracy|latency|llm-weights|soak|...
    add_bag_parser,              # bag synth|from-nuscenes|play|repair|snapshot
    add_convert_parser,          # convert drivemm|drivelmm-o1|impromptu-vla
    add_train_parser,            # train vlm|reconpruner|scale-report|vision
    add_data_parser,             # data synth
    add_search_parser,           # search view-rates|planted
)


def build_parser() -> argparse.ArgumentParser:
    """Return the ``drive-vlm`` parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog='drive-vlm', description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line) and run the command; return its exit status."""
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == '__main__':
    sys.exit(main())
