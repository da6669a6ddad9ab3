"""
The eval loop: every QA of a DriveLM file through the one ``Pipeline``, batched and resumable.

QA are taken in file order and run ``batch_size`` at a time with ``Pipeline.run_batch``; the
frame's six images are read once and shared by its QA in the batch, and each item's settings
carry its question. Nothing of the frame path is copied here.

Resumable: with an ``items_path``, each answer is appended as a JSON line and flushed as soon
as its batch ends, after a header line naming the run (model, data, settings, blank); a run
that stops keeps what it finished, and ``resume=True`` skips the QA already there (a torn last
line is dropped; a QA that failed is tried again). The header must match, so a resumed run
never mixes settings.

``evaluate`` is the Python API (``drive-vlm eval`` and the accuracy benchmark call it with a
loaded pipeline, so a sweep never reloads the model): it predicts, scores the model, and adds
the baselines of eval/baselines.py as columns of an EvalReport.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
import itertools
from pathlib import Path
import time

import numpy as np

from .baselines import (
    BLIND,
    CONST_VELOCITY,
    constant_velocity_answer,
    MAJORITY,
    MajorityAnswers,
)
from .jsonl_log import LogHints, ResumableLog
from .language import resolve_tokenizer
from .scoring import ColumnScores, is_trajectory_qa, score_column
from .shards import Shard, SINGLE
from ..data.drivelm import all_qa, KeyFrame, load_camera_set, Prediction, QA
from ..pipeline.camera_set import CameraSet
from ..pipeline.pipeline import Pipeline, Result, RuntimeSettings

MODEL = 'model'
ITEM_ERRORS = (ValueError, RuntimeError)  # what one bad QA may raise; it is logged, not fatal
MAX_FAILURES_IN_A_ROW = 16  # more means the run, not a QA, is broken (memory, device): stop


class RunBroken(RuntimeError):
    """Too many QA failed in a row: the cause is the run's, not one question's."""


@dataclass(frozen=True)
class ItemResult:
    """
    One answered QA: what the items file logs per line, and the pipeline's Result.

    ``result`` (this pass only; None for a resumed or failed QA) has the stage timings, kept
    indices and token counts; its ``timings_ms`` are those of the whole pipeline call, shared by
    the items with the same ``batch`` (the call's number within the pass).
    """

    id: str  # noqa: A003 - DriveLM's key name
    question: str
    answer: str
    tokens_kept: int = 0  # visual tokens the LLM saw
    tokens_total: int = 0  # visual tokens before pruning
    generated_tokens: int = 0
    prefill_flops: int = 0
    prefill_flops_unpruned: int = 0
    error: str = ''
    batch: int = -1
    result: Result | None = field(default=None, compare=False, repr=False)

    def prediction(self) -> Prediction:
        return Prediction(self.id, self.question, self.answer)

    def as_json(self) -> dict:
        """Return the logged fields (not the Result)."""
        return {k: v for k, v in asdict(self).items() if k != 'result'}

    @classmethod
    def from_json(cls, record: Mapping) -> ItemResult:
        return cls(**record)


@dataclass
class PredictRun:
    """The answers of one pass (model or blind) and how fast the new ones came."""

    items: list[ItemResult]
    new_items: int = 0
    seconds: float = 0.0

    @property
    def qa_per_s(self) -> float | None:
        return self.new_items / self.seconds if self.seconds > 0 and self.new_items else None

    def answers(self) -> dict[str, str]:
        return {i.id: i.answer for i in self.items}

    def summary(self) -> dict:
        ok = [i for i in self.items if not i.error]
        flops = sum(i.prefill_flops for i in ok)
        full = sum(i.prefill_flops_unpruned for i in ok)
        return {
            'qa': len(self.items), 'new_qa': self.new_items, 'seconds': self.seconds,
            'qa_per_s': self.qa_per_s, 'errors': len(self.items) - len(ok),
            'visual_tokens_kept_mean': _mean([i.tokens_kept for i in ok]),
            'visual_tokens_total_mean': _mean([i.tokens_total for i in ok]),
            'generated_tokens_mean': _mean([i.generated_tokens for i in ok]),
            'prefill_flops_ratio': flops / full if full else None,
        }


def _mean(values) -> float | None:
    return float(np.mean(values)) if values else None


ITEMS_LOG = LogHints(
    'an eval items file',
    exists='answers of an earlier run to this --out: pass --resume to continue it, --overwrite '
           'to start again, or choose another --out',
    not_a_log='choose another --out')


def items_log(path: Path, header: Mapping, resume: bool, overwrite: bool) -> ResumableLog:
    """Open the eval loop's log (eval/jsonl_log.py): one ItemResult per line, keyed by QA id."""
    return ResumableLog(path, header, lambda r: r['id'], ITEMS_LOG, resume, overwrite)


@dataclass(frozen=True)
class PredictOptions:
    """How to run a pass: batch size, blind images, progress bar, resumable log."""

    batch_size: int = 8
    blank: bool = False
    progress: bool = True
    items_path: Path | None = None
    header: Mapping = field(default_factory=dict)
    resume: bool = False
    overwrite: bool = False
    desc: str = 'eval'
    shard: Shard = SINGLE  # a data-parallel launch: this process answers its key frames only


def predict(pipeline: Pipeline, pairs: Sequence[tuple[KeyFrame, QA]],
            settings: RuntimeSettings, options: PredictOptions = PredictOptions()) -> PredictRun:
    """
    Answer every QA of ``pairs`` with the pipeline (module doc); order follows ``pairs``.

    Under a data-parallel launch (eval/shards.py) this process answers its key frames, logs
    them to ``<items stem>.rank{r}of{N}.jsonl``, and returns every process's answers merged.
    """
    shard = options.shard
    if shard.world == 1:
        return _answer(pipeline, pairs, settings, options)
    path = options.items_path
    if path is not None:
        path = path.with_name(path.stem + shard.suffix + path.suffix)
    error = ''
    try:
        run = _answer(pipeline, shard.take(pairs), settings,
                      replace(options, items_path=path, progress=options.progress and shard.main))
    except (RunBroken, ValueError) as err:  # every process must reach the gather
        run, error = PredictRun([]), f'{type(err).__name__}: {err}'
    parts = shard.gather((run, error))
    failed = [(rank, e) for rank, (_, e) in enumerate(parts) if e]
    if failed:
        rank, e = failed[0]
        raise RunBroken(f'process {rank} of {shard.world} failed: {e}')
    items = {i.id: i for part, _ in parts for i in part.items}
    return PredictRun([items[qa.id] for _, qa in pairs], sum(p.new_items for p, _ in parts),
                      max(p.seconds for p, _ in parts))


def _answer(pipeline: Pipeline, pairs: Sequence[tuple[KeyFrame, QA]],
            settings: RuntimeSettings, options: PredictOptions) -> PredictRun:
    from tqdm import tqdm

    if options.batch_size < 1:
        raise ValueError(f'batch_size={options.batch_size} must be >= 1')
    settings.validate(pipeline.shape.layers)  # a bad setting fails once, not per QA
    log = None
    if options.items_path is not None:
        header = dict(options.header, blank=options.blank)
        log = items_log(options.items_path, header, options.resume, options.overwrite)
    done = {k: ItemResult.from_json(r) for k, r in log.done.items()} if log else {}
    # a QA that failed before is tried again; its new line supersedes the old one
    todo = [(f, qa) for f, qa in pairs if qa.id not in done or done[qa.id].error]
    bar = tqdm(total=len(pairs), initial=len(pairs) - len(todo), unit='QA', desc=options.desc,
               disable=not options.progress, dynamic_ncols=True)
    cache: dict[tuple[str, str], CameraSet] = {}
    # pipeline-call numbers stay unique when the processes' items are merged
    calls = itertools.count(options.shard.rank, options.shard.world)
    start, failures = time.perf_counter(), 0
    for b in range(0, len(todo), options.batch_size):
        chunk = todo[b:b + options.batch_size]
        cache = _camera_sets(chunk, cache, options.blank)
        results = _run_chunk(pipeline, chunk, cache, settings, calls)
        for item in results:
            done[item.id] = item
            failures = failures + 1 if item.error else 0
        if log:
            log.append([item.as_json() for item in results])
        bar.update(len(chunk))
        if failures >= MAX_FAILURES_IN_A_ROW:
            bar.close()
            raise RunBroken(f'{failures} QA in a row failed, the last with {item.error}; '
                            'fix the cause and run again with --resume (failed QA are '
                            'retried)')
    seconds = time.perf_counter() - start
    bar.close()
    return PredictRun([done[qa.id] for _, qa in pairs], len(todo), seconds)


def _camera_sets(chunk, cache, blank: bool) -> dict[tuple[str, str], CameraSet]:
    """Keep the chunk's frames, reading only those the previous chunk did not have."""
    out = {}
    for frame, _ in chunk:
        key = (frame.scene, frame.frame)
        if key not in out:
            out[key] = cache[key] if key in cache else load_camera_set(frame, blank)
    return out


def _run_chunk(pipeline: Pipeline, chunk, cache, settings: RuntimeSettings,
               calls: Iterator[int]) -> list[ItemResult]:
    sets = [cache[(f.scene, f.frame)] for f, _ in chunk]
    per_item = [replace(settings, question=qa.question) for _, qa in chunk]
    try:
        results = pipeline.run_batch(sets, per_item)
    except ITEM_ERRORS as err:
        if len(chunk) > 1:  # find the QA that fails by running each alone
            return [r for i in range(len(chunk))
                    for r in _run_chunk(pipeline, chunk[i:i + 1], cache, settings, calls)]
        _, qa = chunk[0]  # this QA alone fails: log it and go on with the rest
        return [ItemResult(qa.id, qa.question, '', error=f'{type(err).__name__}: {err}')]
    batch = next(calls)
    return [ItemResult(qa.id, qa.question, r.answer, sum(r.tokens_after), sum(r.tokens_before),
                       r.generated_tokens, r.prefill_flops, r.prefill_flops_unpruned,
                       batch=batch, result=r)
            for (_, qa), r in zip(chunk, results)]


@dataclass
class EvalReport:
    """Scores of the model and its baselines, the predictions, and how the run went."""

    columns: dict[str, ColumnScores]
    predictions: list[Prediction]
    run: dict
    notes: list[str] = field(default_factory=list)
    blind_predictions: list[Prediction] | None = None

    def as_json(self) -> dict:
        return {
            'schema': 'drive_vlm_pruned/eval_metrics',
            'version': 1,
            'run': self.run,
            'columns': {k: v.as_json() for k, v in self.columns.items()},
            'notes': self.notes,
        }


def baseline_columns(pairs: Sequence[tuple[KeyFrame, QA]], majority: MajorityAnswers | None,
                     tokenizer: str, notes: list[str]) -> dict[str, ColumnScores]:
    """Score the majority answers (when given) and constant velocity on ``pairs``."""
    columns = {}
    if majority is not None:
        answers = {qa.id: majority.answer(qa) for _, qa in pairs}
        columns[MAJORITY] = score_column(MAJORITY, pairs, answers, tokenizer)
        notes.append(f'majority answers per question type from {majority.source}')
    cv = {qa.id: a for f, qa in pairs if is_trajectory_qa(f, qa)
          and (a := constant_velocity_answer(f)) is not None}
    if cv:
        columns[CONST_VELOCITY] = score_column(CONST_VELOCITY, pairs, cv, tokenizer,
                                               drivelm=False)
    return columns


def only_families(pairs: list[tuple[KeyFrame, QA]], families: Sequence[str]
                  ) -> list[tuple[KeyFrame, QA]]:
    """Keep the QA of ``families`` (all when empty); ValueError naming those the data has."""
    if not families:
        return pairs
    present = {qa.family for _, qa in pairs if qa.family}
    unknown = sorted(set(families) - present)
    if unknown:
        have = ', '.join(sorted(present)) or 'no families (DriveLM tags only)'
        raise ValueError(f'--family {", ".join(unknown)}: no QA of the data has that family; '
                         f'it has {have}')
    return [(frame, qa) for frame, qa in pairs if qa.family in families]


def evaluate(pipeline: Pipeline, frames: Sequence[KeyFrame], settings: RuntimeSettings, *,
             batch_size: int = 8, limit: int = 0, families: Sequence[str] = (),
             blind: bool = False, with_blind: bool = False,
             majority: MajorityAnswers | None = None, tokenizer: str = 'auto',
             progress: bool = True, items_path: Path | None = None,
             header: Mapping | None = None,
             resume: bool = False, overwrite: bool = False, shard: Shard = SINGLE,
             log: Callable[[str], None] = lambda _: None) -> EvalReport:
    """
    Evaluate ``pipeline`` on the QA of ``frames`` and its baselines; return an EvalReport.

    ``blind``: this pass itself runs on blanked images (its column is 'blind');
    ``with_blind``: also run a blind pass (items log ``<items stem>.blind.jsonl``) for a 'blind'
    column. ``majority``: the majority answers to score (baselines.fit_majority); None leaves
    the column out. ``limit``: only the first N QA. ``families``: only the QA of these
    question families (all when empty), e.g. the planning question alone. ``items_path``: the
    resumable log (module doc), None for none. The tokenizer is resolved once ('auto': PTB when
    Java is found). ``shard``: under a data-parallel launch every process answers its key
    frames and all of them return the same report (eval/shards.py).
    """
    tokenizer = resolve_tokenizer(tokenizer)
    items_path = Path(items_path) if items_path is not None else None
    pairs = only_families(all_qa(frames), families)
    if limit:
        pairs = pairs[:limit]
    if not pairs:
        raise ValueError('the data has no QA to evaluate')
    label = BLIND if blind else MODEL
    base = PredictOptions(batch_size, blind, progress, items_path, header or {}, resume,
                          overwrite, label, shard)
    run = predict(pipeline, pairs, settings, base)
    notes, columns = [], {}
    runs = {label: run}
    if with_blind and not blind:
        blind_path = None if items_path is None else items_path.with_suffix('.blind.jsonl')
        runs[BLIND] = predict(pipeline, pairs, settings,
                              replace(base, blank=True, items_path=blind_path, desc=BLIND))
    for name, r in runs.items():
        cut = sum(i.generated_tokens >= settings.max_new_tokens for i in r.items)
        if cut:
            notes.append(f'{name}: {cut} of {len(r.items)} answers stopped at max_new_tokens='
                         f'{settings.max_new_tokens} (cut short, or never ended): raise it if '
                         'real answers are longer')
        failed = [i for i in r.items if i.error]
        if failed:
            notes.append(f'{name}: {len(failed)} QA failed and count as empty answers, e.g. '
                         f'{failed[0].id}: {failed[0].error}')
    graded = any(qa.answer for _, qa in pairs)
    if not graded:
        notes.append('no ground-truth answers (a q-only file): predictions written, nothing '
                     'scored')
    else:
        for name, r in runs.items():
            columns[name] = score_column(name, pairs, r.answers(), tokenizer)
        columns.update(baseline_columns(pairs, majority, tokenizer, notes))
    info = {
        'label': label,
        'tokenizer': tokenizer,
        'settings': {k: v for k, v in asdict(settings).items() if k != 'question'},
        'frames': len({(f.scene, f.frame) for f, _ in pairs}),
        'passes': {k: r.summary() for k, r in runs.items()},
        **{k: v for k, v in (header or {}).items() if k not in ('settings',)},
    }
    report = EvalReport(columns, [i.prediction() for i in run.items], info, notes)
    if BLIND in runs and not blind:
        report.blind_predictions = [i.prediction() for i in runs[BLIND].items]
    return report
