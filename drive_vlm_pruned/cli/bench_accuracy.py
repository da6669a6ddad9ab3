"""``drive-vlm bench accuracy``: its flags and their options (bench/accuracy.py runs it)."""

from __future__ import annotations

import argparse
import sys

from .flags import add_load_arguments, keep_ratio_type, load_spec_from_args, pruner_type

BENCH_ACCURACY_HELP = """\
Accuracy kept vs prefill speed-up: every pruner x keep ratio x prune layer through the eval loop,
one model load. Allocation variants: the searched view rates (--view-weights-file, from
`search view-rates`) and MVPruner stage 1's per-frame diversity budgets, both with T-FPS. Per
cell: DriveLM metrics, per-family scores, planning L2 / collision, closed-form accuracy and its
retention (cell / unpruned on the same QA), the measured prefill speed-up (prune + prefill; the
vision encoder is not included) next to the analytic FLOPs share, and the foreground recall of
the kept tokens. References: unpruned, blind (images black), majority answer per family.

Paired figures (retention, differences between pruners, small objects, trajectories) with 95%
intervals from a bootstrap over key frames; mean ± std over --seeds data seeds: disjoint scene
subsets of the split, or one data set per seed when --data names several. Data-parallel:
torchrun --nproc_per_node N -m drive_vlm_pruned.cli.main bench accuracy ...
Writes OUT/accuracy.json, OUT/accuracy.md, two PNG plots and
OUT/cells.jsonl; an interrupted sweep resumes from it (rerun the same command).

example: drive-vlm bench accuracy --model DIR --data data/ --out bench-out/accuracy
"""


def add_bench_accuracy_parser(bench_sub) -> None:
    """Add ``bench accuracy``."""
    from ..bench.accuracy_defaults import (
        DEFAULT_KEEP_RATIOS,
        DEFAULT_PRUNE_LAYERS,
        DEFAULT_PRUNERS,
        DEFAULT_QA_PER_CELL,
        DEFAULT_SEEDS,
    )

    ba = bench_sub.add_parser('accuracy', help='accuracy kept vs prefill speed-up per pruner',
                              description=BENCH_ACCURACY_HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    ba.add_argument('--model', help='checkpoint directory (default: the embedded model)')
    ba.add_argument('--data', required=True, nargs='+', metavar='DIR_OR_JSON',
                    help='a data directory or DriveLM JSON; several: one per data seed')
    ba.add_argument('--split', default='test', choices=['train', 'val', 'test'],
                    help='which split of a data directory (default test)')
    ba.add_argument('--image-root', metavar='DIR', help='nuScenes folder (real DriveLM files)')
    ba.add_argument('--pruners', nargs='+', type=pruner_type, default=list(DEFAULT_PRUNERS),
                    metavar='NAME', help=f'default {" ".join(DEFAULT_PRUNERS)} (a pruner that '
                                         'cannot run, e.g. without weights, is skipped)')
    ba.add_argument('--keep-ratios', nargs='+', type=keep_ratio_type,
                    default=list(DEFAULT_KEEP_RATIOS),
                    help=f'fractions KEPT (default {" ".join(map(str, DEFAULT_KEEP_RATIOS))})')
    ba.add_argument('--prune-layers', nargs='+', type=int, default=list(DEFAULT_PRUNE_LAYERS),
                    help='0: after the projector; K: before LLM layer K; every pruner at each '
                         '(default: each pruner at the layer it was published at, random at '
                         'all of them: tfps, divprune, reconpruner at 0; fastv, dart, mvpruner '
                         'at 2)')
    ba.add_argument('--seeds', type=int, default=DEFAULT_SEEDS,
                    help=f'data seeds: disjoint scene subsets (default {DEFAULT_SEEDS})')
    ba.add_argument('--qa-per-cell', type=int, default=DEFAULT_QA_PER_CELL,
                    help='QA per cell and seed, whole frames (default 0: all of them; the '
                         'default sweep on the nano test split runs in < 60 min on 2 cores)')
    ba.add_argument('--view-weights-file', metavar='YAML',
                    help='searched view rates (from `search view-rates`) as an allocation')
    ba.add_argument('--variant-layers', nargs='*', type=int, default=None, metavar='K',
                    help='prune layers of the searched/diversity variants (default: all of '
                         '--prune-layers; none: leave them out)')
    ba.add_argument('--report-only', action='store_true',
                    help='rebuild the tables and plots from every cell in OUT/cells.jsonl '
                         '(e.g. of several runs with other --pruners); runs nothing')
    ba.add_argument('--no-diversity', action='store_true',
                    help='leave out the diversity-allocation variant')
    ba.add_argument('--no-blind', action='store_true', help='leave out the blind reference')
    ba.add_argument('--batch-size', type=int, default=8, help='QA per pipeline call (8)')
    ba.add_argument('--max-new-tokens', type=int, default=64, help='default 64, as eval')
    ba.add_argument('--no-waypoint-grammar', dest='waypoint_grammar', action='store_false',
                    help='decode PLANNING answers freely; by default they are decoded under the '
                         'waypoint grammar, as eval does (pipeline/waypoint_grammar.py)')
    ba.add_argument('--tokenizer', default='auto', choices=['auto', 'ptb', 'simple'])
    ba.add_argument('--out', default='bench-out/accuracy', metavar='DIR',
                    help='output directory (default bench-out/accuracy)')
    ba.add_argument('--overwrite', action='store_true', help='start again instead of resuming')
    ba.add_argument('--threads', type=int, default=0, help='torch CPU threads (default: torch)')
    ba.add_argument('--no-progress', action='store_true', help='no progress bar')
    add_load_arguments(ba)
    ba.set_defaults(run=run_bench_accuracy)


def run_bench_accuracy(args: argparse.Namespace) -> int:
    """Run ``drive-vlm bench accuracy``; return the exit status."""
    from ..bench.accuracy import AccuracyOptions, run_accuracy_bench

    options = AccuracyOptions(
        data=tuple(args.data), load=load_spec_from_args(args, args.model or ''),
        split=args.split, image_root=args.image_root, pruners=tuple(args.pruners),
        keep_ratios=tuple(args.keep_ratios), prune_layers=tuple(args.prune_layers),
        seeds=args.seeds, qa_per_cell=args.qa_per_cell,
        view_weights_file=args.view_weights_file,
        variant_layers=None if args.variant_layers is None else tuple(args.variant_layers),
        report_only=args.report_only, diversity=not args.no_diversity, blind=not args.no_blind,
        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
        waypoint_grammar=args.waypoint_grammar, tokenizer=args.tokenizer,
        out=args.out, overwrite=args.overwrite, threads=args.threads,
        progress=not args.no_progress)
    try:
        return run_accuracy_bench(options)
    except ValueError as err:
        print(f'drive-vlm bench accuracy: {err}', file=sys.stderr)
        return 2
