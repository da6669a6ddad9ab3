"""``drive-vlm train reconpruner``: FastDriveVLA's ReconPruner for a model's frozen encoder."""

from __future__ import annotations

import argparse
from pathlib import Path
import platform
import shlex
import sys
import time

from .flags import positive_int

TRAIN_RECONPRUNER_HELP = """\
Train ReconPruner (FastDriveVLA) for a model: the model's vision encoder and projector stay
frozen; every training view is encoded once (cached in the run directory), then a scorer (one
bidirectional layer at the LLM width, a learnable query, S = Linear(V* ⊙ Q*)) is trained with the
adversarial foreground/background reconstruction: M = (S > 0) through a straight-through
estimator, a light MAE-style decoder rebuilds the foreground image from M ⊙ V and the background
from (1 - M) ⊙ V; loss per part 0.2 (1 - SSIM) + 0.8 MSE, total 0.5 fore + 0.5 back.

--data: a data set written by `drive-vlm data synth` (train/val splits, per-camera label masks),
or image + mask pairs: DIR/images/<path>.jpg with DIR/masks/<path>.png (nonzero = foreground;
DIR/val.txt lists held-out images, else every tenth pair). See docs/reconpruner.md.

Writes OUT (safetensors, a few MB), OUT's card (.md next to it) and a run directory (default
OUT without suffix + _run/: encoded-view cache, state.pt to --resume, history.json, loss.png).
Runs on the CPU, one GPU, or several with `accelerate launch -m drive_vlm_pruned.cli.main train
reconpruner ...`. Use the weights with --reconpruner-weights OUT (node: reconpruner_weights), or
save them as MODEL_DIR/reconpruner.safetensors, the model's default.

example: drive-vlm train reconpruner --model DIR --data data/drive \\
    --out DIR/reconpruner.safetensors
"""


def add_reconpruner_parser(jobs) -> argparse.ArgumentParser:
    """Add ``reconpruner`` to the ``train`` jobs."""
    p = jobs.add_parser('reconpruner',
                        help='train the ReconPruner scorer for a model (FastDriveVLA)',
                        description=TRAIN_RECONPRUNER_HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', required=True, metavar='DIR',
                   help='checkpoint directory (or cached id) whose encoder the scorer serves')
    p.add_argument('--data', required=True, metavar='DIR',
                   help='`drive-vlm data synth` data set, or images/ + masks/ pairs')
    p.add_argument('--out', required=True, metavar='W.safetensors', help='weights file to write')
    p.add_argument('--run-dir', metavar='DIR', help='run directory (default: OUT stem + _run)')
    p.add_argument('--resume', action='store_true', help='continue the run in the run directory')
    p.add_argument('--steps', type=positive_int, default=3000, help='optimizer steps (3000)')
    p.add_argument('--batch-size', type=positive_int, default=32, help='views per step (32)')
    p.add_argument('--lr', type=float, default=1e-3,
                   help='decoder peak learning rate; the scorer gets 0.1 of it (1e-3)')
    p.add_argument('--decoder-warmup', type=int, default=200,
                   help='steps that train the decoder alone on random masks (200)')
    p.add_argument('--patch-pixels', type=positive_int, default=8,
                   help='reconstructed pixels per token side (8: 14 x 14 tokens -> 112 px)')
    p.add_argument('--decoder-width', type=positive_int, default=128, help='decoder width (128)')
    p.add_argument('--decoder-layers', type=positive_int, default=2, help='decoder layers (2)')
    p.add_argument('--max-views', type=int, default=0,
                   help='use at most N training views (default: all)')
    p.add_argument('--no-background', action='store_true',
                   help='ablation: foreground loss only (the degenerate solution)')
    p.add_argument('--eval-every', type=positive_int, default=250,
                   help='steps between validations')
    p.add_argument('--save-every', type=positive_int, default=250, help='steps between states')
    p.add_argument('--seed', type=int, default=0, help='training seed (0)')
    p.add_argument('--max-minutes', type=float,
                   help='stop after this many minutes of training, saving first (resume later)')
    p.add_argument('--precision', default='auto', choices=['auto', 'no', 'bf16'],
                   help='auto (default): bf16 autocast on a GPU that has it, fp32 elsewhere')
    p.add_argument('--device', default='auto',
                   help='device of the frozen encoder while encoding: auto, cpu or cuda[:N]')
    p.add_argument('--cpu', action='store_true', help='train on the CPU even with a GPU')
    p.add_argument('--no-progress', action='store_true', help='no progress bars')
    return p


def run_train_reconpruner(args) -> int:
    """Entry point of ``drive-vlm train reconpruner``."""
    try:
        return _run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f'drive-vlm train reconpruner: {err}', file=sys.stderr)
        return 2


def _run(args) -> int:
    import torch

    from ..models.adapters import load_adapter
    from ..models.loading import LoadSpec, resolve_checkpoint
    from ..pruning.reconpruner import save_weights
    from ..training.recon_data import find_pairs, load_or_encode, token_grid
    from ..training.reconpruner import (
        ReconTrainConfig,
        scorer_quality,
        STATE_FILE,
        train_reconpruner,
    )

    started = time.monotonic()
    out = Path(args.out)
    if out.suffix != '.safetensors':
        raise ValueError(f'--out {out}: name the weights file *.safetensors')
    run_dir = Path(args.run_dir) if args.run_dir else out.with_name(out.stem + '_run')
    if (run_dir / STATE_FILE).is_file() and not args.resume:
        raise ValueError(f'{run_dir} holds a run: pass --resume to continue it, or a new '
                         '--run-dir (or delete it) to start over')
    model_dir = resolve_checkpoint(args.model)
    device = args.device
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() and not args.cpu else 'cpu'
    adapter = load_adapter(LoadSpec(str(model_dir), device=device, dtype='float32'))
    adapter.model.requires_grad_(False)  # frozen: the encoder and projector only encode
    grid = token_grid(adapter)
    size = grid * args.patch_pixels
    progress = not args.no_progress
    train_pairs = find_pairs(args.data, 'train')
    if args.max_views:
        step = max(1, len(train_pairs) // args.max_views)
        train_pairs = train_pairs[::step][:args.max_views]
    try:
        val_pairs = find_pairs(args.data, 'val')
    except ValueError as err:  # e.g. a data set without val.json: validate on nothing
        print(f'no validation views ({err})', file=sys.stderr)
        val_pairs = []
    if not train_pairs:
        raise ValueError(f'{args.data}: no training views')
    print(f'{len(train_pairs)} training and {len(val_pairs)} validation views; '
          f'{grid} x {grid} tokens of width {adapter.text_config.hidden_size}, rebuilt at '
          f'{size} px')
    train = load_or_encode(adapter, model_dir, train_pairs, size, run_dir / 'cache_train.pt',
                           progress)
    val = load_or_encode(adapter, model_dir, val_pairs[:512], size,
                         run_dir / 'cache_val.pt', progress) if val_pairs else None
    del adapter
    precision = args.precision
    if precision == 'auto':
        precision = 'bf16' if (torch.cuda.is_available() and not args.cpu
                               and torch.cuda.is_bf16_supported()) else 'no'
    config = ReconTrainConfig(
        steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        background=not args.no_background, decoder_warmup_steps=args.decoder_warmup,
        decoder={'patch_pixels': args.patch_pixels, 'width': args.decoder_width,
                 'layers': args.decoder_layers, 'heads': 4},
        eval_every=args.eval_every, save_every=args.save_every, mixed_precision=precision,
        cpu=args.cpu)
    max_seconds = args.max_minutes * 60 if args.max_minutes else None
    outcome = train_reconpruner(train, config, val, run_dir, resume=args.resume,
                                progress=progress, max_seconds=max_seconds)
    if outcome.stopped_by_time:
        print(f'stopped by --max-minutes at step {outcome.steps}; continue with --resume')
        return 0
    quality = scorer_quality(outcome.scorer, val if val is not None else train)
    meta = {'model': model_dir.name, 'grid': str(grid), 'steps': str(outcome.steps),
            'seed': str(args.seed), 'background_loss': str(not args.no_background),
            'val_foreground_auroc': f'{quality.auroc:.4f}'}
    save_weights(outcome.scorer, out, meta)
    card = write_card(out, args, config, outcome, quality, len(train), 0 if val is None
                      else len(val), time.monotonic() - started, model_dir, grid)
    split = 'validation' if val is not None else 'training'
    print(f'wrote {out} ({out.stat().st_size / 2**20:.2f} MiB) and {card}; {split} views: '
          f'foreground AUROC {quality.auroc:.3f}, share of positive scores '
          f'{quality.positive_share:.2f} (GT foreground {quality.foreground_share:.2f}), '
          f'foreground recall at keep 0.25 per view {quality.recall_at_quarter:.3f}; curves in '
          f'{run_dir / "loss.png"}')
    return 0


def command_line(args) -> str:
    """Return the full command that reruns this training (every option spelled out)."""
    parts = ['drive-vlm', 'train', 'reconpruner']
    for key, value in vars(args).items():
        if key in ('command', 'train_job', 'run') or value is None or value is False:
            continue
        flag = '--' + key.replace('_', '-')
        parts += [flag] if value is True else [flag, shlex.quote(str(value))]
    return ' '.join(parts)


def write_card(out: Path, args, config, outcome, quality, n_train: int, n_val: int,
               seconds: float, model_dir: Path, grid: int) -> Path:
    """Write the weights' card (command, seeds, data, time, hardware, figures) next to them."""
    import torch

    card = out.with_suffix('.md')
    command = command_line(args)
    device = (torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.cpu
              else f'CPU ({platform.processor() or platform.machine()}, '
                   f'{torch.get_num_threads()} threads)')
    lines = [
        f'# ReconPruner weights: {out.name}',
        '',
        f'FastDriveVLA ReconPruner scorer for `{model_dir.name}` (frozen encoder + projector, '
        f'{grid} x {grid} tokens per view, hidden size {outcome.scorer.hidden_size}). '
        'Trained with the adversarial foreground/background reconstruction of '
        'docs/reconpruner.md.',
        '',
        '| item | value |',
        '|---|---|',
        f'| command | `{command}` |',
        f'| data | `{args.data}`: {n_train} training views, {n_val} validation views |',
        f"| seed | {args.seed} (training); the data seeds are in the data set's own card |",
        f'| steps | {outcome.steps} x {config.batch_size} views, lr {config.lr} (scorer x '
        f'{config.scorer_lr_ratio}), decoder warm-up {config.decoder_warmup_steps} |',
        f'| background loss | {config.background} |',
        f'| hardware | {device}, precision {config.mixed_precision} |',
        f'| wall time | {seconds / 60:.1f} min in all (training {outcome.seconds / 60:.1f} min) |',
        f'| size | {sum(p.numel() for p in outcome.scorer.parameters()):,} parameters |',
        '',
        '## Figures on the validation views (one view at a time)',
        '',
        '| metric | value |',
        '|---|---|',
        f'| foreground AUROC of the scores | {quality.auroc:.3f} |',
        f'| share of scores > 0 (M = 1) | {quality.positive_share:.3f} |',
        f'| share of GT-foreground tokens | {quality.foreground_share:.3f} |',
        f'| foreground recall, top 25% tokens per view | {quality.recall_at_quarter:.3f} |',
        '',
        'Recall against the other pruners at each keep ratio (the six-view pipeline, test split): '
        '`drive-vlm demo-pruners --model MODEL --data DATA`.',
        '',
    ]
    card.write_text('\n'.join(lines))
    return card
