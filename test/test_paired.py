"""Paired comparisons with key-frame bootstrap intervals (eval/paired.py)."""

from drive_vlm_pruned.eval.paired import paired_bootstrap
import numpy as np
import pytest


def frames_of(n_frames: int, per_frame: int) -> list[str]:
    return [f'f{i}' for i in range(n_frames) for _ in range(per_frame)]


def test_identical_runs_keep_everything_and_differ_in_nothing():
    a = [1, 0, 1, 1, 0, 1]
    p = paired_bootstrap(a, a, frames_of(3, 2))
    assert (p.items, p.frames, p.ratio, p.ratio_ci) == (6, 3, 1.0, (1.0, 1.0))
    assert p.difference == 0 and p.difference_ci == (0.0, 0.0) and not p.differs


def test_a_run_worse_on_every_frame_is_a_stable_difference():
    rng = np.random.default_rng(0)
    a = np.ones(200)
    b = (rng.random(200) > 0.2).astype(float)  # loses ~20% of the items, spread over frames
    p = paired_bootstrap(a, b, frames_of(40, 5))
    assert p.ratio == pytest.approx(b.mean())
    low, high = p.ratio_ci
    assert low < p.ratio < high < 1.0
    assert p.differs and p.difference_ci[1] < 0


def test_items_of_one_frame_are_resampled_together():
    # Each frame's items agree with each other: 10 frames of 10 identical outcomes carry the
    # information of 10 draws, not 100, and the interval must be as wide as that.
    rng = np.random.default_rng(1)
    per_frame = (rng.random(10) > 0.5).astype(float)
    b = np.repeat(per_frame, 10)
    a = np.ones_like(b)
    by_frame = paired_bootstrap(a, b, frames_of(10, 10))
    by_item = paired_bootstrap(a, b, [str(i) for i in range(100)])
    width = by_frame.difference_ci[1] - by_frame.difference_ci[0]
    assert width > 2.5 * (by_item.difference_ci[1] - by_item.difference_ci[0])


def test_the_same_inputs_give_the_same_interval_and_a_bad_pairing_is_refused():
    a, b = [1, 0, 1, 1], [1, 1, 0, 1]
    assert paired_bootstrap(a, b, frames_of(2, 2)) == paired_bootstrap(a, b, frames_of(2, 2))
    with pytest.raises(ValueError, match='same items in both runs: 4 reference, 3 other'):
        paired_bootstrap(a, b[:3], frames_of(2, 2))
    zero = paired_bootstrap([0, 0], [1, 0], ['f0', 'f1'])
    assert zero.ratio is None and zero.difference == 0.5
