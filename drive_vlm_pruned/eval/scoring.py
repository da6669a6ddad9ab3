"""
Score one set of answers (a column of the report): DriveLM metrics, per-family rows, planning.

A column is the model, the blind run, the majority answers or the constant-velocity planner;
each gives a mapping QA id -> answer text and is scored by the same code. QA without an answer
in the mapping are left out (the constant-velocity column answers planning QA only).

- DriveLM metrics: eval/metrics_drivelm.py, by tag, graph-gated, as the official script.
- Per family (our ``type``; in real DriveLM files the category and tag): one metric per family,
  no gating: exact match by our tolerant rule (eval/families.py) for tag 0, match F1 for tag 3,
  the language score for tag 2, L2 / collision for trajectory QA; tag-1 (GPT) families are
  listed as not scored.
- Planning: QA of family ``planning_trajectory`` (or, in files without families, a QA whose
  ground-truth answer parses as 6 waypoints in a frame with ``gt``) are parsed
  (pipeline/trajectory.py) and scored against the frame's GT future trajectory and agent boxes
  (eval/planning.py): L2 and collision at 1 / 2 / 3 s, cumulative (ST-P3) convention, and Avg
  = mean of the three. Unparsed answers are counted, not scored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from .families import answers_match
from .language import language_score, language_scores
from .metrics_drivelm import DriveLMScores, match_points, score_drivelm, scored_items
from .planning import HORIZONS_S, PlanningTruth, score_trajectory
from ..data.drivelm import FrameGT, KeyFrame, QA
from ..pipeline.trajectory import parse_trajectory

TRAJECTORY_FAMILY = 'planning_trajectory'
L2_CONVENTION = ('ST-P3 cumulative: L2 at T s = mean error over steps 1..2T (0.5 s apart); '
                 'avg = mean of 1, 2, 3 s')
EXACT, MATCH, LANGUAGE, PLANNING, GPT = ('exact match', 'match F1', 'language score',
                                         'L2 / collision', 'GPT (absent)')
Pair = tuple[KeyFrame, QA]


def is_trajectory_qa(frame: KeyFrame, qa: QA) -> bool:
    """Return True for a planning QA scored by L2 / collision (module doc)."""
    if qa.family is not None:
        return qa.family == TRAJECTORY_FAMILY
    return bool(frame.gt and frame.gt.future_trajectory) and parse_trajectory(qa.answer).ok


def planning_truth(gt: FrameGT) -> PlanningTruth:
    """Return the frame's GT path and per-step agent boxes for eval/planning.py."""
    boxes = [[(a.center[0], a.center[1], a.yaw, a.size[0], a.size[1]) for a in step]
             for step in gt.future_agents]
    return PlanningTruth.from_step_boxes(gt.future_trajectory, boxes)


@dataclass
class PlanningSummary:
    """L2 (m) and collision rate (0..1) over the planning QA of a column."""

    items: int = 0
    parsed: int = 0
    l2: dict[str, float | None] = field(default_factory=dict)
    collision: dict[str, float | None] = field(default_factory=dict)
    convention: str = L2_CONVENTION

    def as_json(self) -> dict:
        return asdict(self)


def score_planning(pairs: Sequence[Pair], answers: Mapping[str, str]) -> PlanningSummary | None:
    """Score every answered trajectory QA that has GT; None when there is none."""
    l2: dict[str, list[float]] = {f'{t}s': [] for t in HORIZONS_S}
    coll: dict[str, list[float]] = {f'{t}s': [] for t in HORIZONS_S}
    summary = PlanningSummary()
    for frame, qa in pairs:
        if qa.id not in answers or frame.gt is None or not frame.gt.future_trajectory or \
                not is_trajectory_qa(frame, qa):
            continue
        summary.items += 1
        parsed = parse_trajectory(answers[qa.id])
        if not parsed.ok:
            continue
        summary.parsed += 1
        score = score_trajectory(parsed.points, planning_truth(frame.gt))
        for key, value in score.l2.items():
            if value is not None:
                l2[key].append(value)
        for key, value in score.collision.items():
            if value is not None:
                coll[key].append(value)
    if not summary.items:
        return None
    summary.l2 = _with_avg(l2)
    summary.collision = _with_avg(coll)
    return summary


def _with_avg(values: dict[str, list[float]]) -> dict[str, float | None]:
    out = {k: float(np.mean(v)) if v else None for k, v in values.items()}
    present = [v for v in out.values() if v is not None]
    out['avg'] = float(np.mean(present)) if len(present) == len(HORIZONS_S) else None
    return out


@dataclass
class FamilyScore:
    """One row of the per-family table: the family's metric over its answered QA."""

    metric: str
    n: int
    value: float | None  # exact match 0..1, match F1 0..100, language 0..1, L2 avg (m)
    extra: dict = field(default_factory=dict)


def family_key(qa: QA) -> str:
    """Return our family name, or ``<category> (tag k)`` for real DriveLM QA."""
    if qa.family:
        return qa.family
    return f'{qa.category} (tag {",".join(map(str, qa.tags)) or "none"})'


def family_metric(frame: KeyFrame, qa: QA) -> str:
    if is_trajectory_qa(frame, qa):
        return PLANNING
    for tag, metric in ((0, EXACT), (3, MATCH), (2, LANGUAGE), (1, GPT)):
        if tag in qa.tags:
            return metric
    return EXACT


def score_families(pairs: Sequence[Pair], answers: Mapping[str, str],
                   tokenizer: str) -> dict[str, FamilyScore]:
    """Score each family by its metric (module doc), families in order of first appearance."""
    groups: dict[str, list[Pair]] = {}
    for frame, qa in pairs:
        if qa.id in answers:
            groups.setdefault(family_key(qa), []).append((frame, qa))
    out = {}
    for name, members in groups.items():
        metric = family_metric(*members[0])
        out[name] = _family(metric, members, answers, tokenizer)
    return out


def _family(metric: str, members: Sequence[Pair], answers: Mapping[str, str],
            tokenizer: str) -> FamilyScore:
    preds = [answers[qa.id] for _, qa in members]
    truths = [qa.answer for _, qa in members]
    n = len(members)
    if metric == EXACT:
        return FamilyScore(metric, n, float(np.mean([answers_match(p, t)
                                                     for p, t in zip(preds, truths)])))
    if metric == MATCH:
        return FamilyScore(metric, n, float(np.mean([match_points(p, t).f1 * 100
                                                     for p, t in zip(preds, truths)])))
    if metric == LANGUAGE:
        scores = language_scores(preds, truths, tokenizer)
        return FamilyScore(metric, n, language_score(scores), {'language': scores})
    if metric == PLANNING:
        plan = score_planning(members, answers)
        if plan is None:  # trajectory QA in frames without gt: nothing to score against
            return FamilyScore(metric, n, None, {'note': 'no ground-truth trajectory'})
        return FamilyScore(metric, n, plan.l2.get('avg'),
                           {'parsed': plan.parsed, 'collision_avg': plan.collision.get('avg')})
    return FamilyScore(metric, n, None, {'note': 'needs an LLM judge; not scored offline'})


@dataclass
class ColumnScores:
    """Everything one set of answers scores."""

    label: str
    answered: int
    drivelm: DriveLMScores | None
    families: dict[str, FamilyScore]
    planning: PlanningSummary | None

    def as_json(self) -> dict:
        return {
            'label': self.label,
            'answered': self.answered,
            'drivelm': self.drivelm.as_json() if self.drivelm else None,
            'families': {k: asdict(v) for k, v in self.families.items()},
            'planning': self.planning.as_json() if self.planning else None,
        }


def score_column(label: str, pairs: Sequence[Pair], answers: Mapping[str, str],
                 tokenizer: str, drivelm: bool = True) -> ColumnScores:
    """Score ``answers`` on ``pairs``; ``drivelm=False`` skips the official metrics."""
    official = score_drivelm(scored_items(pairs, answers), tokenizer) if drivelm else None
    return ColumnScores(label, sum(qa.id in answers for _, qa in pairs), official,
                        score_families(pairs, answers, tokenizer),
                        score_planning(pairs, answers))
