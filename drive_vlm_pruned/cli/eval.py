"""``drive-vlm eval``: DriveLM QA through the pipeline, scored beside its baselines (eval/)."""

from __future__ import annotations

import argparse
from pathlib import Path
import sys

from .flags import (
    add_load_arguments,
    add_settings_arguments,
    check_reconpruner_weights,
    load_spec_from_args,
)

EVAL_HELP = """\
Answer every QA of a DriveLM-format file with the model, through the same pipeline the node
runs (same pruning settings), batched. Writes the predictions in DriveLM's format (a JSON list of
id, question, answer), a metrics JSON and prints a table of every metric beside the baselines:

  DriveLM (as its challenge/evaluation.py, by tag): accuracy (exact string), BLEU-1..4, ROUGE-L,
  CIDEr (pycocoevalcap), match F1 (points matched by L1 < 16 px), graph gating, and the final
  score with the GPT term absent and the weights renormalised (GPT is never computed offline).
  Per question family: our exact match (numbers within 0.01 + 1%), match F1, language score, or
  L2 / collision at 1/2/3 s (cumulative ST-P3 convention) for the planning trajectory.

Baselines: majority answer per question type (from the train split when --data is a directory
with train.json, else from the evaluated file; --majority-from picks another file) and a
constant-velocity trajectory from the ego history are always scored. The blind baseline (every
image blanked to black) is a second model pass: --with-blind runs it in the same command;
--baseline blind makes this whole run the blind one, whose metrics file another run can show as
a column with --compare.

An interrupted run keeps its answers in OUT.items.jsonl; --resume continues it (and on a
finished run only scores again, e.g. with another --majority-from). Answers stop at
--max-new-tokens (64, as the node); the run says how many were cut, so raise it for long answers
(DriveLM's important-objects answers run to ~100 tokens).

Data-parallel: start the same command with torchrun (or accelerate launch); each process
answers every N-th key frame (on GPUs its own cuda:LOCAL_RANK) and process 0 writes the merged
predictions, the same as one process writes (eval/shards.py). Resume logs are per process.

examples:
  drive-vlm eval --model DIR --data data/ --split test --keep-ratio 0.1 --out preds.json
  drive-vlm eval --model DIR --data v1_1_val_nus_q_only.json --image-root nuscenes/ --out p.json
  torchrun --nproc_per_node 8 -m drive_vlm_pruned.cli.main eval --model DIR --device cuda \
      --data v1_1_val_nus_q_only.json --image-root nuscenes/ --out p.json
"""


def add_eval_parser(sub) -> None:
    """Add ``eval``."""
    ev = sub.add_parser('eval', help='score the model on DriveLM-format QA beside baselines',
                        description=EVAL_HELP,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_argument('--model', default='',
                    help='checkpoint directory or cached model id (default: the embedded model)')
    ev.add_argument('--data', required=True, metavar='DIR_OR_JSON',
                    help='a DriveLM JSON file, or a directory written by `drive-vlm data synth`')
    ev.add_argument('--split', default='test', choices=['train', 'val', 'test'],
                    help='with a directory: which <split>.json (default test)')
    ev.add_argument('--image-root', metavar='DIR',
                    help='nuScenes folder holding samples/ (real DriveLM files, whose image '
                         'paths read ../nuscenes/samples/...); default: paths relative to the '
                         'JSON file')
    ev.add_argument('--out', metavar='preds.json',
                    help='predictions to write (DriveLM format); needed unless --score')
    ev.add_argument('--score', metavar='PREDS_JSON',
                    help="score this predictions file (DriveLM's format: a list of id, question, "
                         'answer, as challenge/output.json) against --data without a model; '
                         'the metrics go to --metrics-out (default PREDS.metrics.json)')
    ev.add_argument('--metrics-out', metavar='PATH',
                    help='metrics JSON (default: OUT with .metrics.json, preds.metrics.json)')
    add_settings_arguments(ev)
    ev.add_argument('--view-keep-weights', metavar='W,W,W,W,W,W',
                    help='six relative keep weights in nuScenes camera order (Prune2Drive '
                         'view rates; as the node parameter)')
    ev.add_argument('--view-keep-weights-file', metavar='YAML',
                    help='per-camera keep weights file (config/view_weights.yaml)')
    ev.add_argument('--batch-size', type=int, default=8, help='QA per pipeline call (default 8)')
    ev.add_argument('--limit', type=int, default=0, help='only the first N QA (default: all)')
    ev.add_argument('--family', action='append', default=[], metavar='NAME',
                    help='only the QA of this question family (repeatable), e.g. '
                         'planning_trajectory: a quick planning check (default: all)')
    ev.add_argument('--baseline', choices=['blind'],
                    help='blind: run the model with every image blanked (this run IS the '
                         'blind baseline)')
    ev.add_argument('--with-blind', action='store_true',
                    help='also run the blind baseline in this command (a second pass)')
    ev.add_argument('--majority-from', metavar='JSON_OR_DIR',
                    help='reference answers for the majority baseline (default: the train split '
                         'beside --data, else the evaluated file)')
    ev.add_argument('--compare', nargs='+', default=[], metavar='METRICS_JSON',
                    help='add the main column of other eval runs (e.g. a --baseline blind run) '
                         'to the table')
    ev.add_argument('--tokenizer', default='auto', choices=['auto', 'ptb', 'simple'],
                    help="language-metric tokenisation: 'ptb' (the official Java PTB "
                         "tokenizer), 'simple' (pure Python), 'auto' (ptb if java exists)")
    ev.add_argument('--resume', action='store_true',
                    help='continue an interrupted run from OUT.items.jsonl')
    ev.add_argument('--overwrite', action='store_true', help='start again, replacing OUT')
    add_load_arguments(ev)
    ev.add_argument('--no-progress', action='store_true', help='no progress bar')
    ev.set_defaults(run=run_eval)


def view_weights_from_args(args: argparse.Namespace) -> dict[str, float] | None:
    """Return per-camera weights from --view-keep-weights(-file), or None for uniform budgets."""
    from ..cameras import NUSCENES_CAMERAS
    from ..pruning.view_weights import check_view_weights, load_view_weights

    if args.view_keep_weights_file:
        weights = load_view_weights(args.view_keep_weights_file)
        missing = [c for c in NUSCENES_CAMERAS if c not in weights]
        if missing:
            raise ValueError(f'{args.view_keep_weights_file} has no weight for '
                             f'{", ".join(missing)}: give all six cameras')
        return weights
    if not args.view_keep_weights:
        return None
    try:
        values = [float(v) for v in args.view_keep_weights.split(',')]
    except ValueError:
        raise ValueError(f'--view-keep-weights {args.view_keep_weights!r}: give six numbers '
                         'separated by commas') from None
    if len(values) != len(NUSCENES_CAMERAS):
        raise ValueError(f'--view-keep-weights has {len(values)} numbers; give six, one per '
                         f'camera in order {", ".join(NUSCENES_CAMERAS)}')
    return check_view_weights(dict(zip(NUSCENES_CAMERAS, values)), '--view-keep-weights')


def majority_reference(args: argparse.Namespace, frames):
    """Fit the majority baseline on --majority-from, the train split, or the evaluated file."""
    from ..data.drivelm import load_drivelm
    from ..eval.baselines import fit_majority

    if args.majority_from:
        ref = load_drivelm(args.majority_from, split='train', check_images=False)
        return fit_majority(ref, f'{args.majority_from}')
    train = Path(args.data) / 'train.json'
    if Path(args.data).is_dir() and args.split != 'train' and train.is_file():
        return fit_majority(load_drivelm(train, check_images=False), f'the train split ({train})')
    return fit_majority(frames, 'the evaluated file itself (no train split found)')


def _resolved(path: str | None) -> str | None:
    """Spell a local path one way (absolute), so a resumed run matches however it is typed."""
    return str(Path(path).resolve()) if path and Path(path).exists() else path


def run_eval(args: argparse.Namespace) -> int:
    """Run ``drive-vlm eval``; return the exit status."""
    from ..eval.runner import RunBroken

    try:
        if args.score:
            return _score_predictions(args)
        if not args.out:
            raise ValueError('give --out preds.json (where the predictions go), or --score '
                             'PREDS_JSON to score an existing predictions file')
        return _run_eval(args)
    except (ValueError, RunBroken) as err:  # DriveLMError included: bad data, options, model
        print(f'drive-vlm eval: {err}', file=sys.stderr)
        return 2


def _score_predictions(args: argparse.Namespace) -> int:
    """``--score``: the metrics of an existing predictions file, no model (eval/score_file.py)."""
    import json

    from ..data.drivelm import data_file, load_drivelm, read_predictions
    from ..eval.language import resolve_tokenizer
    from ..eval.report import run_lines, table
    from ..eval.score_file import score_file

    preds = Path(args.score)
    metrics_out = Path(args.metrics_out) if args.metrics_out else preds.with_suffix(
        '.metrics.json')
    frames = load_drivelm(data_file(args.data, args.split), args.image_root, check_images=False)
    report = score_file(frames, read_predictions(preds), majority=majority_reference(args, frames),
                        tokenizer=resolve_tokenizer(args.tokenizer), source=preds)
    metrics = report.as_json()
    metrics_out.parent.mkdir(parents=True, exist_ok=True)
    metrics_out.write_text(json.dumps(metrics, indent=1) + '\n')
    print(table(dict(metrics['columns'])))
    for line in [*run_lines(report.run), *report.notes]:
        print(line)
    print(f'scored {preds} without a model; metrics: {metrics_out}')
    return 0


def _run_eval(args: argparse.Namespace) -> int:
    import json

    from ..data.drivelm import data_file, load_drivelm, write_predictions
    from ..eval.language import resolve_tokenizer
    from ..eval.report import load_compare_column, run_lines, table
    from ..eval.runner import evaluate
    from ..eval.shards import Shard
    from ..models.adapters import load_adapter
    from ..pipeline.pipeline import Pipeline, RuntimeSettings

    model = args.model  # '': the embedded model, which load_adapter resolves
    out = Path(args.out)
    metrics_out = Path(args.metrics_out) if args.metrics_out else out.with_suffix('.metrics.json')
    compare = [(Path(p), *load_compare_column(p)) for p in args.compare]  # fail early
    tokenizer = resolve_tokenizer(args.tokenizer)
    source = data_file(args.data, args.split)
    frames = load_drivelm(source, args.image_root)
    settings = RuntimeSettings(keep_ratio=args.keep_ratio, pruner=args.pruner,
                               prune_layer=args.prune_layer, max_new_tokens=args.max_new_tokens,
                               view_weights=view_weights_from_args(args),
                               reconpruner_weights=args.reconpruner_weights,
                               waypoint_grammar=args.waypoint_grammar)
    check_reconpruner_weights(args.pruner, args.reconpruner_weights, model)
    majority = majority_reference(args, frames)
    shard = Shard.from_env()  # torchrun / accelerate launch: this process's key frames
    shard.bind_device()
    pipeline = Pipeline(load_adapter(load_spec_from_args(args, model),
                                     log=lambda text: print(text, file=sys.stderr)))
    # What makes answers differ: a resumed run must match it (batch size and --limit do not).
    header = {'model': _resolved(model), 'data': str(source.resolve()),
              'image_root': _resolved(args.image_root),
              'settings': {'keep_ratio': settings.keep_ratio, 'pruner': settings.pruner,
                           'prune_layer': settings.prune_layer,
                           'max_new_tokens': settings.max_new_tokens,
                           'view_weights': settings.view_weights,
                           'reconpruner_weights': _resolved(settings.reconpruner_weights),
                           'waypoint_grammar': settings.waypoint_grammar}}
    report = evaluate(
        pipeline, frames, settings, batch_size=args.batch_size, limit=args.limit,
        families=args.family, blind=args.baseline == 'blind', with_blind=args.with_blind,
        majority=majority,
        tokenizer=tokenizer, progress=not args.no_progress,
        items_path=out.with_suffix('.items.jsonl'), header=header, resume=args.resume,
        overwrite=args.overwrite, shard=shard)
    shard.close()
    if not shard.main:  # every process holds the merged report; one writes it
        return 0
    write_predictions(out, report.predictions)
    if report.blind_predictions is not None:
        write_predictions(out.with_suffix('.blind.json'), report.blind_predictions)
    metrics = report.as_json()
    metrics_out.parent.mkdir(parents=True, exist_ok=True)
    metrics_out.write_text(json.dumps(metrics, indent=1) + '\n')
    columns = dict(metrics['columns'])
    for path, label, column in compare:
        columns[label if label not in columns else f'{label} ({path.stem})'] = column
    if columns:
        print(table(columns))
    for line in [*run_lines(report.run), *report.notes]:
        print(line)
    print(f'language tokenizer: {report.run["tokenizer"]}; GPT score: absent (never computed '
          'offline)')
    print(f'predictions: {out}\nmetrics: {metrics_out}')
    return 0
