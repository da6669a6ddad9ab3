"""
Paired comparison of two runs on the same QA, with key-frame bootstrap intervals.

Both runs answer the same items, so every comparison is paired: the statistic is computed on
the same items for both. The QA of one key frame share its six images, so they are not
independent draws; the bootstrap resamples key frames, each with all of its items, not single
items. Rule, for per-item scores ``a`` (reference) and ``b`` (the other run) grouped by frame:

- ``ratio = mean(b) / mean(a)`` (retention, when higher is better; for L2 it reads as the
  factor by which the other run's error grows);
- ``difference = mean(b) - mean(a)``;
- each with the percentile interval of ``resamples`` bootstrap draws of the frames (numpy's
  Generator with a fixed seed, so a report reproduces), at ``level`` (95%).

The draws are vectorised: one ``(resamples, frames)`` index array, no Python loop per draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Paired:
    """The two means on the same items, their ratio and difference, each with its interval."""

    items: int
    frames: int
    reference: float
    other: float
    ratio: float | None  # None when the reference mean is 0
    ratio_ci: tuple[float, float] | None
    difference: float
    difference_ci: tuple[float, float]
    level: float = LEVEL
    resamples: int = RESAMPLES

    def as_json(self) -> dict:
        return asdict(self)

    @property
    def differs(self) -> bool:
        """Whether the interval of the difference excludes zero (a stable ranking)."""
        low, high = self.difference_ci
        return low > 0 or high < 0


def paired_bootstrap(reference: Sequence[float], other: Sequence[float],
                     frames: Sequence[str], resamples: int = RESAMPLES, level: float = LEVEL,
                     seed: int = 0) -> Paired:
    """Compare per-item scores of two runs on the same items, resampling ``frames``."""
    a = np.asarray(reference, dtype=np.float64)
    b = np.asarray(other, dtype=np.float64)
    if not (len(a) == len(b) == len(frames)) or not len(a):
        raise ValueError(f'paired scores need the same items in both runs: {len(a)} reference, '
                         f'{len(b)} other, {len(frames)} frame keys')
    _, group = np.unique(np.asarray(frames), return_inverse=True)
    count = np.bincount(group).astype(np.float64)
    sum_a = np.bincount(group, weights=a)
    sum_b = np.bincount(group, weights=b)
    draws = np.random.default_rng(seed).integers(0, len(count), size=(resamples, len(count)))
    n = count[draws].sum(axis=1)
    mean_a, mean_b = sum_a[draws].sum(axis=1) / n, sum_b[draws].sum(axis=1) / n
    tails = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    ref, oth = float(a.mean()), float(b.mean())
    ratio, ratio_ci = None, None
    if ref != 0 and np.all(mean_a != 0):
        ratio = oth / ref
        low, high = np.percentile(mean_b / mean_a, tails)
        ratio_ci = (float(low), float(high))
    low, high = np.percentile(mean_b - mean_a, tails)
    return Paired(len(a), len(count), ref, oth, ratio, ratio_ci, oth - ref,
                  (float(low), float(high)), level, resamples)
