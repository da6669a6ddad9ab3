"""``drive-vlm bench llm-weights``: its flags and their options (bench/llm_weights.py runs it)."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
import sys

from .flags import add_llm_weights_argument, keep_ratio_type

BENCH_LLM_WEIGHTS_HELP = """\
Accuracy kept by each --llm-weights setting against native weights: every setting answers the
same QA of one split at each keep ratio, and the closed-form accuracy and the trajectory L2 at 3 s
are compared item by item, with 95% key-frame bootstrap intervals. A setting without a kernel on
the device is reported with the reason, not run.

example: drive-vlm bench llm-weights --data data/ --split test --llm-weights int8 --out bench-out/q
"""


def add_bench_llm_weights_parser(bench_sub) -> None:
    """Add ``bench llm-weights``."""
    bw = bench_sub.add_parser('llm-weights', help='accuracy kept by quantized LLM weights',
                              description=BENCH_LLM_WEIGHTS_HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    bw.add_argument('--data', required=True, metavar='DIR_OR_JSON', help='data directory or JSON')
    bw.add_argument('--split', default='test', choices=['train', 'val', 'test'])
    bw.add_argument('--model', default='',
                    help='checkpoint directory (default: the embedded model)')
    add_llm_weights_argument(bw, several=True)
    bw.set_defaults(llm_weights=['int8'])
    bw.add_argument('--keep-ratios', nargs='+', type=keep_ratio_type, default=[1.0, 0.1],
                    help='fractions KEPT (default 1.0 0.1)')
    bw.add_argument('--pruner', default='tfps', help='pruner for keep < 1 (default tfps)')
    bw.add_argument('--device', default='cpu', help="'cpu' or 'cuda[:N]' (default cpu)")
    bw.add_argument('--dtype', default='auto', choices=['auto', 'float32', 'bfloat16', 'float16'])
    bw.add_argument('--batch-size', type=int, default=8, help='QA per pipeline call (8)')
    bw.add_argument('--max-new-tokens', type=int, default=64, help='default 64, as eval')
    bw.add_argument('--threads', type=int, default=0, help='torch CPU threads (default: torch)')
    bw.add_argument('--out', metavar='DIR', help='write llm_weights.json and .md here')
    bw.add_argument('--no-progress', action='store_true', help='no progress bars')
    bw.set_defaults(run=run_bench_llm_weights)


def run_bench_llm_weights(args: argparse.Namespace) -> int:
    """Run ``drive-vlm bench llm-weights``; return the exit status."""
    import torch

    from ..bench.llm_weights import (
        goal_lines,
        markdown,
        run_bench,
        WeightsBenchOptions,
        write_report,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    options = WeightsBenchOptions(
        data=args.data, split=args.split, model=args.model,
        settings=tuple(s for s in args.llm_weights if s != 'native'),
        keep_ratios=tuple(args.keep_ratios), pruner=args.pruner, device=args.device,
        dtype=args.dtype, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
        progress=not args.no_progress)
    try:
        rows = run_bench(options, log=lambda m: print(m, file=sys.stderr))
    except (ValueError, FileNotFoundError) as err:
        print(f'drive-vlm bench llm-weights: {err}', file=sys.stderr)
        return 2
    print(markdown(rows))
    for line in goal_lines(rows):
        print(f'- {line}')
    if args.out:
        header = {'options': asdict(options), 'threads': torch.get_num_threads()}
        write_report(rows, Path(args.out), header)
        print(f'wrote {args.out}/llm_weights.json, llm_weights.md')
    return 0
