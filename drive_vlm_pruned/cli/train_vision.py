"""``drive-vlm train vision``: the vision stage (training/vision_stage.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
import sys

TRAIN_VISION_HELP = """\
Pretrain the SigLIP vision tower of a preset on the renderer's dense labels before any
language: per-patch semantic class and class presence (the label masks), distance band, and
the centres of the objects the count questions count. Views are the train split's scenes of
--data re-rendered (plus --extra-scenes more of the train range), cached under OUT/cache; the
val split's scenes are held out. OUT gets state.pt (--resume), history.json, report.json
(held-out patch accuracy, mIoU, band accuracy, and the presence and count accuracy of linear
probes beside the majority answer) and vision_tower/, which `drive-vlm train vlm --vision-init
OUT/vision_tower [--freeze-vision]` starts from.

example: drive-vlm train vision --data data/drive --out runs/vision --steps 1500
"""


def add_vision_parser(jobs) -> argparse.ArgumentParser:
    from ..training.presets import PRESETS

    p = jobs.add_parser('vision', help='pretrain the vision tower on dense labels',
                        description=TRAIN_VISION_HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', required=True, metavar='DIR',
                   help='a `drive-vlm data synth` directory (train.meta.json, val.meta.json)')
    p.add_argument('--out', required=True, metavar='DIR', help='run directory to write')
    p.add_argument('--preset', default='nano', choices=sorted(PRESETS),
                   help='the VLM preset whose tower is trained (default nano)')
    p.add_argument('--extra-scenes', type=int, default=0, metavar='N',
                   help='render N more train-range scenes than the data set has (default 0)')
    p.add_argument('--steps', type=int, default=1500)
    p.add_argument('--batch', type=int, default=48, help='views per step (default 48)')
    p.add_argument('--lr', type=float, default=1e-3)
    p.add_argument('--eval-every', type=int, default=250)
    p.add_argument('--save-every', type=int, default=250)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--threads', type=int, default=0, help='torch CPU threads (0: default)')
    p.add_argument('--precision', default='auto', choices=['auto', 'no', 'bf16'],
                   help='auto (default): bfloat16 autocast where the CPU has AMX or AVX-512 BF16, '
                        'fp32 elsewhere (an emulated bf16 is ~16x slower); no: fp32')
    p.add_argument('--bf16', action='store_const', const='bf16', dest='precision',
                   help='the same as --precision bf16')
    p.add_argument('--max-minutes', type=float, help='stop (saving) after this many minutes')
    p.add_argument('--val-frames', type=int, help='held-out key frames (default: all of val)')
    p.add_argument('--distill-imagenet', type=float, default=0.0, metavar='W',
                   help="also predict EfficientNet-Lite0's ImageNet features of each patch, with "
                        'loss weight W (default 0: off; needs the [distill] extra, training only)')
    p.add_argument('--resume', action='store_true', help='continue the run in --out')
    return p


def run_train_vision(args: argparse.Namespace) -> int:
    from ..training.cpu_info import cpu_precision
    from ..training.vision_stage import train_vision, VisionConfig

    config = VisionConfig(Path(args.data), Path(args.out), args.preset, args.extra_scenes,
                          args.steps, args.batch, args.lr, eval_every=args.eval_every,
                          save_every=args.save_every, seed=args.seed, threads=args.threads,
                          resume=args.resume, max_minutes=args.max_minutes,
                          bf16=cpu_precision(args.precision) == 'bf16',
                          val_limit=args.val_frames, distill_imagenet=args.distill_imagenet)
    try:
        result = train_vision(config, log=lambda text: print(text, file=sys.stderr))
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f'drive-vlm train vision: {err}', file=sys.stderr)
        return 2
    for key, value in sorted(result.report.items()):
        print(f'{key}: {value:.4f}' if isinstance(value, float) else f'{key}: {value}')
    return 0
