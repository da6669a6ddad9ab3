"""
Prune2Drive's search objective: ``0.5 * language + 0.5 * accuracy - penalty * sum(rates)``.

Prune2Drive's released search script scores single-letter answers by accuracy and every other
answer by the language score. Our split of the QA (``is_closed_form``):

- **accuracy**: the closed-form answers, i.e. DriveLM tag 0. In our synthetic data these are the
  families ``exists``, ``count``, ``nearest_ahead``, ``in_moving_direction``, ``safe_action`` and
  ``behavior_mc`` (yes/no, digits, class + distance band, fixed phrases, letters). Scored by our
  tolerant exact match (eval/families.py: ``Yes.`` = ``yes``, numbers within 0.01 + 1%),
  micro-averaged over the QA.
- **language**: the rest, i.e. ``important_objects`` (tag 3), ``planning_trajectory`` and
  ``behavior`` (tag 2), and in real DriveLM files every QA without tag 0. Scored together by
  DriveLM's language term (eval/language.py: mean(BLEU-1..4) / 3 + ROUGE-L / 3 + CIDEr / 10 / 3).

When a set has QA of one kind only (the planted test set: all closed-form), the missing term
is left out and the other gets the whole weight, so the objective stays on the same 0..1 scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ..data.drivelm import KeyFrame, QA
from ..eval.families import answers_match
from ..eval.language import language_score, language_scores

ACCURACY_TAG = 0
LANGUAGE_WEIGHT = 0.5
ACCURACY_WEIGHT = 0.5
DEFAULT_PENALTY = 0.03  # lambda of Prune2Drive's released search


def is_closed_form(qa: QA) -> bool:
    """Return True for a QA scored by accuracy (DriveLM tag 0; module doc)."""
    return ACCURACY_TAG in qa.tags


@dataclass(frozen=True)
class AnswerScore:
    """The two answer terms of the objective and how many QA each covers."""

    accuracy: float | None
    language: float | None
    accuracy_qa: int
    language_qa: int

    @property
    def quality(self) -> float:
        """``0.5 * language + 0.5 * accuracy``, renormalised over the terms present."""
        terms = [(w, v) for w, v in ((LANGUAGE_WEIGHT, self.language),
                                     (ACCURACY_WEIGHT, self.accuracy)) if v is not None]
        if not terms:
            raise ValueError('no QA was scored: the objective needs at least one answered QA')
        return sum(w * v for w, v in terms) / sum(w for w, _ in terms)

    def as_json(self) -> dict:
        return {**asdict(self), 'quality': self.quality}


def score_answers(pairs: Sequence[tuple[KeyFrame, QA]], answers: Mapping[str, str],
                  tokenizer: str) -> AnswerScore:
    """Score ``answers`` (QA id -> text) on ``pairs`` by the module's split of the QA."""
    closed = [qa for _, qa in pairs if is_closed_form(qa)]
    rest = [qa for _, qa in pairs if not is_closed_form(qa)]
    accuracy = (float(np.mean([answers_match(answers.get(qa.id, ''), qa.answer)
                               for qa in closed])) if closed else None)
    language = language_score(language_scores([answers.get(qa.id, '') for qa in rest],
                                              [qa.answer for qa in rest], tokenizer))
    return AnswerScore(accuracy, language, len(closed), len(rest))


@dataclass(frozen=True)
class ObjectiveTerms:
    """One trial's objective and its parts."""

    answers: AnswerScore
    rate_sum: float
    penalty: float

    @property
    def value(self) -> float:
        return self.answers.quality - self.penalty * self.rate_sum

    def as_json(self) -> dict:
        return {'objective': self.value, 'rate_sum': self.rate_sum, 'penalty': self.penalty,
                **self.answers.as_json()}


def objective(answers: AnswerScore, rates: Sequence[float], penalty: float) -> ObjectiveTerms:
    """Return Prune2Drive's objective for per-view keep ``rates`` (module doc)."""
    if penalty < 0:
        raise ValueError(f'--penalty {penalty} must be >= 0')
    return ObjectiveTerms(answers, float(sum(rates)), float(penalty))
