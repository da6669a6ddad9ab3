"""
The sweep of ``drive-vlm bench accuracy``: run and score each (cell, data seed), resumably.

Per cell: the eval loop's answers scored by eval/scoring.py and search/objective.py, the
pipeline's prune + prefill and vision timings per batch, and the foreground recall of the kept
tokens against the GT masks. Finished (cell, seed) records go to ``OUT/cells.jsonl``
(``CellLog``); a rerun skips them. See bench/accuracy.py for the sweep as a whole.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
import json
from pathlib import Path
import time

import numpy as np

from .accuracy_cells import BASE_CELL, BLIND, BLIND_CELL, Cell, MAJORITY_CELL
from .accuracy_defaults import (
    DEFAULT_KEEP_RATIOS,
    DEFAULT_PRUNE_LAYERS,
    DEFAULT_PRUNERS,
    DEFAULT_QA_PER_CELL,
    DEFAULT_SEEDS,
)
from .accuracy_paired import item_scores
from ..data.drivelm import all_qa, KeyFrame, load_drivelm
from ..eval.baselines import MajorityAnswers
from ..eval.runner import predict, PredictOptions
from ..eval.scoring import score_column
from ..pipeline.pipeline import Pipeline, RuntimeSettings
from ..search.objective import score_answers
from ..search.qa_sets import batch_order, scene_subsets, take_frames


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
