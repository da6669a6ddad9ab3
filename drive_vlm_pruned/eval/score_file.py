"""
Score an existing predictions file without a model: ``drive-vlm eval --score PREDS --data GT``.

The predictions are DriveLM's format, a JSON list of ``{"id", "question", "answer"}`` as
DriveLM's ``challenge/output.json`` has it, so the answers of any model can be scored. They go
through the same scorer as ``drive-vlm eval``'s own answers (eval/scoring.py): DriveLM's metrics
with the same graph gating (a frame's first question's matched points decide which later
questions count), the per-family accuracy, trajectory L2 / collision, and beside them the
majority answers and constant velocity. As in DriveLM's ``challenge/evaluation.py``, which reads
``pred_file[id]`` for every ground-truth QA, each QA needs a prediction: a missing one is an
error that names it, and so is a prediction whose id the ground truth does not have (the file
belongs to other data).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .baselines import MajorityAnswers
from .runner import baseline_columns, EvalReport, MODEL
from .scoring import score_column
from ..data.drivelm import all_qa, KeyFrame, Prediction


def score_file(frames: Sequence[KeyFrame], predictions: Sequence[Prediction], *,
               majority: MajorityAnswers | None, tokenizer: str, source: Path,
               label: str = MODEL) -> EvalReport:
    """Score ``predictions`` on the QA of ``frames`` (module doc); ValueError names a mismatch."""
    pairs = all_qa(frames)
    known = {qa.id for _, qa in pairs}
    answers = {p.id: p.answer for p in predictions}
    unknown = [i for i in answers if i not in known]
    if unknown:
        raise ValueError(
            f'{source}: {len(unknown)} of {len(answers)} predictions have ids the ground truth '
            f'does not have (e.g. {unknown[0]!r}): pass the --data (and --split) the '
            'predictions were made for')
    if not any(qa.answer for _, qa in pairs):
        raise ValueError('the --data file has no ground-truth answers (a q-only file): '
                         'nothing to score against')
    missing = [qa.id for _, qa in pairs if qa.id not in answers]
    if missing:
        raise ValueError(
            f'{source}: {len(missing)} of {len(known)} ground-truth QA have no prediction (e.g. '
            f'{missing[0]!r}); DriveLM scores every QA: predict them all, or pass the --data '
            '(and --split) the predictions were made for')
    notes: list[str] = []
    columns = {label: score_column(label, pairs, answers, tokenizer)}
    columns.update(baseline_columns(pairs, majority, tokenizer, notes))
    run = {'label': label, 'tokenizer': tokenizer, 'predictions': str(source),
           'answered': len(answers), 'qa': len(known),
           'frames': len({(f.scene, f.frame) for f, _ in pairs})}
    return EvalReport(columns, list(predictions), run, notes)
