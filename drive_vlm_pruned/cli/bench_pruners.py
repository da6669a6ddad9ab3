"""``drive-vlm bench pruners``: its flags and their options (bench/pruners.py runs it)."""

from __future__ import annotations

import argparse

from .flags import keep_ratio_type, pruner_type

BENCH_PRUNERS_HELP = """\
Time token selection for each pruner on synthetic six-view tokens (default 6 x 729) at several
feature widths and keep ratios, on the CPU and on CUDA when available. Prints a markdown table of
median and interquartile spread in milliseconds; --json-out writes one record per cell.

example: drive-vlm bench pruners --dims 3584 --keep-ratios 0.1 --pruners tfps
"""


def add_bench_pruners_parser(bench_sub) -> argparse.ArgumentParser:
    """Add ``bench pruners``."""
    from ..pruning import pruner_names

    bp = bench_sub.add_parser(
        'pruners', help='selection time of every pruner', description=BENCH_PRUNERS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bp.add_argument('--pruners', nargs='+', type=pruner_type, metavar='NAME',
                    help=f'pruners to time (default: all single-stage ones of {pruner_names()})')
    bp.add_argument('--dims', nargs='+', type=int, default=[1152, 3584],
                    help='token widths D (default 1152 3584: SigLIP and a 7B LLM)')
    bp.add_argument('--keep-ratios', nargs='+', type=keep_ratio_type, default=[0.5, 0.25, 0.1],
                    help='fractions KEPT (default 0.5 0.25 0.1)')
    bp.add_argument('--views', type=int, default=6, help='camera views (default 6)')
    bp.add_argument('--tokens', type=int, default=729,
                    help='tokens per view, a square number (default 729 = 27 x 27)')
    bp.add_argument('--device', default='all',
                    help="'cpu', 'cuda', 'cuda:1' or 'all' (CPU plus CUDA if present; default)")
    bp.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16', 'float16'],
                    help='token dtype (default float32)')
    bp.add_argument('--similarity-dtype', default='auto', choices=['auto', 'float32', 'bfloat16'],
                    help="Gram-matrix precision of tfps/divprune/mvpruner-s1: 'auto' (bf16 on "
                         "CPUs with BF16, else the token dtype; default) or exact 'float32'")
    bp.add_argument('--warmup', type=int, default=2, help='untimed runs per cell (default 2)')
    bp.add_argument('--repeats', type=int, default=10, help='timed runs per cell (default 10)')
    bp.add_argument('--threads', type=int, default=0,
                    help='torch CPU threads (default: torch default, usually the core count)')
    bp.add_argument('--json-out', metavar='PATH', help='write one JSON record per cell here')
    bp.add_argument('--markdown-out', metavar='PATH', help='write the markdown table here')
    bp.set_defaults(run=run_bench_pruners)
    return bp


def run_bench_pruners(args: argparse.Namespace) -> int:
    """Run ``drive-vlm bench pruners``; return the exit status."""
    from ..bench.pruners import PrunersBenchOptions, run_pruners_bench

    return run_pruners_bench(PrunersBenchOptions(
        pruners=tuple(args.pruners or ()), dims=tuple(args.dims),
        keep_ratios=tuple(args.keep_ratios), views=args.views, tokens=args.tokens,
        device=args.device, dtype=args.dtype, similarity_dtype=args.similarity_dtype,
        warmup=args.warmup, repeats=args.repeats, threads=args.threads,
        json_out=args.json_out, markdown_out=args.markdown_out))
