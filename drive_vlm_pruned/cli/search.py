"""
``drive-vlm search ...``.

``search view-rates``: Prune2Drive's per-camera keep rates by Optuna TPE; ``search planted``: a
data set that only one camera decides (the search's check).
"""

from __future__ import annotations

import argparse
from pathlib import Path
import sys

from .flags import add_load_arguments, load_spec_from_args, pruner_type

SEARCH_HELP = """\
Searches over pipeline settings on a validation split.

  view-rates  Prune2Drive's per-camera keep rates by Optuna's TPE sampler
  planted     write a data set whose answers depend on one camera only (the search's check)
"""

VIEW_RATES_HELP = """\
Search six per-camera keep rates r_i in [0.1, 1.0] with Optuna's TPE sampler (seeded),
maximising Prune2Drive's objective 0.5 * language + 0.5 * accuracy - penalty * sum(r_i) on the
VALIDATION split (never the test split). Accuracy: the closed-form answers (DriveLM tag 0: our
families exists, count, nearest_ahead, in_moving_direction, safe_action, behavior_mc) by exact
match; language: DriveLM's language score of the rest (important_objects, planning_trajectory,
behavior). Each trial runs the QA through the pipeline with view i keeping r_i of its tokens.

Trials live in Optuna's RDB storage (default: sqlite file next to --out). Several processes on
the same --storage and --study share the study (give each its own --worker); on many machines
use a PostgreSQL or MySQL URL, e.g. postgresql://user:pw@host/optuna. A killed search resumes:
finished trials count toward --trials. Writes the best rates as a view-weights YAML that the node
loads with view_keep_weights_file, and prints the best trial, its objective terms, the uniform
rates at the same budget, and the parameter importances.

example: drive-vlm search view-rates --model DIR --data data/ --trials 60 --out rates.yaml
"""


def add_search_parser(sub) -> None:
    """Add ``search`` with its ``view-rates`` and ``planted`` subcommands."""
    from ..search.objective import DEFAULT_PENALTY
    from ..search.planted import DEFAULT_CAMERA, OTHER_VIEWS

    search = sub.add_parser('search', help='search pipeline settings on a validation split',
                            description=SEARCH_HELP,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    search.set_defaults(run=run_search)
    ssub = search.add_subparsers(dest='search_command', metavar='SEARCH', required=True)
    vr = ssub.add_parser('view-rates', help="Prune2Drive's per-camera keep rates by TPE",
                         description=VIEW_RATES_HELP,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    vr.add_argument('--model', help='checkpoint directory (default: the embedded model)')
    vr.add_argument('--data', required=True, metavar='DIR_OR_JSON',
                    help='a data directory (uses its --split) or a DriveLM JSON file')
    vr.add_argument('--split', default='val', choices=['train', 'val'],
                    help='which split of a data directory (default val; test is refused)')
    vr.add_argument('--image-root', metavar='DIR', help='nuScenes folder (real DriveLM files)')
    vr.add_argument('--trials', type=int, required=True,
                    help='finished trials the study should hold (all processes together)')
    vr.add_argument('--storage', metavar='URL',
                    help='Optuna RDB storage (default sqlite:///<--out stem>.study.db)')
    vr.add_argument('--study', default='view-rates', help='study name (default view-rates)')
    vr.add_argument('--penalty', type=float, default=DEFAULT_PENALTY,
                    help=f'lambda of the rate penalty (default {DEFAULT_PENALTY})')
    vr.add_argument('--pruner', type=pruner_type, default='tfps',
                    help='pruner inside each view (default tfps, as Prune2Drive)')
    vr.add_argument('--prune-layer', type=int, default=0, help='0 or LLM layer K (default 0)')
    vr.add_argument('--qa', type=int, default=200,
                    help='validation QA per trial, whole frames round-robin over scenes '
                         '(default 200; 0 = all; Prune2Drive used 500)')
    vr.add_argument('--batch-size', type=int, default=8, help='QA per pipeline call (8)')
    vr.add_argument('--max-new-tokens', type=int, default=64, help='default 64')
    vr.add_argument('--tokenizer', default='auto', choices=['auto', 'ptb', 'simple'],
                    help='language-metric tokenisation (default auto)')
    vr.add_argument('--seed', type=int, default=0, help='TPE seed (default 0)')
    vr.add_argument('--worker', type=int, default=0,
                    help="this process's index when several share a study (default 0)")
    vr.add_argument('--startup-trials', type=int, default=10,
                    help='random trials before TPE models the objective (default 10)')
    vr.add_argument('--no-uniform', action='store_true',
                    help="skip evaluating uniform rates at the best trial's budget")
    vr.add_argument('--out', default='view_rates.yaml', metavar='YAML',
                    help='view-weights YAML to write (default view_rates.yaml)')
    vr.add_argument('--threads', type=int, default=0, help='torch CPU threads (default: torch)')
    add_load_arguments(vr)

    pl = ssub.add_parser('planted', help='write a data set that one camera decides',
                         description='Render validation-range scenes and write exists/count QA '
                                     'about ONE camera only (search/planted.py): a view-rate '
                                     'search on it should keep that camera most.')
    pl.add_argument('out', metavar='OUT', help='data directory to write')
    pl.add_argument('--camera', default=DEFAULT_CAMERA, help=f'default {DEFAULT_CAMERA}')
    pl.add_argument('--scenes', type=int, default=3, help='scenes (default 3)')
    pl.add_argument('--frames-per-scene', type=int, default=2, help='key frames each (2)')
    pl.add_argument('--seed', type=int, default=0, help='scene-seed offset (default 0)')
    pl.add_argument('--others', choices=OTHER_VIEWS, default='scene',
                    help='what the other five cameras show: scene (the same scene; the model '
                         'must ground the named view) or empty (the road without agents; all '
                         'evidence in the planted camera). Default scene')


def run_search(args: argparse.Namespace) -> int:
    """Run the ``search`` subcommand in ``args``; return the exit status."""
    name = f'drive-vlm search {args.search_command}'
    try:
        if args.search_command == 'planted':
            return _planted(args)
        if args.search_command == 'view-rates':
            return _view_rates(args)
    except ValueError as err:
        print(f'{name}: {err}', file=sys.stderr)
        return 2
    return 2


def _planted(args: argparse.Namespace) -> int:
    from ..search.planted import PlantedOptions, write_planted

    path = write_planted(args.out, PlantedOptions(args.camera, args.scenes,
                                                  args.frames_per_scene, args.seed,
                                                  others=args.others))
    print(f'wrote {path}: exists/count QA about {args.camera} only (other cameras: '
          f'{args.others})')
    return 0


def _view_rates(args: argparse.Namespace) -> int:
    import torch

    from ..cameras import NUSCENES_CAMERAS
    from ..data.drivelm import all_qa, data_file, load_drivelm
    from ..eval.language import resolve_tokenizer
    from ..models.adapters import load_adapter
    from ..models.loading import resolve_checkpoint
    from ..pipeline.pipeline import Pipeline, RuntimeSettings
    from ..search.qa_sets import take_frames
    from ..search.view_rates import (
        keep_ratio_of,
        search,
        SearchSpec,
        sqlite_url,
        TrialEval,
        write_rates_yaml,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.qa < 0:
        raise ValueError(f'--qa {args.qa}: give 0 (all) or a positive count')
    model = args.model or str(resolve_checkpoint(''))  # the study records the embedded dir
    source = data_file(args.data, args.split)
    if source.name == 'test.json':
        raise ValueError(f'{source} is a test split: tune on the validation split (--split val) '
                         'so the test figures stay honest')
    frames = take_frames(load_drivelm(source, args.image_root), args.qa)
    pairs = all_qa(frames)
    if not pairs:
        raise ValueError(f'{source} has no QA')
    out = Path(args.out)
    storage = args.storage or sqlite_url(out.with_suffix('.study.db'))
    tokenizer = resolve_tokenizer(args.tokenizer)
    base = RuntimeSettings(pruner=args.pruner, prune_layer=args.prune_layer,
                           max_new_tokens=args.max_new_tokens)
    spec = SearchSpec(args.trials, storage, args.study, args.penalty, args.seed, args.worker,
                      args.startup_trials)
    spec.check()
    pipeline = Pipeline(load_adapter(load_spec_from_args(args, model),
                                     log=lambda text: print(text, file=sys.stderr)))
    base.validate(pipeline.shape.layers)
    # What a trial's value depends on: processes joining the study must agree on all of it.
    config = {'model': str(Path(model).resolve()) if Path(model).exists() else model,
              'data': str(source.resolve()), 'qa': len(pairs), 'pruner': args.pruner,
              'prune_layer': args.prune_layer, 'penalty': args.penalty,
              'max_new_tokens': args.max_new_tokens, 'tokenizer': tokenizer,
              'cameras': list(NUSCENES_CAMERAS), 'low': spec.low, 'high': spec.high}
    evaluate = TrialEval(pipeline, pairs, base, args.batch_size, tokenizer)
    print(f'{len(pairs)} QA of {len(frames)} key frames from {source}; storage {storage}, '
          f'study {args.study!r}')
    result = search(evaluate, spec, config)
    print(f'\n{result.ran} trials run by this process in {result.seconds / 60:.1f} min; the '
          f'study holds {len(result.study.trials)} trials')
    if result.best_rates is None:
        print('no finished trial yet: nothing to write')
        return 1
    t = result.best_terms
    print(f'best trial {result.best_number}: objective {t["objective"]:.4f} = quality '
          f'{t["quality"]:.4f} (accuracy {_f(t.get("accuracy"))} on {t["accuracy_qa"]} QA, '
          f'language {_f(t.get("language"))} on {t["language_qa"]} QA) - {args.penalty} x sum '
          f'of rates {t["rate_sum"]:.3f}')
    for camera, rate in result.best_rates.items():
        print(f'  {camera:<16} {rate:.3f}')
    keep = keep_ratio_of(result.best_rates)
    info = {'study': args.study, 'storage': storage if '@' not in storage else '(not shown)',
            'best_trial': result.best_number, 'objective': round(t['objective'], 5),
            'quality': round(t['quality'], 5), 'accuracy': t.get('accuracy'),
            'language': t.get('language'), 'rate_sum': round(t['rate_sum'], 4),
            'penalty': args.penalty, 'split': source.name, 'qa': len(pairs),
            'pruner': args.pruner, 'prune_layer': args.prune_layer,
            'finished_trials': sum(1 for x in result.study.trials if x.value is not None)}
    if not args.no_uniform:
        uniform = evaluate(dict.fromkeys(NUSCENES_CAMERAS, keep), args.penalty)
        print(f'uniform rates {keep:.3f} on every camera (same total budget): objective '
              f'{uniform.value:.4f}, quality {uniform.answers.quality:.4f} (accuracy '
              f'{_f(uniform.answers.accuracy)}, language {_f(uniform.answers.language)})')
        info['uniform_same_budget'] = {'rate': round(keep, 4),
                                       'objective': round(uniform.value, 5),
                                       'quality': round(uniform.answers.quality, 5)}
    if result.importances is None:
        print(f'parameter importances: none ({result.importance_note})')
    else:
        note = f' ({result.importance_note})' if result.importance_note else ''
        print(f'parameter importances (fANOVA){note}:')
        for param, value in result.importances.items():
            print(f'  {param:<22} {value:.3f}')
    header = {'low': spec.low, 'high': spec.high, 'penalty': args.penalty, 'split': source.name}
    path = write_rates_yaml(out, result.best_rates, info, header)
    print(f'wrote {path} (node: view_keep_weights_file:={path.resolve()}, keep_ratio:='
          f'{keep:.3f})')
    return 0


def _f(value) -> str:
    return '—' if value is None else f'{value:.3f}'
