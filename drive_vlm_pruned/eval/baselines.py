"""
Baselines that every score is reported beside (shared docs/eval.md).

- Blind: the same model and pipeline with every camera image blanked to black (all zeros, the
  real size; data/drivelm.load_camera_set(blank=True) never reads a pixel). It runs through
  eval/runner.py like the model; this module only names it.
- Majority: per question type, the most common ground-truth answer of a reference set (the
  train split when there is one, else the evaluated file itself; the report says which). The
  type is our family (``type``) or, in real DriveLM files, the question with its c-tags and
  numbers masked (its template). A type the reference never saw gets the most common answer of
  the QA's category (perception / prediction / planning / behavior).
- Constant velocity: the ego keeps the velocity of its last history step (the displacement from
  t-0.5 s to t, ego frame at t) for all 6 future steps of 0.5 s; scored only on planning QA.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
import re

from ..data.drivelm import CTAG, KeyFrame, QA
from ..pipeline.trajectory import format_trajectory, WAYPOINTS

BLIND, MAJORITY, CONST_VELOCITY = 'blind', 'majority', 'const_velocity'
_NUMBER = re.compile(r'-?\d+(?:\.\d+)?')


def question_type(qa: QA) -> str:
    """Return the QA's type: its family, else its question template (module doc)."""
    if qa.family:
        return qa.family
    return _NUMBER.sub('#', CTAG.sub('<c>', qa.question))


@dataclass(frozen=True)
class MajorityAnswers:
    """The majority answer per question type and per category, and where they came from."""

    by_type: dict[str, str]
    by_category: dict[str, str]
    source: str

    def answer(self, qa: QA) -> str:
        return self.by_type.get(question_type(qa), self.by_category.get(qa.category, ''))


def fit_majority(frames: Iterable[KeyFrame], source: str) -> MajorityAnswers | None:
    """Count answers per type in ``frames``; None when it has no answers (a q-only file)."""
    answered = [qa for frame in frames for qa in frame.qa if qa.answer]
    if not answered:
        return None
    return MajorityAnswers(_majority_by(answered, question_type),
                           _majority_by(answered, lambda qa: qa.category), source)


def _majority_by(items: Iterable[QA], key: Callable[[QA], str]) -> dict[str, str]:
    """Return the most common answer per ``key`` of the answered ``items``."""
    counts: dict[str, Counter] = {}
    for qa in items:
        counts.setdefault(key(qa), Counter())[qa.answer] += 1
    # most_common keeps first-seen order among ties: deterministic for a given file
    return {k: c.most_common(1)[0][0] for k, c in counts.items()}


def constant_velocity(history: Sequence[Sequence[float]], steps: int = WAYPOINTS
                      ) -> tuple[tuple[float, float], ...] | None:
    """Extrapolate the last history step (module doc); None with fewer than two points."""
    if len(history) < 2:
        return None
    (x0, y0), (x1, y1) = history[-2][:2], history[-1][:2]
    vx, vy = x1 - x0, y1 - y0  # metres per 0.5 s step
    return tuple((x1 + vx * k, y1 + vy * k) for k in range(1, steps + 1))


def constant_velocity_answer(frame: KeyFrame) -> str | None:
    """Return the constant-velocity trajectory as a planning answer, or None without history."""
    if frame.gt is None:
        return None
    points = constant_velocity(frame.gt.ego_history)
    return None if points is None else format_trajectory(points)


def fit_question_prior(frames: Iterable[KeyFrame]) -> dict[str, str]:
    """
    Return the majority answer of every question text (the question prior of issue 28).

    It is the best a model that reads only the question can do, given the answers of
    ``frames``. A per-camera question names its class and camera, so this is the majority
    answer of that class in that camera; fit it on other frames than those it is scored on.
    """
    return _majority_by((qa for frame in frames for qa in frame.qa if qa.answer),
                        lambda qa: qa.question)
