"""Budget allocation: exact sums, minimums, caps, and each allocator's intent."""

import math
from pathlib import Path

from drive_vlm_pruned.pruning import (
    allocate,
    DiversityAllocator,
    load_view_weights,
    total_budget,
    UniformAllocator,
    view_diversity,
    ViewTokens,
    WeightedAllocator,
)
from hypothesis import given, settings
from hypothesis import strategies as st
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

sizes_st = st.lists(st.integers(1, 800), min_size=1, max_size=8)
ratio_st = st.floats(1e-3, 1.0, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(sizes=sizes_st, ratio=ratio_st, min_per_view=st.integers(0, 20), data=st.data())
def test_budgets_sum_exactly_respect_minimums_and_caps(sizes, ratio, min_per_view, data):
    weights = data.draw(st.lists(st.floats(0.05, 20.0), min_size=len(sizes), max_size=len(sizes)))
    total = math.floor(ratio * sum(sizes) + 0.5)
    reserved = sum(min(min_per_view, n) for n in sizes)
    if reserved > total:
        with pytest.raises(ValueError, match='min_per_view'):
            allocate(sizes, ratio, weights, min_per_view)
        return
    ks = allocate(sizes, ratio, weights, min_per_view)
    assert sum(ks) == total
    for k, n in zip(ks, sizes):
        assert min(min_per_view, n) <= k <= n


@given(sizes=sizes_st)
def test_keep_ratio_one_keeps_every_token(sizes):
    assert allocate(sizes, 1.0) == sizes


def test_uniform_weights_give_equal_rates():
    assert allocate([729] * 6, 0.1) == [73, 73, 73, 73, 73, 72]
    assert allocate([100, 300], 0.5) == [50, 150]


def test_weights_are_relative_keep_rates():
    ks = allocate([600, 600, 600], 0.2, weights=[2.0, 1.0, 1.0])
    assert sum(ks) == 360
    assert ks[0] == 2 * ks[1] == 2 * ks[2]


def test_capped_view_passes_its_surplus_to_the_others():
    # View 0 would want 10x the rate but can keep at most its 50 tokens.
    ks = allocate([50, 500, 500], 0.2, weights=[10.0, 1.0, 1.0])
    assert ks[0] == 50
    assert sum(ks) == 210
    assert abs(ks[1] - ks[2]) <= 1


@pytest.mark.parametrize('bad', [0.0, -0.1, 1.5, float('nan'), float('inf')])
def test_keep_ratio_outside_unit_interval_is_rejected(bad):
    with pytest.raises(ValueError, match='keep_ratio'):
        total_budget([729] * 6, bad)


@pytest.mark.parametrize('weights', [[1.0, 0.0], [1.0, -2.0], [1.0, float('nan')], [1.0]])
def test_bad_weights_are_rejected(weights):
    with pytest.raises(ValueError, match='weight'):
        allocate([10, 10], 0.5, weights)


def test_diversity_is_mean_pairwise_cosine_distance():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 12, 5, generator=gen)
    tokens = ViewTokens.from_list([x])
    u = torch.nn.functional.normalize(x[0], dim=-1)
    cos = u @ u.T
    off_diag = cos[~torch.eye(12, dtype=torch.bool)]
    expect = 1.0 - off_diag.mean()
    assert math.isclose(float(view_diversity(tokens)[0, 0]), float(expect), rel_tol=1e-5)


def test_diversity_allocator_gives_the_planted_diverse_view_the_largest_budget():
    gen = torch.Generator().manual_seed(1)
    views = []
    for v in range(6):
        base = torch.randn(1, 1, 64, generator=gen)
        if v == 4:  # the one view with real content
            views.append(torch.randn(1, 200, 64, generator=gen))
        else:  # near-constant, like a blank wall
            views.append(base + 0.05 * torch.randn(1, 200, 64, generator=gen))
    tokens = ViewTokens.from_list(views)
    budgets = DiversityAllocator()(tokens, 0.2)[0].tolist()
    assert sum(budgets) == 240
    assert budgets.index(max(budgets)) == 4
    assert budgets[4] > 2 * max(b for i, b in enumerate(budgets) if i != 4)


def test_per_sample_keep_ratios():
    tokens = ViewTokens.from_list([torch.randn(2, 100, 8) for _ in range(3)])
    budgets = UniformAllocator()(tokens, [0.1, 0.5])
    assert budgets.sum(1).tolist() == [30, 150]
    with pytest.raises(ValueError, match='one per sample'):
        UniformAllocator()(tokens, [0.1, 0.2, 0.3])


def test_view_weights_file_in_config_loads_and_prefers_the_front_camera():
    weights = load_view_weights(REPO / 'config' / 'view_weights.yaml')
    assert len(weights) == 6
    assert max(weights, key=weights.get) == 'CAM_FRONT'
    names = tuple(weights)
    tokens = ViewTokens.from_list([torch.randn(729, 16) for _ in names], names)
    budgets = WeightedAllocator(weights)(tokens, 0.1)[0].tolist()
    assert sum(budgets) == 437
    assert budgets[names.index('CAM_FRONT')] == max(budgets)


def test_weighted_allocator_names_missing_cameras():
    tokens = ViewTokens.from_list([torch.randn(10, 4)] * 2, ('CAM_FRONT', 'CAM_BACK'))
    with pytest.raises(ValueError, match='CAM_BACK'):
        WeightedAllocator({'CAM_FRONT': 1.0})(tokens, 0.5)


def test_view_weights_file_errors_name_the_file_and_problem(tmp_path):
    missing = tmp_path / 'nope.yaml'
    with pytest.raises(ValueError, match='does not exist'):
        load_view_weights(missing)
    bad = tmp_path / 'bad.yaml'
    bad.write_text('view_keep_weights:\n  CAM_FRONT: -1\n')
    with pytest.raises(ValueError, match='CAM_FRONT'):
        load_view_weights(bad)
    wrong = tmp_path / 'wrong.yaml'
    wrong.write_text('weights: {CAM_FRONT: 1}\n')
    with pytest.raises(ValueError, match='view_keep_weights'):
        load_view_weights(wrong)
