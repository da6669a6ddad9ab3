"""
Greedy max-min selection (farthest point sampling) under cosine distance, batched.

Shared by T-FPS (Prune2Drive, per view) and DivPrune (all views jointly). Rule, for one group of
tokens with unit vectors ``u_i`` and distance ``d(i, j) = 1 - u_i . u_j``:

1. start from the most isolated token, ``argmax_i min_{j != i} d(i, j)``;
2. repeat: add ``argmax_i min_{s in S} d(i, s)``, the token farthest from the selected set S.

This is Gonzalez's greedy k-center, a 2-approximation of the minimum covering radius in chordal
distance ``|u_i - u_j| = sqrt(2 d(i, j))``, which orders pairs exactly as ``d`` does. Ties go to
the lowest index (``torch.argmax`` returns the first maximum).

Cost: one Gram matrix per group (``O(N^2 D)``, a single batched matmul, needed anyway for step 1),
then O(N) per step: the running min-distance vector is updated with the Gram row of the newest
pick. All groups advance in one loop of ``max(k)`` steps, with no host synchronisation inside it.
"""

from __future__ import annotations

import torch
from torch import Tensor

_NEG = float('-inf')


def unit_rows(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Rows scaled to unit L2 norm (in float32), then cast to ``dtype`` (default: float32)."""
    u = torch.nn.functional.normalize(x.float(), dim=-1)
    return u if dtype is None else u.to(dtype)


def cosine_gram(x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """
    ``[G, N, N]`` float32 cosine similarities of the rows of ``x`` ``[G, N, D]``.

    ``dtype`` is the matmul precision (default float32). bfloat16 halves the cost on CPUs with
    AVX512-BF16; similarities then carry bf16 rounding (spacing 2^-8 near 1), which can only
    reorder candidates whose distances are that close.
    """
    u = unit_rows(x, dtype)
    return torch.bmm(u, u.transpose(1, 2)).float()


def greedy_kcenter(gram: Tensor, valid: Tensor, k: Tensor) -> Tensor:
    """
    Select ``k[g]`` rows per group by greedy max-min distance (module doc).

    ``gram`` is ``[G, N, N]`` cosine similarities; ``valid`` ``[G, N]`` bool is False at padding
    rows (never selected, never a neighbour); ``k`` ``[G]`` long on the CPU is how many rows each
    group keeps (``1 <= k[g] <= valid[g].sum()``). Returns ``[G, max(k)]`` long picks in selection
    order; entries at step ``t >= k[g]`` are -1.
    """
    g, n, _ = gram.shape
    k_max = int(k.max())
    dist = 1.0 - gram
    pair_ok = valid[:, :, None] & valid[:, None, :]
    eye = torch.eye(n, dtype=torch.bool, device=gram.device)
    nn_dist = dist.masked_fill(~pair_ok | eye, float('inf')).amin(dim=-1)
    # A group with a single real token has no neighbour: that token is still the start.
    nn_dist = torch.where(torch.isinf(nn_dist) & valid, torch.zeros_like(nn_dist), nn_dist)
    nn_dist = nn_dist.masked_fill(~valid, _NEG)
    rows = torch.arange(g, device=gram.device)
    picks = torch.empty(g, k_max, dtype=torch.long, device=gram.device)
    current = nn_dist.argmax(dim=-1)
    min_dist = dist[rows, current].masked_fill(~valid, _NEG)
    for t in range(k_max):
        picks[:, t] = current
        min_dist = torch.minimum(min_dist, dist[rows, current])
        min_dist[rows, current] = _NEG
        current = min_dist.argmax(dim=-1)
    steps = torch.arange(k_max, device=gram.device)
    return picks.masked_fill(steps[None, :] >= k.to(gram.device)[:, None], -1)
