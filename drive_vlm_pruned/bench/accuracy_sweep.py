"""
The sweep of ``drive-vlm bench accuracy``: run and score each (cell, data seed), resumably.

Per cell: the eval loop's answers scored by eval/scoring.py and search/objective.py, and from
the Result each answer carries, the prune + prefill and vision timings per pipeline call and
the foreground recall of the kept tokens against the GT masks (eval/foreground_recall.py).
Finished (cell, seed) records go to ``OUT/cells.jsonl`` (``cell_log``, eval/jsonl_log.py); a
rerun skips them. See bench/accuracy.py for the sweep as a whole.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
import time

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
from ..eval.foreground_recall import FrameForeground
from ..eval.jsonl_log import LogHints, ResumableLog
from ..eval.runner import ItemResult, predict, PredictOptions
from ..eval.scoring import score_column
from ..eval.shards import Shard, SINGLE
from ..pipeline.pipeline import Pipeline, RuntimeSettings
from ..pruning.foreground import Recall
from ..search.objective import score_answers
from ..search.qa_sets import batch_order, scene_subsets, take_frames


def run_accuracy_cell(pipeline: Pipeline, frames: Sequence[KeyFrame],
                      settings: RuntimeSettings, *, batch_size: int, tokenizer: str,
                      recall: FrameForeground | None = None, blank: bool = False,
                      shard: Shard = SINGLE) -> dict:
    """
    Answer and score the QA of ``frames`` with ``settings``; return the cell's record.

    Sharded (eval/shards.py), each process answers its key frames and every process scores
    the merged answers; ``seconds`` is then the slowest process's, the timings are summed.
    """
    pairs = all_qa(frames)
    order = batch_order(pairs)
    start = time.perf_counter()
    run = predict(pipeline, order, settings,
                  PredictOptions(batch_size=batch_size, blank=blank, progress=False,
                                 shard=shard))
    seconds = time.perf_counter() - start
    record = score_record(pairs, run.answers(), tokenizer)
    record.update(item_scores(pairs, run.answers()))  # for the paired statistics
    summary = run.summary()
    timings = batch_timings(run.items)
    fg = Recall(0, 0)
    if recall is not None:
        frame_of = {qa.id: frame for frame, qa in order}
        for item in run.items:
            if item.result is not None:
                fg = fg + recall.recall(frame_of[item.id], item.result)
    record.update({
        'errors': summary['errors'], 'seconds': seconds,
        'error_example': next((f'{i.id}: {i.error}' for i in run.items if i.error), ''),
        'prefill_ms': float(sum(t.get('prune', 0.0) + t.get('prefill', 0.0) for t in timings)),
        'vision_ms': float(sum(t.get('vision', 0.0) for t in timings)),
        'batches': len(timings), 'flops_share': summary['prefill_flops_ratio'],
        'tokens_kept_mean': summary['visual_tokens_kept_mean'],
        'tokens_total_mean': summary['visual_tokens_total_mean'],
        'generated_tokens_mean': summary['generated_tokens_mean'],
        'foreground_recall': fg.kept / fg.total if fg.total else None,
    })
    return record


def batch_timings(items: Sequence[ItemResult]) -> list[dict[str, float]]:
    """Return the stage timings of each pipeline call of a pass, once per call (not per QA)."""
    first: dict[int, dict[str, float]] = {}
    for item in items:
        if item.result is not None and item.batch not in first:
            first[item.batch] = item.result.timings_ms
    return [first[b] for b in sorted(first)]


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
    # PLANNING answers decoded under the waypoint grammar (pipeline/waypoint_grammar.py)
    waypoint_grammar: bool = True


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


CELL_LOG = LogHints('a bench-accuracy log',
                    mismatch='rerun with the same options to resume, pass --overwrite to start '
                             'again, or choose another --out')


def cell_log(path: Path, header: Mapping, overwrite: bool) -> ResumableLog:
    """``OUT/cells.jsonl`` (eval/jsonl_log.py): one finished (cell, seed) record per line."""
    return ResumableLog(path, header, lambda r: (r['cell']['key'], r['seed']), CELL_LOG,
                        overwrite=overwrite)


def sweep(pipeline: Pipeline, seeds: Sequence[Sequence[KeyFrame]], cells: Sequence[Cell],
          options: SweepOptions, log: ResumableLog | None,
          view_weights: Mapping[str, float] | None, majority: MajorityAnswers | None,
          progress: bool = True, echo: Callable[[str], None] = print,
          shard: Shard = SINGLE) -> list[dict]:
    """
    Run every (cell, seed) not in ``log``; return all records, finished ones included.

    Under a data-parallel launch (eval/shards.py) every process runs every cell on its key
    frames; the main process holds ``log`` (the others pass None), writes the merged records
    and returns them (the others return []).
    """
    from tqdm import tqdm

    base = RuntimeSettings(max_new_tokens=options.max_new_tokens,
                           waypoint_grammar=options.waypoint_grammar)
    recall, note = FrameForeground.for_pipeline(pipeline)
    if note and shard.main:
        echo(note)
    refs = [BASE_CELL] + ([BLIND_CELL] if options.blind else [])
    jobs = [(c, s) for s in range(len(seeds)) for c in refs + list(cells)]
    done = shard.gather(set(log.done) if log is not None else set())[0]  # the main's log
    todo = [(c, s) for c, s in jobs if (c.key, s) not in done]
    if majority is not None and log is not None:
        for s in range(len(seeds)):
            if (MAJORITY_CELL.key, s) not in log.done:
                log.append([{'cell': asdict(MAJORITY_CELL) | {'key': MAJORITY_CELL.key},
                             'seed': s, **majority_record(seeds[s], majority, options.tokenizer)}])
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), unit='cell', desc='bench accuracy',
               disable=not (progress and shard.main), dynamic_ncols=True)
    for cell, s in todo:
        bar.set_postfix_str(f'seed {s} {cell.key}')
        settings = cell.settings(base, view_weights)
        record = run_accuracy_cell(pipeline, seeds[s], settings,
                                   batch_size=options.batch_size, tokenizer=options.tokenizer,
                                   recall=None if cell.pruner == BLIND else recall,
                                   blank=cell.pruner == BLIND, shard=shard)
        if log is not None:
            log.append([{'cell': asdict(cell) | {'key': cell.key}, 'seed': s, **record}])
        if record['errors'] and shard.main:
            bar.write(f'{cell.key} seed {s}: {record["errors"]} QA failed, e.g. '
                      f'{record["error_example"]}')
        bar.update(1)
    bar.close()
    if log is None:
        return []
    keys = {(c.key, s) for c, s in jobs} | {(MAJORITY_CELL.key, s) for s in range(len(seeds))}
    return [r for k, r in log.done.items() if k in keys]
