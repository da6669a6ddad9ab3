"""
Per-view token budgets: how many tokens each camera view keeps.

One rule serves every allocator. Given view sizes ``N_v``, a keep ratio r, a per-view minimum m and
positive view weights ``w_v``, the budgets ``k_v`` satisfy

- ``sum_v k_v == round(r * sum_v N_v)`` exactly (halves round up, not to even),
- ``min(m, N_v) <= k_v <= N_v``,
- otherwise ``k_v`` is as close as integers allow to ``clamp(lam * w_v * N_v, min_v, N_v)``, with
  ``lam`` chosen so the clamped shares add up (water-filling). ``w_v`` acts as a relative keep
  *rate*: equal weights give every view the same rate, which is the uniform allocator.

Allocators differ only in where the weights come from: all ones (uniform), a fixed table
(Prune2Drive's view-adaptive rates) or each view's information diversity in the current frame
(MVPruner stage 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
import math

import torch
from torch import Tensor

from .tokens import check_keep_ratio, ViewTokens


def total_budget(view_sizes: Sequence[int], keep_ratio: float) -> int:
    """Return ``round(keep_ratio * sum(view_sizes))`` (halves round up): tokens kept in all."""
    return math.floor(check_keep_ratio(keep_ratio) * sum(view_sizes) + 0.5)


def allocate(
    view_sizes: Sequence[int],
    keep_ratio: float,
    weights: Sequence[float] | None = None,
    min_per_view: int = 1,
) -> list[int]:
    """
    Split ``round(keep_ratio * sum N_v)`` tokens over the views by water-filling (module doc).

    Raises ValueError when the minimums cannot fit in the total, or on a bad weight.
    """
    total = total_budget(view_sizes, keep_ratio)
    try:
        return allocate_total(view_sizes, total, weights, min_per_view)
    except _MinimumsTooLarge as err:
        raise ValueError(
            f'keep_ratio={keep_ratio} keeps {total} of {sum(view_sizes)} tokens, fewer than the '
            f'{err.reserved} that min_per_view={min_per_view} reserves over {len(view_sizes)} '
            'views: raise keep_ratio or lower min_per_view'
        ) from None


class _MinimumsTooLarge(ValueError):

    def __init__(self, total: int, reserved: int) -> None:
        super().__init__(
            f'a budget of {total} tokens cannot hold the {reserved} reserved by the per-view '
            'minimums: raise the budget or lower min_per_view'
        )
        self.reserved = reserved


def allocate_total(
    view_sizes: Sequence[int],
    total: int,
    weights: Sequence[float] | None = None,
    min_per_view: int = 1,
) -> list[int]:
    """Split exactly ``total`` tokens over the views by water-filling (module doc)."""
    sizes = [int(n) for n in view_sizes]
    if any(n < 1 for n in sizes):
        raise ValueError(f'every view needs at least one token, got sizes {sizes}')
    if min_per_view < 0:
        raise ValueError(f'min_per_view={min_per_view} must be >= 0')
    if not 0 <= total <= sum(sizes):
        raise ValueError(f'budget {total} is outside [0, {sum(sizes)}] tokens')
    w = [1.0] * len(sizes) if weights is None else [float(x) for x in weights]
    if len(w) != len(sizes):
        raise ValueError(f'{len(w)} view weights for {len(sizes)} views: give one weight per view')
    if any(not math.isfinite(x) or x <= 0 for x in w):
        raise ValueError(f'view weights must be finite and > 0, got {w}')
    lows = [min(min_per_view, n) for n in sizes]
    if sum(lows) > total:
        raise _MinimumsTooLarge(total, sum(lows))
    demand = [wi * n for wi, n in zip(w, sizes)]
    shares = _water_fill(demand, lows, sizes, total)
    return _round_to_total(shares, lows, sizes, total)


def _water_fill(demand: list[float], lows: list[int], highs: list[int], total: int) -> list[float]:
    """Real shares ``clamp(lam * demand, low, high)`` summing to total; lam found by bisection."""

    def filled(lam: float) -> list[float]:
        return [min(max(lam * d, lo), hi) for d, lo, hi in zip(demand, lows, highs)]

    lo_lam, hi_lam = 0.0, 1.0
    while sum(filled(hi_lam)) < total and hi_lam < 1e30:
        hi_lam *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo_lam + hi_lam)
        if sum(filled(mid)) < total:
            lo_lam = mid
        else:
            hi_lam = mid
    return filled(hi_lam)


def _round_to_total(
    shares: list[float], lows: list[int], highs: list[int], total: int
) -> list[int]:
    """Integers within [low, high] summing to total, by largest remainder from the real shares."""
    ks = [min(max(math.floor(s), lo), hi) for s, lo, hi in zip(shares, lows, highs)]
    frac = [s - math.floor(s) for s in shares]
    # Largest fraction first when adding, smallest first when removing; view index breaks ties so
    # the result is deterministic.
    order_up = sorted(range(len(ks)), key=lambda i: (-frac[i], i))
    order_down = sorted(range(len(ks)), key=lambda i: (frac[i], i))
    while sum(ks) < total:
        i = next(i for i in order_up if ks[i] < highs[i])
        ks[i] += 1
        order_up.remove(i)
        order_up.append(i)
    while sum(ks) > total:
        i = next(i for i in order_down if ks[i] > lows[i])
        ks[i] -= 1
        order_down.remove(i)
        order_down.append(i)
    return ks


def view_diversity(tokens: ViewTokens) -> Tensor:
    """
    Information diversity of every view, ``[B, V]`` float (MVPruner stage 1, our definition).

    For the real tokens ``x_1..x_n`` of a view, with unit vectors ``u_i = x_i / |x_i|``,
    diversity is the mean pairwise cosine distance over distinct pairs::

        div = 1 - (|sum_i u_i|^2 - n) / (n (n - 1))        (n >= 2; a one-token view has div 0)

    i.e. ``1 - mean_{i != j} cos(x_i, x_j)``. It is 0 when all tokens point the same way (a blank
    sky, a uniform wall), about 1 for unrelated directions, and costs O(n D) instead of O(n^2 D).
    """
    out = []
    for v, feats in enumerate(tokens.features):
        u = torch.nn.functional.normalize(feats.float(), dim=-1)
        real = tokens.valid_mask(v)
        n = real.sum(dim=1).to(u.dtype)
        s = (u * real[..., None]).sum(dim=1)
        mean_cos = (s.pow(2).sum(-1) - n) / (n * (n - 1)).clamp_min(1.0)
        out.append(torch.where(n > 1, 1.0 - mean_cos, torch.zeros_like(n)))
    return torch.stack(out, dim=1)


@dataclass(frozen=True)
class UniformAllocator:
    """Every view keeps the same fraction of its tokens (FastV/DivPrune-style equal-ratio)."""

    min_per_view: int = 1
    name: str = 'uniform'

    def __call__(self, tokens: ViewTokens, keep_ratio: float | Sequence[float]) -> Tensor:
        return _per_sample(tokens, keep_ratio, lambda b: None, self.min_per_view)


@dataclass(frozen=True)
class WeightedAllocator:
    """
    Fixed relative keep rates per view (Prune2Drive's view-adaptive rates, found offline).

    ``weights`` maps a view name to a positive rate; budgets follow ``k_v ~ w_v * N_v`` (module
    doc), scaled so the total matches the keep ratio. Only ratios between weights matter.
    """

    weights: Mapping[str, float]
    min_per_view: int = 1
    name: str = 'weighted'

    def __call__(self, tokens: ViewTokens, keep_ratio: float | Sequence[float]) -> Tensor:
        missing = [tokens.view_name(v) for v in range(tokens.num_views)
                   if tokens.view_name(v) not in self.weights]
        if missing:
            raise ValueError(
                f'no view weight for {missing}; the weights name {sorted(self.weights)}: '
                'add the missing cameras to the view-weights file'
            )
        w = [float(self.weights[tokens.view_name(v)]) for v in range(tokens.num_views)]
        return _per_sample(tokens, keep_ratio, lambda b: w, self.min_per_view)


@dataclass(frozen=True)
class DiversityAllocator:
    """
    Per-frame budgets from each view's information diversity (MVPruner stage 1).

    The weight of view v is ``floor + div_v`` (see ``view_diversity``); ``floor`` (default 0.05)
    keeps a featureless view from being starved below its minimum share of attention.
    """

    min_per_view: int = 1
    floor: float = 0.05
    name: str = 'diversity'

    def __call__(self, tokens: ViewTokens, keep_ratio: float | Sequence[float]) -> Tensor:
        div = (view_diversity(tokens) + self.floor).tolist()
        return _per_sample(tokens, keep_ratio, lambda b: div[b], self.min_per_view)


Allocator = UniformAllocator | WeightedAllocator | DiversityAllocator


def _per_sample(tokens: ViewTokens, keep_ratio, weights_of, min_per_view: int) -> Tensor:
    """``[B, V]`` long budgets, one ``allocate`` per sample (each may have its own keep ratio)."""
    ratios = _ratios(keep_ratio, tokens.batch_size)
    counts = tokens.valid_counts().tolist()
    rows = [allocate(counts[b], ratios[b], weights_of(b), min_per_view)
            for b in range(tokens.batch_size)]
    return torch.tensor(rows, dtype=torch.long)


def _ratios(keep_ratio: float | Sequence[float], batch: int) -> list[float]:
    if isinstance(keep_ratio, (int, float)):
        return [check_keep_ratio(keep_ratio)] * batch
    ratios = [check_keep_ratio(r) for r in keep_ratio]
    if len(ratios) != batch:
        raise ValueError(f'{len(ratios)} keep ratios for a batch of {batch}: give one per sample')
    return ratios
