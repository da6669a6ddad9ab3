"""
``drive-vlm train``: training jobs, one sub-subcommand each (``vlm`` first).

Each job adds itself with an ``add_<job>_parser(train_sub)`` function and one branch in
``run_train``; the heavy imports happen only when the job runs.
"""

from __future__ import annotations

import argparse
import sys

from .flags import positive_int

TRAIN_VLM_HELP = """\
Train the six-view LLaVA-OneVision (SigLIP tower + projector + Qwen2 LM, 196 visual tokens per
view at the nano size) on a DriveLM-format data set written by `drive-vlm data synth`: its
train split to learn, its val split to evaluate while training. All QA of a key frame share one
sequence after its six views, each turn seeing exactly the prompt the pipeline feeds at
inference. Runs on the CPU, one GPU, or several GPUs with `accelerate launch -m
drive_vlm_pruned.cli.main train vlm ...` (or torchrun), in bf16 where a GPU has it.

Two stages, after the vision stage (`drive-vlm train vision`): the language stage (--preset
nano-text, the default) trains the LLM on the QA text alone, from scratch with its own BPE
tokenizer; the VLM stage (--preset nano) starts from it (--init-from TEXT/final) on the vision
stage's tower (--vision-init VISION/vision_tower --freeze-vision) and learns the QA with the
views (the model card, drive_vlm_pruned/checkpoints/drive-vlm-nano/README.md).

OUT gets tokenizer/, cache/ (pre-rendered views), checkpoints/step-N (resumable),
history.json, curves.png and final/ (the checkpoint; float16 safetensors).

examples:
  drive-vlm train vlm --data data/drive --out runs/text --preset nano-text
  drive-vlm train vlm --data data/drive --out runs/vlm --preset nano --init-from runs/text/final \
      --vision-init runs/vision/vision_tower --freeze-vision
"""


def add_train_parser(sub) -> argparse.ArgumentParser:
    """Add ``train`` and its jobs to the top-level subcommands."""
    train = sub.add_parser('train', help='train the embedded VLM (and, later, learned pruners)',
                           description='Training jobs. Each writes a resumable run directory.')
    train.set_defaults(run=run_train)
    jobs = train.add_subparsers(dest='train_job', metavar='JOB', required=True)
    add_vlm_parser(jobs)
    from .train_reconpruner import add_reconpruner_parser

    add_reconpruner_parser(jobs)
    add_scale_report_parser(jobs)
    from .train_vision import add_vision_parser

    add_vision_parser(jobs)
    return train


def add_scale_report_parser(jobs) -> argparse.ArgumentParser:
    report = jobs.add_parser(
        'scale-report', help='print the token norms through a LLaVA-OneVision checkpoint',
        description='Mean token norms through a trained LLaVA-OneVision checkpoint on a few '
                    'frames of a data set: the vision tower layer by layer, visual and text '
                    'tokens at the LLM input, and after each decoder layer, with the update a '
                    'layer adds to a visual token. Visual tokens far larger than the text '
                    'tokens cannot be changed by the LLM layers (training/visual_scale.py); '
                    'the nano preset rescales the projector and caps their norm.')
    report.add_argument('--model', default='', help='checkpoint directory (default: embedded)')
    report.add_argument('--data', required=True, metavar='DIR',
                        help='a `drive-vlm data synth` directory')
    report.add_argument('--split', default='val', choices=['train', 'val', 'test'])
    report.add_argument('--frames', type=positive_int, default=4, help='key frames (default 4)')
    return report


def add_vlm_parser(jobs) -> argparse.ArgumentParser:
    from ..training.presets import PRESETS

    vlm = jobs.add_parser('vlm', help='train the driving VLM from scratch on DriveLM-format data',
                          description=TRAIN_VLM_HELP,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    vlm.add_argument('--data', required=True, metavar='DIR',
                     help='data directory holding train.json and val.json (drive-vlm data synth)')
    vlm.add_argument('--out', required=True, metavar='DIR', help='run directory to write')
    vlm.add_argument('--preset', default='nano-text', choices=sorted(PRESETS),
                     help='model size and recipe: nano-text (default, the language stage), '
                          'then nano (the VLM stage, with --init-from)')
    vlm.add_argument('--resume', action='store_true',
                     help='continue the run in --out from its newest checkpoint')
    vlm.add_argument('--steps', type=positive_int, help='optimizer steps (default: the preset)')
    vlm.add_argument('--frames-per-step', type=positive_int,
                     help='key frames per step and process (default: the preset)')
    vlm.add_argument('--lr', type=float, help='peak learning rate (default: the preset)')
    vlm.add_argument('--eval-every', type=positive_int, help='steps between validation passes')
    vlm.add_argument('--eval-frames', type=positive_int, help='validation frames per pass')
    vlm.add_argument('--save-every', type=positive_int, help='steps between checkpoints')
    vlm.add_argument('--seed', type=int, help='training seed (default: the preset, 0)')
    vlm.add_argument('--max-minutes', type=float,
                     help='stop after this many minutes of training, saving first (resume later)')
    vlm.add_argument('--stop-at', type=positive_int, metavar='STEP',
                     help='stop after this step, saving first; the schedule still spans --steps, '
                          'so --resume continues the same run (e.g. to check the first steps of '
                          'a rerun against the history.json of a finished run)')
    vlm.add_argument('--precision', default='auto', choices=['auto', 'no', 'bf16'],
                     help='auto (default): bf16 autocast on a GPU that has it or a CPU with AMX '
                          'or AVX-512 BF16, fp32 elsewhere (an emulated bf16 is ~16x slower)')
    vlm.add_argument('--cpu', action='store_true', help='train on the CPU even with a GPU')
    vlm.add_argument('--threads', type=int, default=0,
                     help='torch CPU threads (default: torch default). On cores shared with '
                          'other jobs 1 thread was 2-3x faster than 2 (measured)')
    vlm.add_argument('--init-from', metavar='DIR',
                     help='start from this trained checkpoint (weights and tokenizer) instead of '
                          'from scratch; the nano preset needs it (the language stage)')
    vlm.add_argument('--route-loss', type=float, metavar='W',
                     help='weight of the view-routing loss: a question that names a camera '
                          'attends to its tokens (default: the preset; nano 1.0)')
    vlm.add_argument('--object-loss', type=float, metavar='W',
                     help='weight of the object-routing loss: a question that names a class and '
                          'a camera attends to the tokens of that class there (default: the '
                          'preset; nano 1.0)')
    vlm.add_argument('--object-count', action='store_true', default=None,
                     help='count-aware object routing: the object head leaves the first prompt '
                          'token 1/(n+1) of its mass for n objects, so it carries the count '
                          '(default: the preset)')
    vlm.add_argument('--drill-exists', type=int, metavar='N',
                     help='extra exists questions per train frame from its gt.view_counts '
                          '(default: the preset; nano 12)')
    vlm.add_argument('--drill-count', type=int, metavar='N',
                     help='extra count questions per train frame (default: the preset; '
                          'nano 8)')
    vlm.add_argument('--drill-plan', type=int, metavar='N',
                     help='extra planning questions per train frame, on other train-split ego '
                          'motions (data/plan_drill.py; default: the preset; nano 2)')
    vlm.add_argument('--drill-mc', type=int, metavar='N',
                     help='extra behavior multiple-choice questions per train frame, on other '
                          'train-split ego motions with their own options (data/plan_drill.py; '
                          'default: the preset)')
    vlm.add_argument('--family-weight', type=_family_weight, action='append',
                     metavar='FAMILY=W',
                     help="that question family's turns weigh W turns each in the answer loss "
                          '(repeatable; e.g. planning_trajectory=8; default: the preset, every '
                          'turn 1)')
    vlm.add_argument('--vision-init', metavar='DIR',
                     help='start the vision tower from a vision-stage tower (drive-vlm train '
                          'vision: OUT/vision_tower)')
    vlm.add_argument('--freeze-vision', action='store_true',
                     help='keep the vision tower fixed (train the projector and the LLM only)')
    vlm.add_argument('--storage', default='float16', choices=['float16', 'bfloat16', 'float32'],
                     help='dtype of the final safetensors (default float16)')
    return vlm


def _family_weight(text: str) -> tuple[str, float]:
    """Parse ``FAMILY=W`` (W a positive number) for --family-weight."""
    family, sep, value = text.partition('=')
    try:
        weight = float(value)
    except ValueError:
        weight = -1.0
    if not sep or not family or weight <= 0:
        raise argparse.ArgumentTypeError(f'{text!r}: give FAMILY=W with W > 0, e.g. '
                                         'planning_trajectory=8')
    return family, weight


def run_train(args: argparse.Namespace) -> int:
    """Run the ``train`` job in ``args``; return the exit status."""
    if args.train_job == 'vlm':
        return _run_vlm(args)
    if args.train_job == 'reconpruner':
        from .train_reconpruner import run_train_reconpruner

        return run_train_reconpruner(args)
    if args.train_job == 'scale-report':
        return _run_scale_report(args)
    if args.train_job == 'vision':
        from .train_vision import run_train_vision

        return run_train_vision(args)
    return 2


def _run_scale_report(args) -> int:
    from pathlib import Path

    from ..cameras import NUSCENES_CAMERAS
    from ..data.drivelm import DriveLMError, load_camera_set
    from ..models.adapters import load_adapter
    from ..models.loading import LoadSpec
    from ..training.dataset import load_frames
    from ..training.samples import prefix_prompt
    from ..training.visual_scale import scale_report

    try:
        adapter = load_adapter(LoadSpec(args.model, dtype='float32'))
        if adapter.family != 'llava-onevision':
            raise ValueError(f'scale-report reads a LLaVA-OneVision checkpoint; '
                             f'{args.model or "the embedded model"} is {adapter.family}')
        frames = load_frames(Path(args.data), args.split)[:args.frames]
        pixels = adapter.preprocess([img for f in frames for img in load_camera_set(f).images])
    except (ValueError, DriveLMError, OSError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    report = scale_report(adapter, pixels, prefix_prompt(adapter, NUSCENES_CAMERAS), len(frames))
    print(f'{len(frames)} {args.split} frames, mean L2 norm per token:')
    for line in report.lines():
        print(f'  {line}')
    return 0


def _run_vlm(args) -> int:
    from pathlib import Path

    from ..data.drivelm import DriveLMError
    from ..training.vlm import train_vlm, VLMTrainConfig

    config = VLMTrainConfig(
        data=Path(args.data), out=Path(args.out), preset=args.preset, resume=args.resume,
        steps=args.steps, frames_per_step=args.frames_per_step, lr=args.lr,
        eval_every=args.eval_every, eval_frames=args.eval_frames, save_every=args.save_every,
        seed=args.seed, max_minutes=args.max_minutes, stop_at=args.stop_at,
        precision=args.precision, cpu=args.cpu,
        storage=args.storage, threads=args.threads,
        init_from=Path(args.init_from) if args.init_from else None,
        route_loss=args.route_loss, object_loss=args.object_loss, object_count=args.object_count,
        vision_init=Path(args.vision_init) if args.vision_init else None,
        freeze_vision=args.freeze_vision, drill_exists=args.drill_exists,
        drill_count=args.drill_count, drill_plan=args.drill_plan, drill_mc=args.drill_mc,
        family_weights=tuple(args.family_weight) if args.family_weight else None,
    )
    try:
        result = train_vlm(config)
    except (ValueError, DriveLMError) as err:
        print(f'drive-vlm train vlm: {err}', file=sys.stderr)
        return 2
    if result.stopped_by_time:
        print(f'stopped by --max-minutes at step {result.step}; continue with --resume')
    if result.stopped_at_step:
        print(f'stopped by --stop-at at step {result.step}; continue with --resume')
    return 0
