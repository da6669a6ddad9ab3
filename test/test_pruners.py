"""Properties every pruner keeps, the registry, and errors on invalid input."""

from drive_vlm_pruned.pruning import (
    make_pruner,
    MVPruner,
    prune,
    pruner_names,
    Stage,
    UniformAllocator,
    ViewTokens,
)
from drive_vlm_pruned.pruning.synthetic import synthetic_layer_state, synthetic_views
from hypothesis import assume, given, settings
from hypothesis import strategies as st
import pytest
import torch

SINGLE_STAGE = [n for n in pruner_names() if n != 'mvpruner']


def run(name, tokens, keep, seed=None):
    """Prune with ``name``; in-LLM pruners get a synthetic layer state over the same tokens."""
    pruner = make_pruner(name)
    if name == 'reconpruner':  # learned: a fixed random scorer stands in for trained weights
        from drive_vlm_pruned.pruning.reconpruner import ReconPruner, ReconScorer, ScorerConfig

        torch.manual_seed(0)
        pruner = ReconPruner(scorer=ReconScorer(ScorerConfig(tokens.dim)))
    if pruner.stage is Stage.IN_LLM:
        layer = synthetic_layer_state(tokens, seed=1)
        return prune(pruner, layer.view_tokens(tokens.names, tokens.counts), keep, layer=layer,
                     seed=seed)
    return prune(pruner, tokens, keep, seed=seed)


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(SINGLE_STAGE),
    sizes=st.lists(st.integers(1, 60), min_size=1, max_size=6),
    batch=st.integers(1, 2),
    keep=st.floats(0.2, 1.0),
    seed=st.integers(0, 1000),
)
def test_kept_indices_are_unique_sorted_in_range_and_meet_the_budget(name, sizes, batch, keep,
                                                                     seed):
    assume(int(keep * sum(sizes) + 0.5) >= len(sizes))  # else the per-view minimum cannot fit
    gen = torch.Generator().manual_seed(seed)
    tokens = ViewTokens.from_list([torch.randn(batch, n, 16, generator=gen) for n in sizes])
    kept = run(name, tokens, keep, seed=seed)
    pruner = make_pruner(name)
    expected = (pruner.allocator or UniformAllocator())(tokens, keep)
    for b in range(batch):
        for v, n in enumerate(sizes):
            ix = kept.indices[b][v].tolist()
            assert ix == sorted(set(ix))
            assert all(0 <= i < n for i in ix)
        if pruner.joint:
            assert kept.total(b) == int(expected[b].sum())
        elif name != 'mvpruner-s2':  # stage 2 re-splits the same total over the views
            assert kept.counts()[b] == expected[b].tolist()
        else:
            assert kept.total(b) == int(expected[b].sum())


@pytest.mark.parametrize('name', SINGLE_STAGE)
def test_keep_ratio_one_keeps_everything(name):
    scene = synthetic_views(views=3, tokens_per_view=49, dim=16, batch=2)
    kept = run(name, scene.tokens, 1.0)
    for b in range(2):
        assert [ix.tolist() for ix in kept.indices[b]] == [list(range(49))] * 3


@pytest.mark.parametrize('name', SINGLE_STAGE)
def test_a_seed_makes_selection_deterministic(name):
    scene = synthetic_views(views=6, tokens_per_view=64, dim=32, seed=5)
    first = run(name, scene.tokens, 0.25, seed=123)
    again = run(name, scene.tokens, 0.25, seed=123)
    assert [[ix.tolist() for ix in s] for s in first.indices] == \
        [[ix.tolist() for ix in s] for s in again.indices]


def test_random_baseline_depends_on_the_seed():
    scene = synthetic_views(views=2, tokens_per_view=100, dim=8)
    a = run('random', scene.tokens, 0.3, seed=1).indices[0][0].tolist()
    b = run('random', scene.tokens, 0.3, seed=2).indices[0][0].tolist()
    assert a != b


def test_stride_keeps_evenly_spaced_tokens():
    tokens = ViewTokens.from_list([torch.randn(100, 4)])
    kept = prune(make_pruner('stride'), tokens, 0.1)
    assert kept.indices[0][0].tolist() == list(range(5, 100, 10))


def test_batch_rows_with_different_keep_ratios_equal_their_single_runs():
    scene = synthetic_views(views=6, tokens_per_view=81, dim=32, batch=2, seed=2)
    both = prune(make_pruner('tfps', similarity_dtype=None), scene.tokens, [0.1, 0.4])
    for b, keep in enumerate([0.1, 0.4]):
        single = ViewTokens.from_list([f[b:b + 1] for f in scene.tokens.features])
        alone = prune(make_pruner('tfps', similarity_dtype=None), single, keep)
        assert [ix.tolist() for ix in both.indices[b]] == [ix.tolist() for ix in alone.indices[0]]


def test_divprune_selects_jointly_so_a_rich_view_takes_more():
    gen = torch.Generator().manual_seed(0)
    bland = torch.randn(1, 1, 32, generator=gen) + 0.01 * torch.randn(1, 100, 32, generator=gen)
    rich = torch.randn(1, 100, 32, generator=gen)
    kept = prune(make_pruner('divprune', similarity_dtype=None),
                 ViewTokens.from_list([bland, rich]), 0.2)
    bland_n, rich_n = kept.counts()[0]
    assert bland_n + rich_n == 40
    assert rich_n >= 35


def test_mvpruner_ratio_split_multiplies_to_the_keep_ratio():
    mv = MVPruner()
    for r in (1.0, 0.5, 0.1, 0.05):
        r1, r2 = mv.ratios(r)
        assert r1 >= r
        assert r1 * r2 == pytest.approx(r)


# --- invalid input ---------------------------------------------------------------------------

def test_unknown_pruner_lists_the_known_ones():
    with pytest.raises(ValueError) as err:
        make_pruner('fastest')
    message = str(err.value)
    assert 'fastest' in message
    for name in ('tfps', 'divprune', 'fastv', 'dart', 'mvpruner', 'random', 'stride'):
        assert name in message


def test_pruner_names_are_forgiving_about_case_and_separators():
    assert make_pruner('T-FPS').name == 'tfps'
    assert make_pruner('MVPruner_S1').name == 'mvpruner-s1'


@pytest.mark.parametrize('bad', [0.0, 1.01, -1.0, float('nan')])
def test_bad_keep_ratio_is_rejected(bad):
    tokens = ViewTokens.from_list([torch.randn(10, 4)])
    with pytest.raises(ValueError, match='keep_ratio'):
        prune(make_pruner('tfps'), tokens, bad)


@pytest.mark.parametrize('value', [float('nan'), float('inf'), -float('inf')])
def test_non_finite_features_are_rejected(value):
    x = torch.randn(10, 4)
    x[3, 2] = value
    with pytest.raises(ValueError, match='NaN or inf'):
        ViewTokens.from_list([torch.randn(10, 4), x], ('CAM_FRONT', 'CAM_BACK'))


def test_empty_view_is_rejected_by_name():
    with pytest.raises(ValueError, match="'CAM_BACK' is empty"):
        ViewTokens.from_list([torch.randn(10, 4), torch.randn(0, 4)], ('CAM_FRONT', 'CAM_BACK'))


def test_mismatched_feature_width_is_rejected():
    with pytest.raises(ValueError, match='D=8'):
        ViewTokens.from_list([torch.randn(10, 4), torch.randn(10, 8)])


def test_no_views_is_rejected():
    with pytest.raises(ValueError, match='no camera views'):
        ViewTokens.from_list([])


def test_in_llm_pruner_without_layer_state_says_what_to_do():
    tokens = ViewTokens.from_list([torch.randn(10, 4)])
    with pytest.raises(ValueError, match='prune_layer'):
        prune(make_pruner('fastv'), tokens, 0.5)
