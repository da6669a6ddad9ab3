"""
``drive-vlm bench accuracy``: accuracy kept vs prefill speed-up, per pruner, keep ratio and layer.

One model load; every cell runs the same QA through the same ``Pipeline`` with the eval loop
(eval/runner.py ``predict``) and is scored by eval/scoring.py. A cell is (pruner, allocation,
keep ratio, prune layer); allocations are ``uniform`` (every view the same rate), ``searched``
(Prune2Drive's view rates from a view-weights YAML, ``--view-weights-file``) and ``diversity``
(MVPruner stage 1's per-frame diversity budgets; T-FPS inside each view, i.e. the pruner
``mvpruner-s1``). Reference rows per data seed: the unpruned model (keep 1.0), the blind model
(every image black) and the majority answer per family (from the train split when there is one).

Per cell: DriveLM metrics, per-family scores, planning L2 / collision (ST-P3 cumulative), the
closed-form accuracy and language terms of search/objective.py, retention = score / the same
model's unpruned score on the same QA, the measured prefill speed-up = sum over batches of the
unpruned (prune + prefill) ms / the cell's, with the same QA in the same batches (the vision
encoder is NOT included: it runs whatever the keep ratio), the analytic FLOPs share
(pipeline/flops.py) and the foreground recall of the kept tokens (pruning/foreground.py, GT
masks of the data set).

Data seeds (``--seeds N``): N disjoint subsets of one split (scenes dealt round-robin), or, when
``--data`` names several data sets (``data synth --seed`` with disjoint seed ranges), one set per
seed. Never tuned on: the search uses the validation split, this the test split. Each seed
answers ``--qa-per-cell`` QA of whole key frames. Figures are mean ± sample standard deviation
over the seeds; a ranking is called stable when the intervals mean ± std of the top two do not
overlap.

Data-parallel: started by torchrun or accelerate launch, every process runs every cell on its
own key frames and the main process merges, scores and writes (eval/shards.py).

Resume: each finished (cell, seed) is appended to ``OUT/cells.jsonl`` after a header naming the
run; a rerun skips them (``--overwrite`` starts again).

This module is the entry point; the cells are in bench/accuracy_cells.py, running and scoring
them in bench/accuracy_sweep.py, the tables and verdict in bench/accuracy_report.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
import time

from .accuracy_cells import Cell, plan_cells
from .accuracy_defaults import (
    DEFAULT_KEEP_RATIOS,
    DEFAULT_PRUNE_LAYERS,
    DEFAULT_PRUNERS,
    DEFAULT_QA_PER_CELL,
    DEFAULT_SEEDS,
)
from .accuracy_report import summarize, write_report
from .accuracy_sweep import cell_log, seed_sets, sweep, SweepOptions
from ..data.drivelm import all_qa, KeyFrame, load_drivelm
from ..eval.baselines import fit_majority, MajorityAnswers
from ..eval.runner import predict, PredictOptions
from ..models.loading import LoadSpec
from ..pipeline.pipeline import Pipeline, RuntimeSettings

GOAL_MINUTES = 60.0


@dataclass(frozen=True)
class AccuracyOptions:
    """What ``drive-vlm bench accuracy`` runs; the CLI builds it from its flags."""

    data: tuple[str, ...]  # a data directory or DriveLM JSON; several: one per data seed
    load: LoadSpec = LoadSpec()  # the model and how to load it; model '': the embedded model
    split: str = 'test'
    image_root: str | None = None
    pruners: tuple[str, ...] = DEFAULT_PRUNERS
    keep_ratios: tuple[float, ...] = DEFAULT_KEEP_RATIOS
    prune_layers: tuple[int, ...] = DEFAULT_PRUNE_LAYERS
    seeds: int = DEFAULT_SEEDS
    qa_per_cell: int = DEFAULT_QA_PER_CELL
    view_weights_file: str | None = None  # searched view rates, an allocation variant
    variant_layers: tuple[int, ...] | None = None  # None: every prune layer; (): no variants
    report_only: bool = False  # rebuild the report from OUT/cells.jsonl; run nothing
    diversity: bool = True
    blind: bool = True
    batch_size: int = 8
    max_new_tokens: int = 64
    waypoint_grammar: bool = True  # False: PLANNING answers decoded freely
    tokenizer: str = 'auto'  # auto | ptb | simple (eval/language.py)
    out: str = 'bench-out/accuracy'
    overwrite: bool = False
    threads: int = 0  # torch CPU threads; 0: torch's default
    progress: bool = True


def _resolved(path: str | None) -> str | None:
    return str(Path(path).resolve()) if path and Path(path).exists() else path


def run_accuracy_bench(options: AccuracyOptions) -> int:
    """Run the sweep (module doc) and write its report; ValueError names a bad option or input."""
    import sys

    import torch

    from ..eval.language import resolve_tokenizer
    from ..eval.shards import Shard
    from ..models.adapters import load_adapter
    from ..models.loading import resolve_checkpoint
    from ..pruning.view_weights import load_view_weights
    from ..search.view_rates import read_search_keep_ratio

    if options.threads:
        torch.set_num_threads(options.threads)
    started = time.perf_counter()
    model = options.load.model or str(resolve_checkpoint(''))  # the report names the directory
    sweep_options = SweepOptions(options.pruners, options.keep_ratios, options.prune_layers,
                                 options.seeds, options.qa_per_cell, options.batch_size,
                                 options.max_new_tokens, resolve_tokenizer(options.tokenizer),
                                 options.diversity, options.blind, options.waypoint_grammar)
    view_weights, search_keep = None, None
    if options.view_weights_file:
        view_weights = load_view_weights(options.view_weights_file)
        search_keep = read_search_keep_ratio(options.view_weights_file)
    data = list(options.data)
    seeds, how = seed_sets(data, options.split, options.image_root, sweep_options.seeds,
                           sweep_options.qa_per_cell)
    majority = _majority(data, options.split, options.image_root)
    out = Path(options.out)
    header = {'model': _resolved(model), 'data': [_resolved(d) for d in data],
              'split': options.split, 'seeds': len(seeds),
              'qa_per_cell': sweep_options.qa_per_cell,
              'max_new_tokens': sweep_options.max_new_tokens,
              'waypoint_grammar': sweep_options.waypoint_grammar,
              'tokenizer': sweep_options.tokenizer, 'view_weights': view_weights}
    shard = Shard.from_env()  # torchrun / accelerate launch: each process its key frames
    shard.bind_device()
    log = cell_log(out / 'cells.jsonl', header, options.overwrite) if shard.main else None
    if options.report_only and log is not None:  # every cell the log holds; no model
        records = list(log.done.values())
        rows = summarize(records)
        print(write_report(out, rows, header, how, ['rebuilt with --report-only from '
                                                    f'{log.path}'], model, records))
        _plots(rows, out, model)
        return 0
    if options.report_only:
        return 0
    pipeline = Pipeline(load_adapter(replace(options.load, model=model),
                                     log=lambda text: print(text, file=sys.stderr)))
    cells, notes = plan_cells(sweep_options.pruners, sweep_options.keep_ratios,
                              sweep_options.prune_layers, pipeline.shape.layers,
                              view_weights is not None, sweep_options.diversity, search_keep,
                              options.variant_layers)
    cells, probe_notes = probe(pipeline, seeds[0], cells, view_weights)
    notes += probe_notes
    if view_weights is None:
        notes.append('no --view-weights-file: the searched view rates are not in this sweep')
    say = print if shard.main else (lambda *_: None)
    say(f'model {model}; data seeds: {how}; {sum(len(all_qa(s)) for s in seeds)} QA in all, '
        f'{[len(all_qa(s)) for s in seeds]} per seed; {len(cells)} pruned cells + references '
        f'x {len(seeds)} seeds' + (f'; {shard.world} processes' if shard.world > 1 else ''))
    for note in notes:
        say(note)
    records = sweep(pipeline, seeds, cells, sweep_options, log, view_weights, majority,
                    progress=options.progress, echo=say, shard=shard)
    shard.close()
    if not shard.main:
        return 0
    rows = summarize(records)
    elapsed = time.perf_counter() - started
    report = write_report(out, rows, header, how, notes, model, records,
                          wall_s=elapsed, processes=shard.world)
    cell_seconds = sum(r.get('seconds', 0.0) for r in records)
    print(report)
    print(f'\nthis run: {elapsed / 60:.1f} min wall; all cells together (resumed ones included): '
          f'{cell_seconds / 60:.1f} min of answering on {torch.get_num_threads()} threads. '
          f'Goal: the default sweep under {GOAL_MINUTES:.0f} min on 2 cores.')
    _plots(rows, out, model)
    print(f'wrote {out / "accuracy.json"}, {out / "accuracy.md"}, {out / "accuracy_vs_keep.png"}'
          f', {out / "accuracy_vs_speedup.png"}')
    return 0


def _plots(rows: Sequence[dict], out: Path, model: str) -> None:
    from .accuracy_plots import plot_keep, plot_pareto

    plot_keep(rows, out / 'accuracy_vs_keep.png', f'{Path(model).name}: accuracy vs keep ratio')
    plot_pareto(rows, out / 'accuracy_vs_speedup.png',
                f'{Path(model).name}: accuracy vs measured prefill speed-up')


def probe(pipeline: Pipeline, frames: Sequence[KeyFrame], cells: Sequence[Cell],
          view_weights: Mapping[str, float] | None) -> tuple[list[Cell], list[str]]:
    """Run one QA per (pruner, allocation, layer): drop those that fail (e.g. no weights)."""
    first = [replace(frames[0], qa=frames[0].qa[:1])]
    base = RuntimeSettings(max_new_tokens=2)
    bad: dict[tuple[str, str, int], str] = {}
    seen = set()
    for cell in cells:
        group = (cell.pruner, cell.allocation, cell.prune_layer)
        if group in seen:
            continue
        seen.add(group)
        run = predict(pipeline, all_qa(first), cell.settings(base, view_weights),
                      PredictOptions(batch_size=1, progress=False))
        if run.items[0].error:
            bad[group] = run.items[0].error
    notes = [f'{p} ({a}) skipped at prune layer {k}: {err}' for (p, a, k), err in bad.items()]
    return [c for c in cells if (c.pruner, c.allocation, c.prune_layer) not in bad], notes


def _majority(data: Sequence[str], split: str, image_root: str | None
              ) -> MajorityAnswers | None:
    """Fit the majority answers on the train split beside the data, else on the data itself."""
    train = Path(data[0]) / 'train.json'
    if Path(data[0]).is_dir() and split != 'train' and train.is_file():
        return fit_majority(load_drivelm(train, check_images=False), f'the train split ({train})')
    frames = [f for d in data for f in load_drivelm(d, image_root, split, check_images=False)]
    return fit_majority(frames, 'the evaluated data itself (no train split beside it: an '
                                'optimistic baseline)')
