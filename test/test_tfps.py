"""T-FPS and the greedy k-center kernel against plain references."""

import itertools

from drive_vlm_pruned.pruning import make_pruner, prune, ViewTokens
from drive_vlm_pruned.pruning.kcenter import cosine_gram, greedy_kcenter
from hypothesis import given, settings
from hypothesis import strategies as st
import pytest
import torch


def reference_fps(x: torch.Tensor, k: int) -> list[int]:
    """Plain O(k^2 N) farthest point sampling in float64, written from the rule, no Gram matrix."""
    u = torch.nn.functional.normalize(x.double(), dim=-1)
    n = u.shape[0]

    def dist(i: int, j: int) -> float:
        return float(1.0 - (u[i] * u[j]).sum())

    nearest = [min(dist(i, j) for j in range(n) if j != i) if n > 1 else 0.0 for i in range(n)]
    selected = [max(range(n), key=lambda i: (nearest[i], -i))]
    while len(selected) < k:
        best, best_d = None, -1.0
        for i in range(n):
            if i in selected:
                continue
            d = min(dist(i, s) for s in selected)
            if d > best_d:
                best, best_d = i, d
        selected.append(best)
    return selected


def exact_tfps(**kw):
    return make_pruner('tfps', similarity_dtype=None, **kw)


@pytest.mark.parametrize('seed', range(12))
def test_tfps_equals_plain_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    n = int(torch.randint(5, 60, (1,), generator=gen))
    x = torch.randn(n, 8, generator=gen)
    k = int(torch.randint(1, n + 1, (1,), generator=gen))
    gram = cosine_gram(x[None])
    picks = greedy_kcenter(gram, torch.ones(1, n, dtype=torch.bool), torch.tensor([k]))
    assert picks[0].tolist() == reference_fps(x, k)


def test_batched_views_equal_independent_runs():
    gen = torch.Generator().manual_seed(3)
    sizes = [40, 25, 33]
    views = [torch.randn(2, n, 16, generator=gen) for n in sizes]
    tokens = ViewTokens.from_list(views)
    kept = prune(exact_tfps(), tokens, [0.3, 0.6])
    for b in range(2):
        budgets = [int(k) for k in kept.counts()[b]]
        for v, x in enumerate(views):
            expect = sorted(reference_fps(x[b], budgets[v]))
            assert kept.indices[b][v].tolist() == expect


def covering_radius(u: torch.Tensor, chosen: list[int]) -> float:
    """max_i min_{s in chosen} |u_i - u_s| (chordal distance of unit vectors)."""
    d = torch.cdist(u, u[chosen])
    return float(d.min(dim=1).values.max())


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(4, 11), k=st.integers(1, 4))
def test_greedy_is_within_twice_the_optimal_covering_radius(seed, n, k):
    k = min(k, n)
    x = torch.randn(n, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    u = torch.nn.functional.normalize(x, dim=-1)
    picks = greedy_kcenter(cosine_gram(x[None]), torch.ones(1, n, dtype=torch.bool),
                           torch.tensor([k]))[0].tolist()
    optimum = min(covering_radius(u, list(c)) for c in itertools.combinations(range(n), k))
    assert covering_radius(u, picks) <= 2.0 * optimum + 1e-6


def test_one_token_per_planted_cluster():
    gen = torch.Generator().manual_seed(7)
    clusters, per_cluster, dim = 9, 30, 64
    centres = torch.linalg.qr(torch.randn(dim, clusters, generator=gen)).Q.T  # orthonormal
    labels = torch.arange(clusters).repeat_interleave(per_cluster)
    x = centres[labels] + 0.01 * torch.randn(len(labels), dim, generator=gen)
    order = torch.randperm(len(labels), generator=gen)
    x, labels = x[order], labels[order]
    tokens = ViewTokens.from_list([x])
    kept = prune(exact_tfps(), tokens, clusters / len(labels))
    kept_labels = labels[kept.indices[0][0]].tolist()
    assert sorted(kept_labels) == list(range(clusters))


def test_cpu_bfloat16_similarities_cover_almost_as_well_as_float32():
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(1, 729, 256, generator=gen)
    tokens = ViewTokens.from_list([x])
    fast = prune(make_pruner('tfps', similarity_dtype=torch.bfloat16), tokens, 0.1)
    exact = prune(exact_tfps(), tokens, 0.1)
    u = torch.nn.functional.normalize(x[0], dim=-1)
    r_fast = covering_radius(u, fast.indices[0][0].tolist())
    r_exact = covering_radius(u, exact.indices[0][0].tolist())
    assert r_fast <= r_exact * 1.02


def test_single_token_view_and_padding_rows_are_handled():
    tokens = ViewTokens.from_list(
        [torch.randn(1, 1, 8), torch.randn(1, 20, 8)], counts=torch.tensor([[1, 12]])
    )
    kept = prune(exact_tfps(), tokens, 0.5, allocator=None)
    assert kept.indices[0][0].tolist() == [0]
    assert kept.indices[0][1].max() < 12
