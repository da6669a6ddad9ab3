r"""
DriveLM-nuScenes metrics as the official ``challenge/evaluation.py`` defines them.

Per QA, ``tag`` picks the metric: 0 accuracy, 1 GPT score, 2 language, 3 match.

- Accuracy: exact string equality of the prediction with the ground truth, nothing normalised
  (``"B"`` is not ``"B."``); the mean over tag-0 QA.
- Language: BLEU-1..4, ROUGE-L, CIDEr over tag-2 QA (eval/language.py).
- Match: every ``d.d`` number (unsigned: ``\d+\.\d+``) is read, consecutive pairs are (x, y)
  points (a prediction's odd last number is dropped); each predicted point, in order, takes the
  nearest still-unmatched GT point by L1 distance and counts as a true positive when that
  distance is < 16 px (the GT point is then used up), else a false positive; unmatched GT points
  are false negatives; F1 = 2PR / (P + R) with DriveLM's 1e-8 guards, x 100, averaged over tag-3
  QA. The official match score averages this with a GPT score on the same pairs; here it is the
  F1 part alone.
- Graph gating: for each frame, the first QA (in perception + prediction + planning + behavior
  order) is always scored, and the GT points its prediction matched become the frame's graph; a
  later QA of the frame is scored only if every point named in its question is in the graph
  (a question without points always is). Gated-out QA count for nothing. One deliberate
  narrowing: the question's points are read from its c-tags only, where the official script
  reads every ``d.d`` pair of the question. On DriveLM's questions the two agree (their only
  decimals are c-tags); our synthetic questions also carry the ego history in metres, which the
  official reading would take for objects and so gate out every question that carries it.
- GPT score (tag 1): needs an LLM judge; never computed or guessed here, reported as absent.
- Final score = 0.4 GPT/100 + 0.2 language + 0.2 match/100 + 0.2 accuracy, with language =
  mean(BLEU-1..4)/3 + ROUGE-L/3 + CIDEr/10/3. Without the GPT term the score here is the other
  terms with their weights renormalised to sum to 1: (0.2 language + 0.2 match/100 + 0.2
  accuracy) / 0.6, over the terms that have any QA.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
import re

import numpy as np

from .language import language_score, language_scores
from ..data.drivelm import CTAG

POINT_NUMBER = re.compile(r'\d+\.\d+')
MATCH_THRESHOLD_PX = 16.0
WEIGHTS = {'gpt': 0.4, 'language': 0.2, 'match': 0.2, 'accuracy': 0.2}
FINAL_LABEL = 'final score, GPT term absent, weights renormalised'
GPT_ABSENT = 'absent: the GPT score needs an LLM judge and is never computed or guessed offline'
TAG_ACCURACY, TAG_GPT, TAG_LANGUAGE, TAG_MATCH = 0, 1, 2, 3


def exact_match(prediction: str, truth: str) -> bool:
    """Apply DriveLM's accuracy test: the strings are equal, character for character."""
    return prediction == truth


def points(text: str, drop_odd: bool = True) -> np.ndarray:
    """Return the ``d.d`` numbers of ``text`` as (x, y) rows (an odd last number is dropped)."""
    nums = [float(n) for n in POINT_NUMBER.findall(text)]
    if len(nums) % 2 and drop_odd:
        nums = nums[:-1]
    return np.asarray(nums[:len(nums) // 2 * 2], dtype=np.float64).reshape(-1, 2)


@dataclass(frozen=True)
class MatchResult:
    """Greedy L1 matching of predicted to GT points (module doc)."""

    matched: tuple[tuple[float, float], ...]  # the GT points that were matched
    true_positives: int
    false_positives: int
    false_negatives: int

    @property
    def f1(self) -> float:
        tp, fp, fn = self.true_positives, self.false_positives, self.false_negatives
        precision = tp / (tp + fp + 1e-8)
        recall = tp / (tp + fn + 1e-8)
        return 2 * precision * recall / (precision + recall + 1e-8)


def match_points(prediction: str, truth: str,
                 threshold_px: float = MATCH_THRESHOLD_PX) -> MatchResult:
    """Match the points of ``prediction`` to those of ``truth`` (DriveLM's ``match_result``)."""
    pred = points(prediction)
    gt = points(truth)
    free = np.ones(len(gt), bool)
    matched = []
    for p in pred:
        if not free.any():
            continue  # nothing left to take: a false positive
        dist = np.abs(gt - p).sum(axis=1)
        dist[~free] = np.inf
        best = int(np.argmin(dist))  # the first of equals, as the official loop's strict <
        if dist[best] < threshold_px:
            free[best] = False
            matched.append((float(gt[best, 0]), float(gt[best, 1])))
    tp = len(matched)
    return MatchResult(tuple(matched), tp, len(pred) - tp, len(gt) - tp)


def question_points(question: str) -> np.ndarray:
    """Return the ``d.d`` pairs of the question's c-tags (module doc, graph gating)."""
    return points(' '.join(m.group(0) for m in CTAG.finditer(question)))


def graph_admits(question: str, graph: set[tuple[float, float]]) -> bool:
    """Return True if every c-tag point of ``question`` is in the frame's graph (module doc)."""
    return all((float(x), float(y)) in graph for x, y in question_points(question))


@dataclass(frozen=True)
class ScoredQA:
    """One QA as the scorer sees it: what was asked, the truth and the model's answer."""

    id: str  # noqa: A003 - DriveLM's key name
    question: str
    truth: str
    answer: str
    tags: tuple[int, ...]
    frame: str  # scene + frame: gating works frame by frame


@dataclass
class DriveLMScores:
    """The official metrics over one set of answers (module doc); None where no QA had a tag."""

    accuracy: float | None = None
    language: dict[str, float] | None = None
    language_score: float | None = None
    match_f1: float | None = None  # 0..100, the F1 part of the official match score
    final_no_gpt: float | None = None
    counts: dict[str, int] = field(default_factory=dict)
    tokenizer: str = ''

    def as_json(self) -> dict:
        return {
            'accuracy': self.accuracy,
            'language': self.language,
            'language_score': self.language_score,
            'match_f1': self.match_f1,
            'match_note': 'F1 x 100 only; the official match score also averages a GPT score',
            'gpt_score': None,
            'gpt_note': GPT_ABSENT,
            'final_score_no_gpt': self.final_no_gpt,
            'final_score_label': FINAL_LABEL,
            'final_score_weights': final_weights(self),
            'counts': self.counts,
            'tokenizer': self.tokenizer,
        }


def gate(items: Sequence[ScoredQA]) -> tuple[list[ScoredQA], int]:
    """Return the QA that graph gating lets through, in order, and how many it held back."""
    kept, dropped = [], 0
    graph: set[tuple[float, float]] = set()
    current = None
    for item in items:
        if item.frame != current:  # the frame's first QA sets the graph and is always scored
            current = item.frame
            graph = set(match_points(item.answer, item.truth).matched)
            kept.append(item)
        elif graph_admits(item.question, graph):
            kept.append(item)
        else:
            dropped += 1
    return kept, dropped


def score_drivelm(items: Sequence[ScoredQA], tokenizer: str = 'simple') -> DriveLMScores:
    """Score answers as evaluation.py does; ``items`` in file order, grouped by frame."""
    kept, dropped = gate(items)
    acc = [exact_match(i.answer, i.truth) for i in kept if TAG_ACCURACY in i.tags]
    lang = [i for i in kept if TAG_LANGUAGE in i.tags]
    match = [match_points(i.answer, i.truth).f1 * 100 for i in kept if TAG_MATCH in i.tags]
    scores = DriveLMScores(tokenizer=tokenizer)
    scores.accuracy = float(np.mean(acc)) if acc else None
    scores.language = language_scores([i.answer for i in lang], [i.truth for i in lang],
                                      tokenizer)
    scores.language_score = language_score(scores.language)
    scores.match_f1 = float(np.mean(match)) if match else None
    scores.counts = {
        'qa': len(items), 'gated_out': dropped, 'accuracy': len(acc), 'language': len(lang),
        'match': len(match), 'gpt_not_scored': sum(TAG_GPT in i.tags for i in kept),
    }
    scores.final_no_gpt = final_score_no_gpt(scores)
    return scores


def _terms(scores: DriveLMScores) -> dict[str, float]:
    terms = {'language': scores.language_score, 'accuracy': scores.accuracy,
             'match': None if scores.match_f1 is None else scores.match_f1 / 100}
    return {k: v for k, v in terms.items() if v is not None}


def final_weights(scores: DriveLMScores) -> dict[str, float]:
    """Return the renormalised weight of each term that has QA (module doc)."""
    terms = _terms(scores)
    total = sum(WEIGHTS[k] for k in terms)
    return {k: WEIGHTS[k] / total for k in terms}


def final_score_no_gpt(scores: DriveLMScores) -> float | None:
    """Return the weighted mean of the present terms with the GPT weight removed, or None."""
    terms = _terms(scores)
    if not terms:
        return None
    weights = final_weights(scores)
    return sum(weights[k] * v for k, v in terms.items())


def final_score(gpt: float, language: float, match: float, accuracy: float) -> float:
    """Return DriveLM's final score with all four terms (gpt, match in 0..100), for reference."""
    return (WEIGHTS['gpt'] * gpt / 100 + WEIGHTS['language'] * language
            + WEIGHTS['match'] * match / 100 + WEIGHTS['accuracy'] * accuracy)


def scored_items(qa_pairs, answers: Mapping[str, str]) -> list[ScoredQA]:
    """Build ScoredQA for every (frame, qa) that has an answer, keeping file order."""
    return [ScoredQA(qa.id, qa.question, qa.answer, answers[qa.id], qa.tags,
                     f'{frame.scene}/{frame.frame}')
            for frame, qa in qa_pairs if qa.id in answers]
