"""
The pruner demo: which tokens each pruner keeps on a synthetic six-view scene, and how fast.

Each view is a 27 x 27 patch grid (729 tokens, as SigLIP-so400m at 384 px) of sky, road and a few
planted objects. A good pruner at keep 0.1 spends few tokens on the redundant sky and road and
still touches every object; "fg recall" is the share of object tokens it keeps.

With ``--model`` and ``--data`` it also measures foreground recall on real frames: every pruner
at each keep ratio through the pipeline, against the GT masks of a ``drive-vlm data synth`` data
set (``eval.foreground_recall.foreground_recall_table``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
import sys
import time

import torch

from .flags import keep_ratio_type
from ..pruning import load_view_weights, make_pruner, prune, Stage, WeightedAllocator
from ..pruning.foreground import foreground_recall
from ..pruning.synthetic import ROAD, SKY, synthetic_layer_state, synthetic_views, SyntheticScene

DEMO_PRUNERS = ('tfps', 'divprune', 'mvpruner-s1', 'fastv', 'dart', 'mvpruner-s2', 'stride',
                'random')
RECALL_PRUNERS = ('reconpruner', 'tfps', 'divprune', 'mvpruner-s1', 'fastv', 'dart', 'stride',
                  'random')
MAP_PRUNERS = ('tfps', 'divprune', 'fastv', 'random')


@dataclass(frozen=True)
class DemoRow:
    pruner: str
    stage: str
    kept_per_view: list[int]
    objects_hit: int
    objects_total: int
    background_share: float
    ms: float
    fg_recall: float = float('nan')


def coverage(scene: SyntheticScene, kept: list) -> tuple[int, int, float]:
    """(objects with at least one kept token, objects in all views, share of kept on sky/road)."""
    hit = total = background = count = 0
    for v, idx in enumerate(kept):
        labels = scene.labels[v]
        objects = set(labels[labels > ROAD].tolist())
        kept_labels = labels[idx.cpu()]
        total += len(objects)
        hit += len(objects & set(kept_labels.tolist()))
        background += int((kept_labels <= ROAD).sum())
        count += idx.numel()
    return hit, total, background / max(count, 1)


def ascii_map(scene: SyntheticScene, view: int, idx: torch.Tensor) -> list[str]:
    """Rows of the view's grid: '.' sky, '-' road, 'o' object; kept tokens upper-case/#."""
    kept = set(idx.tolist())
    chars = []
    for i, lab in enumerate(scene.labels[view].tolist()):
        base = '.' if lab == SKY else '-' if lab == ROAD else 'o'
        chars.append(('#' if base != 'o' else 'O') if i in kept else base)
    g = scene.grid
    return [''.join(chars[r * g:(r + 1) * g]) for r in range(g)]


DEMO_PRUNERS_HELP = """\
Show what each pruner keeps on a synthetic six-view scene (6 x 729 tokens): tokens kept per
camera, how many planted objects still have a token, the share spent on sky/road, the time per
call, and ASCII maps of the front camera. Needs no model and no ROS.
"""


def add_demo_pruners_parser(sub) -> None:
    """Add ``demo-pruners``."""
    demo = sub.add_parser(
        'demo-pruners', help='show which tokens each pruner keeps (synthetic tokens, no model)',
        description=DEMO_PRUNERS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument('--keep-ratio', type=keep_ratio_type, default=0.1,
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
    demo.add_argument('--keep-ratios', nargs='+', type=keep_ratio_type, default=[0.5, 0.25, 0.1],
                      help='fractions KEPT for the recall table (default 0.5 0.25 0.1)')
    demo.add_argument('--device', default='cpu', help="'cpu' or 'cuda[:N]' (default cpu)")
    demo.set_defaults(run=run_demo_pruners_command)


def run_demo_pruners_command(args: argparse.Namespace) -> int:
    """Run ``drive-vlm demo-pruners``; return the exit status."""
    return run_pruner_demo(args.keep_ratio, args.dim, args.seed, args.view_weights,
                           args.reconpruner_weights, args.model, args.data, args.split,
                           args.frames, tuple(args.keep_ratios), args.device)


def run_pruner_demo(keep_ratio: float = 0.1, dim: int = 1152, seed: int = 0,
                    weights_file: str | None = None, reconpruner_weights: str = '',
                    model: str | None = None, data: str | None = None, split: str = 'test',
                    frames: int = 8, keep_ratios: tuple[float, ...] = (0.5, 0.25, 0.1),
                    device: str = 'cpu') -> int:
    """Print per-pruner kept tokens, object coverage and time; then ASCII maps of CAM_FRONT."""
    if model or data:
        if not (model and data):
            print('drive-vlm demo-pruners: --model and --data go together (foreground recall '
                  'on real frames)', file=sys.stderr)
            return 2
        return run_recall(model, data, split, frames, keep_ratios, reconpruner_weights, device)
    torch.manual_seed(seed)
    scene = synthetic_views(dim=dim, seed=seed)
    layer = synthetic_layer_state(scene.tokens, seed=seed)
    print(f'Synthetic scene: 6 views x {scene.tokens.view_sizes()[0]} tokens, D={dim}, '
          f'keep_ratio={keep_ratio} ({round(keep_ratio * 6 * 729)} of {6 * 729} tokens).')
    print('In-LLM pruners (fastv, dart, mvpruner-s2) score a synthetic layer-K state here; in the '
          'pipeline they read the real LLM layer.\n')
    names = scene.tokens.names
    header = 'kept per view (' + ', '.join(n[4:] for n in names) + ')'
    print(f'{"pruner":<12} {"stage":<8} {header:<58} {"objects":>8} {"fg recall":>9} '
          f'{"sky/road":>9} {"ms":>8}')
    kept_by_name = {}
    names = DEMO_PRUNERS + (('reconpruner',) if reconpruner_weights else ())
    for name in names:
        try:
            row, kept = _run_one(name, scene, layer, keep_ratio, reconpruner_weights)
        except ValueError as err:  # e.g. ReconPruner weights of another width than --dim
            print(f'{name:<12} skipped: {err}')
            continue
        kept_by_name[name] = kept
        print(f'{row.pruner:<12} {row.stage:<8} {str(row.kept_per_view):<58} '
              f'{row.objects_hit:>3}/{row.objects_total:<4} {row.fg_recall:>9.0%} '
              f'{row.background_share:>8.0%} {row.ms:>8.1f}')
    if not reconpruner_weights:
        print('reconpruner  learned: pass --reconpruner-weights W (of width --dim), or --model '
              'and --data for foreground recall on real frames')
    if weights_file:
        alloc = WeightedAllocator(load_view_weights(weights_file))
        kept = prune(make_pruner('tfps'), scene.tokens, keep_ratio, allocator=alloc)
        print(f'\ntfps with view weights from {weights_file}: kept per view '
              f'{kept.counts()[0]} (front views keep more)')
    print('\nCAM_FRONT, kept tokens in capitals ("." sky, "-" road, "o" object; "#"/"O" kept):')
    print('   '.join(f'{n:<{scene.grid}}' for n in MAP_PRUNERS))
    maps = [ascii_map(scene, 0, kept_by_name[n][0]) for n in MAP_PRUNERS]
    for lines in zip(*maps):
        print('   '.join(lines))
    return 0


def _run_one(name: str, scene: SyntheticScene, layer, keep_ratio: float, weights: str = ''):
    pruner = make_pruner(name, weights=weights) if name == 'reconpruner' else make_pruner(name)
    state = layer if pruner.stage is Stage.IN_LLM else None
    prune(pruner, scene.tokens, keep_ratio, layer=state, seed=0)  # warm-up
    t0 = time.perf_counter()
    kept = prune(pruner, scene.tokens, keep_ratio, layer=state, seed=0)
    ms = (time.perf_counter() - t0) * 1000
    hit, total, bg = coverage(scene, kept.indices[0])
    objects = [labels > ROAD for labels in scene.labels]
    recall = foreground_recall(kept.indices[0], objects).value
    row = DemoRow(name, pruner.stage.value, kept.counts()[0], hit, total, bg, ms, recall)
    return row, kept.indices[0]


def run_recall(model: str, data: str, split: str, frames: int,
               keep_ratios: tuple[float, ...], reconpruner_weights: str = '',
               device: str = 'cpu') -> int:
    """Print foreground recall of every pruner at each keep ratio on real frames."""
    from ..data.drivelm import load_drivelm
    from ..eval.foreground_recall import foreground_recall_table, recall_table
    from ..models.adapters import load_adapter
    from ..models.loading import LoadSpec
    from ..pipeline.pipeline import Pipeline

    try:
        key_frames = load_drivelm(data, split=split)[:frames]
        pipeline = Pipeline(load_adapter(LoadSpec(model, device=device)))
        pruners = list(RECALL_PRUNERS)
        try:
            pipeline.reconpruner_weights([_settings('reconpruner', reconpruner_weights)])
        except ValueError as err:
            print(f'reconpruner skipped: {err}', file=sys.stderr)
            pruners.remove('reconpruner')
        cells = foreground_recall_table(pipeline, key_frames, pruners, keep_ratios,
                                        reconpruner_weights)
    except ValueError as err:
        print(f'drive-vlm demo-pruners: {err}', file=sys.stderr)
        return 2
    fg = cells[0].total / max(1, cells[0].frames)
    print(f'\nForeground recall on {len(key_frames)} {split} frames of {data} '
          f'(GT-foreground patches kept / all; {fg:.0f} foreground patches per frame):')
    print(recall_table(cells))
    return 0


def _settings(pruner: str, weights: str):
    from ..pipeline.pipeline import RuntimeSettings

    return RuntimeSettings(pruner=pruner, reconpruner_weights=weights)
