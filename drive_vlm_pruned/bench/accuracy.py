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

Resume: each finished (cell, seed) is appended to ``OUT/cells.jsonl`` after a header naming the
run; a rerun skips them (``--overwrite`` starts again).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
import json
import math
from pathlib import Path
import statistics
import time

import numpy as np

from .accuracy_defaults import (
    DEFAULT_KEEP_RATIOS,
    DEFAULT_PRUNE_LAYERS,
    DEFAULT_PRUNERS,
    DEFAULT_QA_PER_CELL,
    DEFAULT_SEEDS,
)
from .accuracy_paired import detectable_difference, item_scores, paired_lines, paired_rows
from ..data.drivelm import all_qa, KeyFrame, load_drivelm
from ..eval.baselines import fit_majority, MajorityAnswers
from ..eval.runner import predict, PredictOptions
from ..eval.scoring import score_column
from ..models.loading import LoadSpec
from ..pipeline.pipeline import Pipeline, RuntimeSettings
from ..search.objective import score_answers
from ..search.qa_sets import batch_order, scene_subsets, take_frames

VARIANT_PRUNER = 'tfps'  # the searched and diversity allocations run with T-FPS (Prune2Drive)
DIVERSITY_PRUNER = 'mvpruner-s1'  # T-FPS with MVPruner stage 1's diversity budgets
UNIFORM, SEARCHED, DIVERSITY = 'uniform', 'searched', 'diversity'
NONE, BLIND, MAJORITY = 'none', 'blind', 'majority'
BREAK_RETENTION = 0.95  # a pruner "breaks" at the largest keep ratio where it keeps less
CLAIM_RETENTION = 0.97  # Prune2Drive's claim at keep 0.1 (MVPruner claims 0.985)
GOAL_MINUTES = 60.0


@dataclass(frozen=True)
class Cell:
    """One sweep point; ``pruner`` 'none' with keep 1.0 is the unpruned model."""

    pruner: str
    allocation: str
    keep_ratio: float
    prune_layer: int

    @property
    def key(self) -> str:
        return f'{self.pruner}/{self.allocation}/{self.keep_ratio:g}/K{self.prune_layer}'

    @property
    def label(self) -> str:
        if self.allocation in (UNIFORM, NONE, BLIND, MAJORITY):
            return self.pruner
        return f'{self.pruner}+{self.allocation}'

    def settings(self, base: RuntimeSettings, view_weights: Mapping[str, float] | None
                 ) -> RuntimeSettings:
        if self.pruner in (NONE, BLIND, MAJORITY):
            return replace(base, keep_ratio=1.0, pruner=VARIANT_PRUNER, prune_layer=0)
        pruner = DIVERSITY_PRUNER if self.allocation == DIVERSITY else self.pruner
        weights = dict(view_weights) if self.allocation == SEARCHED else None
        return replace(base, keep_ratio=self.keep_ratio, pruner=pruner,
                       prune_layer=self.prune_layer, view_weights=weights)


BASE_CELL = Cell(NONE, NONE, 1.0, 0)
BLIND_CELL = Cell(BLIND, BLIND, 1.0, 0)
MAJORITY_CELL = Cell(MAJORITY, MAJORITY, 1.0, 0)


def valid_at(pruner: str, layer: int, llm_layers: int) -> str:
    """'' when ``pruner`` can run at ``layer``, else why not."""
    try:
        RuntimeSettings(keep_ratio=0.5, pruner=pruner, prune_layer=layer).validate(llm_layers)
    except ValueError as err:
        return str(err)
    return ''


def plan_cells(pruners: Sequence[str], keep_ratios: Sequence[float], layers: Sequence[int],
               llm_layers: int, searched: bool, diversity: bool,
               search_keep: float | None = None, variant_layers: Sequence[int] | None = None
               ) -> tuple[list[Cell], list[str]]:
    """
    Return every valid cell in sweep order, and a note per skipped (pruner, layer).

    The allocation variants run at ``variant_layers`` (None: every layer of ``layers``).
    """
    cells, notes = [], []
    keeps = sorted({k for k in keep_ratios if k < 1.0}, reverse=True)
    for layer in layers:
        names = list(pruners)
        on_here = variant_layers is None or layer in variant_layers
        variants = [(VARIANT_PRUNER, a) for a, on in ((SEARCHED, searched),
                                                      (DIVERSITY, diversity)) if on and on_here]
        for name in names:
            why = valid_at(name, layer, llm_layers)
            if why:
                notes.append(f'{name} skipped at prune layer {layer}: {why}')
                continue
            cells += [Cell(name, UNIFORM, k, layer) for k in keeps]
        for name, allocation in variants:
            mv_here = 'mvpruner' in names and not valid_at('mvpruner', layer, llm_layers)
            if allocation == DIVERSITY and layer == 0 and mv_here:
                notes.append('tfps+diversity at prune layer 0 is what mvpruner runs there '
                             '(stage 1 only): reported once, as mvpruner')
                continue
            if not valid_at(name, layer, llm_layers):
                cells += [Cell(name, allocation, k, layer) for k in keeps]
        tfps_ok = not valid_at(VARIANT_PRUNER, layer, llm_layers)
        if search_keep is not None and searched and tfps_ok and on_here:
            # the searched absolute rates, next to uniform rates at the same total budget
            cells += [Cell(VARIANT_PRUNER, a, search_keep, layer) for a in (UNIFORM, SEARCHED)
                      if Cell(VARIANT_PRUNER, a, search_keep, layer) not in cells]
    return cells, notes


# --- one cell ---------------------------------------------------------------------------------

class ObservedPipeline:
    """
    The pipeline, passed through unchanged, keeping what the eval loop does not report.

    Per batch the Results' stage timings, and per QA the foreground recall of its kept tokens.

    ``pairs`` must be the order the eval loop runs them in (all of them; no resumed items): a
    batch of n results belongs to the next n pairs; a single QA that fails is skipped.
    """

    def __init__(self, pipeline: Pipeline, pairs: Sequence, recall: ForegroundRecall | None):
        self.pipeline = pipeline
        self.shape = pipeline.shape
        self.pairs = list(pairs)
        self.next = 0
        self.recall = recall
        self.prefill_ms: list[float] = []  # prune + prefill, per batch
        self.vision_ms: list[float] = []
        self.fg_kept = self.fg_total = 0

    def __getattr__(self, name):
        return getattr(self.pipeline, name)

    def run_batch(self, frames, settings):
        try:
            results = self.pipeline.run_batch(frames, settings)
        except Exception:
            if len(frames) == 1:  # the eval loop logs this QA as failed and goes on
                self.next += 1
            raise
        mine = self.pairs[self.next:self.next + len(results)]
        self.next += len(results)
        for (_, qa), r in zip(mine, results):
            if qa.question != r.question:
                raise RuntimeError(f'bench bookkeeping lost its place at QA {qa.id}: the eval '
                                   'loop changed its batching; update ObservedPipeline')
        t = results[0].timings_ms
        self.prefill_ms.append(t.get('prune', 0.0) + t.get('prefill', 0.0))
        self.vision_ms.append(t.get('vision', 0.0))
        if self.recall is not None:
            for (frame, _), r in zip(mine, results):
                kept, total = self.recall(frame, r)
                self.fg_kept += kept
                self.fg_total += total
        return results


class ForegroundRecall:
    """Foreground recall of a Result's kept tokens against the frame's GT masks (cached)."""

    def __init__(self, input_size: int) -> None:
        self.input_size = input_size
        self.cache: dict[tuple, object] = {}

    def __call__(self, frame: KeyFrame, result) -> tuple[int, int]:
        from ..pruning.foreground import foreground_recall

        if frame.gt is None or not frame.gt.masks:
            return 0, 0
        fg = [self._patches(frame, cam, n) for cam, n in zip(result.view_names,
                                                             result.tokens_before)]
        if any(f is None for f in fg):
            return 0, 0
        r = foreground_recall(result.kept_indices, fg)
        return r.kept, r.total

    def _patches(self, frame: KeyFrame, camera: str, tokens: int):
        import torch

        from ..pruning.foreground import patch_foreground, PatchGrid

        key = (frame.scene, frame.frame, camera, tokens)
        if key not in self.cache:
            path = frame.gt.masks.get(camera)
            if path is None or not Path(path).is_file():
                self.cache[key] = None
            else:
                from PIL import Image

                with Image.open(path) as img:
                    mask = torch.from_numpy(np.array(img))
                self.cache[key] = patch_foreground(mask, PatchGrid.of(self.input_size, tokens))
            if len(self.cache) > 20_000:
                self.cache.pop(next(iter(self.cache)))
        return self.cache[key]


def foreground_for(pipeline: Pipeline) -> tuple[ForegroundRecall | None, str]:
    """Return a recall scorer for square-input encoders, or None and why not."""
    try:
        _, h, w = pipeline.adapter.image_shape
    except (AttributeError, TypeError, ValueError, KeyError) as err:
        return None, f'foreground recall not computed: no fixed encoder input ({err})'
    if h != w:
        return None, (f'foreground recall not computed: the encoder input is {w} x {h}, not the '
                      'square resize pruning/foreground.py assumes')
    return ForegroundRecall(int(h)), ''


def run_accuracy_cell(pipeline: Pipeline, frames: Sequence[KeyFrame],
                      settings: RuntimeSettings, *, batch_size: int, tokenizer: str,
                      recall: ForegroundRecall | None = None, blank: bool = False) -> dict:
    """Answer and score the QA of ``frames`` with ``settings``; return the cell's record."""
    pairs = all_qa(frames)
    order = batch_order(pairs)
    observed = ObservedPipeline(pipeline, order, recall)
    start = time.perf_counter()
    run = predict(observed, order, settings,
                  PredictOptions(batch_size=batch_size, blank=blank, progress=False))
    seconds = time.perf_counter() - start
    record = score_record(pairs, run.answers(), tokenizer)
    record.update(item_scores(pairs, run.answers()))  # for the paired statistics
    summary = run.summary()
    record.update({
        'errors': summary['errors'], 'seconds': seconds,
        'error_example': next((f'{i.id}: {i.error}' for i in run.items if i.error), ''),
        'prefill_ms': float(sum(observed.prefill_ms)), 'vision_ms': float(sum(observed.vision_ms)),
        'batches': len(observed.prefill_ms), 'flops_share': summary['prefill_flops_ratio'],
        'tokens_kept_mean': summary['visual_tokens_kept_mean'],
        'tokens_total_mean': summary['visual_tokens_total_mean'],
        'generated_tokens_mean': summary['generated_tokens_mean'],
        'foreground_recall': (observed.fg_kept / observed.fg_total if observed.fg_total
                              else None),
    })
    return record


def score_record(pairs, answers: Mapping[str, str], tokenizer: str) -> dict:
    """Score one set of answers: objective terms, DriveLM, families, planning."""
    column = score_column('model', pairs, answers, tokenizer)
    terms = score_answers(pairs, answers, tokenizer)
    d = column.drivelm
    plan = column.planning
    return {
        'qa': len(pairs), 'frames': len({(f.scene, f.frame) for f, _ in pairs}),
        'accuracy': terms.accuracy, 'language': terms.language, 'quality': terms.quality,
        'drivelm': {'accuracy': d.accuracy, 'language_score': d.language_score,
                    'match_f1': d.match_f1, 'final_score_no_gpt': d.final_no_gpt}
        if d else None,
        'families': {k: {'metric': v.metric, 'n': v.n, 'value': v.value}
                     for k, v in column.families.items()},
        'planning': {'l2_avg': plan.l2.get('avg'), 'collision_avg': plan.collision.get('avg'),
                     'parsed': plan.parsed, 'items': plan.items} if plan else None,
    }


def majority_record(frames: Sequence[KeyFrame], majority: MajorityAnswers,
                    tokenizer: str) -> dict:
    pairs = all_qa(frames)
    answers = {qa.id: majority.answer(qa) for _, qa in pairs}
    record = score_record(pairs, answers, tokenizer)
    record.update(item_scores(pairs, answers))
    record.update({'errors': 0, 'seconds': 0.0, 'source': majority.source})
    return record


# --- the sweep ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class SweepOptions:
    """What a sweep runs; every field has a CLI option."""

    pruners: tuple[str, ...] = DEFAULT_PRUNERS
    keep_ratios: tuple[float, ...] = DEFAULT_KEEP_RATIOS
    prune_layers: tuple[int, ...] = DEFAULT_PRUNE_LAYERS
    seeds: int = DEFAULT_SEEDS
    qa_per_cell: int = DEFAULT_QA_PER_CELL
    batch_size: int = 8
    max_new_tokens: int = 64
    tokenizer: str = 'simple'
    diversity: bool = True
    blind: bool = True


def seed_sets(data: Sequence[str], split: str, image_root: str | None, seeds: int,
              qa_per_cell: int) -> tuple[list[list[KeyFrame]], str]:
    """Return the frames each data seed answers, and how the seeds were made (module doc)."""
    if len(data) > 1:
        sets = [load_drivelm(d, image_root, split) for d in data]
        how = (f'{len(data)} data sets, one per seed (written with different data seeds): '
               + ', '.join(str(d) for d in data))
    else:
        frames = load_drivelm(data[0], image_root, split)
        sets = scene_subsets(frames, seeds)
        how = (f'{seeds} disjoint subsets of {data[0]} ({split} split), its scenes dealt '
               'round-robin')
    picked = [take_frames(s, qa_per_cell) for s in sets]
    for i, p in enumerate(picked):
        if not p:
            raise ValueError(f'data seed {i} has no QA: write more scenes or lower --seeds')
    return picked, how


class CellLog:
    """``OUT/cells.jsonl``: a header line, then one finished (cell, seed) per line."""

    def __init__(self, path: Path, header: Mapping, overwrite: bool) -> None:
        self.path = path
        self.header = json.loads(json.dumps(dict(header)))
        self.done: dict[tuple[str, int], dict] = {}
        if path.exists() and not overwrite:
            self._read()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({'header': self.header}) + '\n')

    def _read(self) -> None:
        raw = self.path.read_bytes()
        good = raw[:raw.rfind(b'\n') + 1]  # a kill mid-write leaves a torn last line
        lines = good.decode().splitlines()
        try:
            header = json.loads(lines[0])['header']
        except (IndexError, json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(f'{self.path} is not a bench-accuracy log: choose another --out '
                             'or pass --overwrite') from None
        diff = sorted(k for k in set(header) | set(self.header)
                      if header.get(k) != self.header.get(k))
        if diff:
            k = diff[0]
            raise ValueError(f'{self.path} was written with {k}={header.get(k)!r}, this run has '
                             f'{k}={self.header.get(k)!r}: rerun with the same options to resume, '
                             'pass --overwrite to start again, or choose another --out')
        for line in lines[1:]:
            rec = json.loads(line)
            self.done[(rec['cell']['key'], rec['seed'])] = rec
        if len(good) != len(raw):
            self.path.write_bytes(good)

    def append(self, record: dict) -> None:
        with open(self.path, 'a') as out:
            out.write(json.dumps(record) + '\n')
            out.flush()
        self.done[(record['cell']['key'], record['seed'])] = record


def sweep(pipeline: Pipeline, seeds: Sequence[Sequence[KeyFrame]], cells: Sequence[Cell],
          options: SweepOptions, log: CellLog, view_weights: Mapping[str, float] | None,
          majority: MajorityAnswers | None, progress: bool = True,
          echo: Callable[[str], None] = print) -> list[dict]:
    """Run every (cell, seed) not in ``log``; return all records, finished ones included."""
    from tqdm import tqdm

    base = RuntimeSettings(max_new_tokens=options.max_new_tokens)
    recall, note = foreground_for(pipeline)
    if note:
        echo(note)
    refs = [BASE_CELL] + ([BLIND_CELL] if options.blind else [])
    jobs = [(c, s) for s in range(len(seeds)) for c in refs + list(cells)]
    todo = [(c, s) for c, s in jobs if (c.key, s) not in log.done]
    if majority is not None:
        for s in range(len(seeds)):
            if (MAJORITY_CELL.key, s) not in log.done:
                log.append({'cell': asdict(MAJORITY_CELL) | {'key': MAJORITY_CELL.key},
                            'seed': s, **majority_record(seeds[s], majority, options.tokenizer)})
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), unit='cell', desc='bench accuracy',
               disable=not progress, dynamic_ncols=True)
    for cell, s in todo:
        bar.set_postfix_str(f'seed {s} {cell.key}')
        settings = cell.settings(base, view_weights)
        record = run_accuracy_cell(pipeline, seeds[s], settings,
                                   batch_size=options.batch_size, tokenizer=options.tokenizer,
                                   recall=None if cell.pruner == BLIND else recall,
                                   blank=cell.pruner == BLIND)
        log.append({'cell': asdict(cell) | {'key': cell.key}, 'seed': s, **record})
        if record['errors']:
            bar.write(f'{cell.key} seed {s}: {record["errors"]} QA failed, e.g. '
                      f'{record["error_example"]}')
        bar.update(1)
    bar.close()
    keys = {(c.key, s) for c, s in jobs} | {(MAJORITY_CELL.key, s) for s in range(len(seeds))}
    return [r for k, r in log.done.items() if k in keys]


# --- summary ------------------------------------------------------------------------------------

@dataclass
class Stat:
    """Mean and sample standard deviation over data seeds (std 0 with one seed)."""

    mean: float | None
    std: float | None
    n: int

    @staticmethod
    def of(values: Iterable[float | None]) -> Stat:
        vals = [float(v) for v in values if v is not None and math.isfinite(v)]
        if not vals:
            return Stat(None, None, 0)
        std = statistics.stdev(vals) if len(vals) > 1 else 0.0
        return Stat(statistics.fmean(vals), std, len(vals))

    def text(self, fmt: str = '.3f', pct: bool = False) -> str:
        if self.mean is None:
            return '—'
        scale = 100.0 if pct else 1.0
        body = format(self.mean * scale, fmt)
        return body if self.n < 2 else f'{body} ± {format(self.std * scale, fmt)}'

    @property
    def interval(self) -> tuple[float, float] | None:
        if self.mean is None:
            return None
        return self.mean - (self.std or 0.0), self.mean + (self.std or 0.0)


def _ratio(a, b):
    return a / b if a is not None and b not in (None, 0) else None


def summarize(records: Sequence[dict]) -> list[dict]:
    """One row per cell: mean ± std over seeds of every figure, retention and speed-up."""
    base = {r['seed']: r for r in records if r['cell']['key'] == BASE_CELL.key}
    groups: dict[str, list[dict]] = {}
    cells: dict[str, dict] = {}
    for r in records:
        groups.setdefault(r['cell']['key'], []).append(r)
        cells[r['cell']['key']] = r['cell']
    rows = []
    for key, recs in groups.items():
        def stat(fn, recs=recs):
            return Stat.of(fn(r) for r in recs)

        def retention(metric, recs=recs):
            return Stat.of(_ratio(metric(r), metric(base[r['seed']])) for r in recs
                           if r['seed'] in base)

        acc = lambda r: r['accuracy']  # noqa: E731
        final = lambda r: (r.get('drivelm') or {}).get('final_score_no_gpt')  # noqa: E731
        families = sorted({f for r in recs for f in r.get('families', {})})
        rows.append({
            'cell': cells[key], 'seeds': len(recs), 'qa': recs[0]['qa'],
            'accuracy': stat(acc), 'accuracy_retention': retention(acc),
            'language': stat(lambda r: r['language']),
            'quality': stat(lambda r: r['quality']),
            'quality_retention': retention(lambda r: r['quality']),
            'drivelm_accuracy': stat(lambda r: (r.get('drivelm') or {}).get('accuracy')),
            'final_score': stat(final), 'final_retention': retention(final),
            'match_f1': stat(lambda r: (r.get('drivelm') or {}).get('match_f1')),
            'l2_avg': stat(lambda r: (r.get('planning') or {}).get('l2_avg')),
            'collision_avg': stat(lambda r: (r.get('planning') or {}).get('collision_avg')),
            'speedup': Stat.of(_ratio(base[r['seed']].get('prefill_ms'), r.get('prefill_ms'))
                               for r in recs if r['seed'] in base and 'prefill_ms' in r),
            'flops_share': stat(lambda r: r.get('flops_share')),
            'foreground_recall': stat(lambda r: r.get('foreground_recall')),
            'tokens_kept': stat(lambda r: r.get('tokens_kept_mean')),
            'tokens_total': stat(lambda r: r.get('tokens_total_mean')),
            'families': {f: {'metric': next(r['families'][f]['metric'] for r in recs
                                            if f in r['families']),
                             'value': Stat.of(r['families'].get(f, {}).get('value')
                                              for r in recs)}
                         for f in families},
            'errors': sum(r.get('errors', 0) for r in recs),
            'seconds': sum(r.get('seconds', 0.0) for r in recs),
        })
    order = {NONE: 0, BLIND: 1, MAJORITY: 2}
    rows.sort(key=lambda row: (order.get(row['cell']['pruner'], 3), row['cell']['prune_layer'],
                               row['cell']['pruner'], row['cell']['allocation'],
                               -row['cell']['keep_ratio']))
    return rows


def is_reference(row: dict) -> bool:
    return row['cell']['pruner'] in (NONE, BLIND, MAJORITY)


def rankings(rows: Sequence[dict], metric: str = 'accuracy_retention') -> list[dict]:
    """Per (prune layer, keep ratio): cells ranked by ``metric``, and whether the top is stable."""
    groups: dict[tuple[int, float], list[dict]] = {}
    for row in rows:
        if not is_reference(row) and row[metric].mean is not None:
            c = row['cell']
            groups.setdefault((c['prune_layer'], c['keep_ratio']), []).append(row)
    out = []
    for (layer, keep), members in sorted(groups.items(), key=lambda g: (g[0][0], -g[0][1])):
        ranked = sorted(members, key=lambda r: -r[metric].mean)
        stable, why = None, 'one cell only'
        if len(ranked) >= 2:
            a, b = ranked[0][metric], ranked[1][metric]
            if min(a.n, b.n) < 2:
                stable, why = None, 'one data seed: no spread, cannot tell'
            else:
                stable = a.interval[0] > b.interval[1]
                why = ('mean ± std intervals of the top two do not overlap' if stable else
                       'mean ± std intervals of the top two overlap')
        out.append({'prune_layer': layer, 'keep_ratio': keep, 'ranked': ranked,
                    'stable': stable, 'why': why})
    return out


def breaking_points(rows: Sequence[dict], threshold: float = BREAK_RETENTION) -> list[str]:
    """Per (pruner, allocation, layer): the largest keep ratio where retention falls below."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if not is_reference(row):
            c = row['cell']
            groups.setdefault((c['prune_layer'], c['pruner'], c['allocation']), []).append(row)
    lines = []
    for (layer, pruner, allocation), members in sorted(groups.items()):
        members.sort(key=lambda r: -r['cell']['keep_ratio'])
        label = members[0]['cell']['pruner'] if allocation == UNIFORM else \
            f'{pruner}+{allocation}'
        broke = next((r for r in members if r['accuracy_retention'].mean is not None
                      and r['accuracy_retention'].mean < threshold), None)
        if broke is None:
            low = members[-1]
            lines.append(f'K={layer} {label}: keeps >= {threshold:.0%} of the unpruned accuracy '
                         f'down to keep {low["cell"]["keep_ratio"]:g} '
                         f'({low["accuracy_retention"].text(".1f", pct=True)}%)')
        else:
            lines.append(f'K={layer} {label}: breaks at keep {broke["cell"]["keep_ratio"]:g} '
                         f'(accuracy retention {broke["accuracy_retention"].text(".1f", True)}%)')
    return lines


def verdict(rows: Sequence[dict]) -> list[str]:
    """Return the verdict: best pruner at keep 0.25 and 0.1, its stability, the 97% claim."""
    lines = []
    for rank in rankings(rows):
        if rank['keep_ratio'] not in (0.25, 0.1):
            continue
        top = rank['ranked'][0]
        nxt = rank['ranked'][1] if len(rank['ranked']) > 1 else None
        stable = {True: 'stable', False: 'NOT stable', None: 'stability unknown'}[rank['stable']]
        text = (f'keep {rank["keep_ratio"]:g}, K={rank["prune_layer"]}: best '
                f'{label_of(top)} keeps '
                f'{top["accuracy_retention"].text(".1f", pct=True)}% of the unpruned accuracy')
        if nxt is not None:
            text += (f', then {label_of(nxt)} {nxt["accuracy_retention"].text(".1f", True)}%'
                     f' ({stable}: {rank["why"]})')
        lines.append(text)
        if rank['keep_ratio'] == 0.1:
            m = top['accuracy_retention'].mean
            holds = 'holds' if m >= CLAIM_RETENTION else 'does NOT hold'
            lines.append(f"  the seeds' claim (>= {CLAIM_RETENTION:.0%} kept at keep 0.1; "
                         f'MVPruner 98.5%) {holds} here at K={rank["prune_layer"]} '
                         f'({100 * m:.1f}%)')
    return lines


def label_of(row: dict) -> str:
    c = row['cell']
    return c['pruner'] if c['allocation'] in (UNIFORM, NONE, BLIND, MAJORITY) else \
        f'{c["pruner"]}+{c["allocation"]}'


def markdown(rows: Sequence[dict]) -> str:
    """Return the main table: one row per cell, figures as mean ± std over the data seeds."""
    head = ['K', 'pruner', 'keep', 'tokens kept', 'accuracy', 'retention', 'final (no GPT)',
            'final ret.', 'L2 avg (m)', 'collision', 'fg recall', 'prefill speed-up',
            'FLOPs share']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for row in rows:
        c = row['cell']
        ref = is_reference(row)
        kept = ('—' if row['tokens_kept'].mean is None else
                f'{row["tokens_kept"].mean:.0f}/{row["tokens_total"].mean:.0f}')
        cells = [
            '—' if ref else str(c['prune_layer']), label_of(row),
            f'{c["keep_ratio"]:g}' if c['pruner'] != MAJORITY else '—', kept,
            row['accuracy'].text('.1f', pct=True), row['accuracy_retention'].text('.1f', True),
            row['final_score'].text('.3f'), row['final_retention'].text('.1f', True),
            row['l2_avg'].text('.2f'), row['collision_avg'].text('.1f', True),
            row['foreground_recall'].text('.1f', True),
            '—' if c['pruner'] in (BLIND, MAJORITY) else row['speedup'].text('.2f'),
            '—' if c['pruner'] in (BLIND, MAJORITY) else row['flops_share'].text('.1f', True),
        ]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def family_markdown(rows: Sequence[dict]) -> str:
    """Per-family scores per cell (means over seeds): exact match %, match F1, language, L2."""
    families: dict[str, str] = {}
    for row in rows:
        for f, v in row['families'].items():
            families.setdefault(f, v['metric'])
    names = list(families)
    head = ['K', 'pruner', 'keep'] + [f'{f} [{families[f]}]' for f in names]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for row in rows:
        c = row['cell']
        vals = []
        for f in names:
            v = row['families'].get(f)
            if v is None or v['value'].mean is None:
                vals.append('—')
            elif v['metric'] == 'exact match':
                vals.append(f'{100 * v["value"].mean:.0f}%')
            else:
                vals.append(f'{v["value"].mean:.2f}')
        first = ['—' if is_reference(row) else str(c['prune_layer']), label_of(row),
                 f'{c["keep_ratio"]:g}']
        lines.append('| ' + ' | '.join(first + vals) + ' |')
    return '\n'.join(lines)


def stat_json(value):
    if isinstance(value, Stat):
        return asdict(value)
    if isinstance(value, dict):
        return {k: stat_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [stat_json(v) for v in value]
    return value


# --- entry point --------------------------------------------------------------------------------

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
    from ..models.load import load_adapter
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
                                 options.diversity, options.blind)
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
              'tokenizer': sweep_options.tokenizer, 'view_weights': view_weights}
    log = CellLog(out / 'cells.jsonl', header, options.overwrite)
    if options.report_only:  # tables and plots of every cell the log holds; no model
        records = list(log.done.values())
        rows = summarize(records)
        print(write_report(out, rows, header, how, ['rebuilt with --report-only from '
                                                    f'{log.path}'], model, records))
        _plots(rows, out, model)
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
    print(f'model {model}; data seeds: {how}; {sum(len(all_qa(s)) for s in seeds)} QA in all, '
          f'{[len(all_qa(s)) for s in seeds]} per seed; {len(cells)} pruned cells + references '
          f'x {len(seeds)} seeds')
    for note in notes:
        print(note)
    records = sweep(pipeline, seeds, cells, sweep_options, log, view_weights, majority,
                    progress=options.progress)
    rows = summarize(records)
    report = write_report(out, rows, header, how, notes, model, records)
    elapsed = time.perf_counter() - started
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


def write_report(out: Path, rows: Sequence[dict], header: Mapping, how: str,
                 notes: Sequence[str], model: str, records: Sequence[dict] = ()) -> str:
    """Write accuracy.json and accuracy.md; return the markdown."""
    ranks = rankings(rows)
    paired = paired_rows(records, BASE_CELL.key)
    for row in rows:
        row.update(paired.get(row['cell']['key'], {}))
    smallest = detectable_difference(paired)
    paired_text = [
        '', '### Paired, all seeds together (95% intervals: bootstrap over key frames)', '',
        *paired_lines(paired, {r['cell']['key']: label_of(r) for r in rows}), '',
        'Smallest difference this run could detect (median half-width of the intervals of the '
        'differences to random): '
        + ('—' if smallest is None else f'±{100 * smallest:.1f} points') + '.']
    text = '\n'.join([
        f'Model: {model}. Data seeds: {how}. Figures: mean ± sample std over the seeds. '
        'Accuracy = closed-form (DriveLM tag 0) QA by our exact-match rule; retention = '
        'cell / unpruned on the same QA; final = DriveLM final score with the GPT term absent, '
        "weights renormalised; prefill speed-up = unpruned (prune + prefill) ms / the cell's "
        'on the same batches, vision encoder NOT included; FLOPs share = analytic prefill '
        'FLOPs / unpruned; fg recall = GT foreground patches kept.',
        '', markdown(rows), *paired_text, '', '### Per family (means over seeds)', '',
        family_markdown(rows), '', '### Rankings by accuracy retention', '',
        *[f'- keep {r["keep_ratio"]:g}, K={r["prune_layer"]}: '
          + ' > '.join(f'{label_of(x)} {x["accuracy_retention"].text(".1f", True)}%'
                       for x in r['ranked'])
          + f' — {"stable" if r["stable"] else "not stable" if r["stable"] is False else "?"}'
          f' ({r["why"]})' for r in ranks],
        '', '### Where each breaks (accuracy retention < '
        f'{BREAK_RETENTION:.0%})', '', *[f'- {line}' for line in breaking_points(rows)],
        '', '### Verdict', '', *[f'- {line}' for line in verdict(rows)],
        *(['', '### Notes', ''] + [f'- {n}' for n in notes] if notes else []),
    ])
    out.mkdir(parents=True, exist_ok=True)
    (out / 'accuracy.md').write_text(text + '\n')
    payload = {'schema': 'drive_vlm_pruned/bench_accuracy', 'version': 1, 'run': dict(header),
               'seeds': how, 'notes': list(notes), 'rows': stat_json(list(rows)),
               'rankings': [{k: (stat_json([label_of(x) for x in v]) if k == 'ranked' else v)
                             for k, v in r.items()} for r in ranks],
               'breaking_points': breaking_points(rows), 'verdict': verdict(rows),
               'detectable_difference': smallest}
    (out / 'accuracy.json').write_text(json.dumps(payload, indent=1) + '\n')
    return text
