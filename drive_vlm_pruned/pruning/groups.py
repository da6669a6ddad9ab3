"""
Lay views out as padded selection groups, and turn group picks back into per-view indices.

A per-view pruner selects inside each (sample, view) pair: ``B * V`` groups padded to the largest
view. A joint pruner selects over all views of a sample at once: ``B`` groups of ``sum N_v`` rows.
Either way the kernels see ``[G, N, ...]`` tensors, a ``[G, N]`` validity mask and ``[G]`` budgets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .tokens import KeptTokens, ViewTokens


@dataclass(frozen=True)
class Groups:
    """Padded selection groups over a ``ViewTokens`` batch."""

    joint: bool
    valid: Tensor  # [G, N] bool
    k: Tensor  # [G] long, CPU
    view_sizes: tuple[int, ...]
    batch: int

    @staticmethod
    def of(tokens: ViewTokens, budgets: Tensor, joint: bool) -> Groups:
        """Build groups for ``tokens`` with per-view ``budgets`` ``[B, V]`` (summed if joint)."""
        sizes = tuple(tokens.view_sizes())
        counts = tokens.valid_counts()
        dev = tokens.device
        if joint:
            masks = [torch.arange(n)[None, :] < counts[:, v:v + 1] for v, n in enumerate(sizes)]
            valid = torch.cat(masks, dim=1)
            k = budgets.sum(dim=1)
        else:
            n_max = max(sizes)
            valid = torch.arange(n_max)[None, :] < counts.reshape(-1, 1)
            k = budgets.reshape(-1)
        return Groups(joint, valid.to(dev), k.clone(), sizes, tokens.batch_size)

    def stack(self, per_view: tuple[Tensor, ...] | list[Tensor]) -> Tensor:
        """Lay per-view ``[B, N_v, ...]`` tensors out as ``[G, N, ...]`` (zeros at padding)."""
        if self.joint:
            return torch.cat(list(per_view), dim=1)
        n_max = max(self.view_sizes)
        padded = [_pad_rows(x, n_max) for x in per_view]
        out = torch.stack(padded, dim=1)
        return out.reshape(self.batch * len(self.view_sizes), n_max, *out.shape[3:])

    def kept(self, picks: Tensor) -> KeptTokens:
        """``[G, k_max]`` picks (-1 = none) to sorted per-sample, per-view indices."""
        big = torch.iinfo(torch.long).max
        ordered = torch.sort(picks.masked_fill(picks < 0, big), dim=1).values
        v_count = len(self.view_sizes)
        if not self.joint:
            k = self.k.tolist()
            groups = [ordered[g, :k[g]] for g in range(len(k))]
            return KeptTokens(tuple(
                tuple(groups[b * v_count:(b + 1) * v_count]) for b in range(self.batch)
            ))
        offsets = torch.tensor([0, *self.view_sizes], device=picks.device).cumsum(0)
        view_of = torch.bucketize(ordered, offsets[1:], right=True)
        per_view = torch.stack([(view_of == v).sum(1) for v in range(v_count)], 1).tolist()
        samples = []
        for b in range(self.batch):
            row, start, views = ordered[b], 0, []
            for v in range(v_count):
                n = per_view[b][v]
                views.append(row[start:start + n] - offsets[v])
                start += n
            samples.append(tuple(views))
        return KeptTokens(tuple(samples))


def _pad_rows(x: Tensor, n: int) -> Tensor:
    if x.shape[1] == n:
        return x
    pad = x.new_zeros(x.shape[0], n - x.shape[1], *x.shape[2:])
    return torch.cat([x, pad], dim=1)


def topk_picks(scores: Tensor, valid: Tensor, k: Tensor) -> Tensor:
    """Pick the ``k[g]`` highest-scoring valid rows per group: ``[G, max(k)]``, -1 pads."""
    k_max = int(k.max())
    masked = scores.float().masked_fill(~valid, float('-inf'))
    picks = masked.topk(k_max, dim=1).indices
    steps = torch.arange(k_max, device=scores.device)
    return picks.masked_fill(steps[None, :] >= k.to(scores.device)[:, None], -1)


def percentile_rank(scores: Tensor, valid: Tensor) -> Tensor:
    """Rank of each valid row within its group scaled to [0, 1] (0 = lowest); padding gets 0."""
    masked = scores.float().masked_fill(~valid, float('inf'))
    order = masked.argsort(dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    n = valid.sum(dim=1, keepdim=True).clamp_min(2) - 1
    return (ranks.float() / n).masked_fill(~valid, 0.0)


def distinctiveness(x: Tensor, valid: Tensor) -> Tensor:
    """
    Measure how far each token departs from its view's consensus.

    ``1 - cos(x_j, mean of the real rows)``, ``[B, N, D]`` -> ``[B, N]``; computed with one
    mat-vec and row norms so it allocates nothing of size ``N * D``.
    """
    real = valid.to(x.dtype)
    mean = torch.einsum('bnd,bn->bd', x, real) / real.sum(1, keepdim=True).clamp_min(1.0)
    dots = torch.einsum('bnd,bd->bn', x, mean).float()
    norms = x.float().norm(dim=-1) * mean.float().norm(dim=-1, keepdim=True)
    return 1.0 - dots / norms.clamp_min(1e-12)
