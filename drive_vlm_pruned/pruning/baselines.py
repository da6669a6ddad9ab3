"""Reference baselines: random selection and a uniform spatial stride."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Pruner, Selection, Stage
from .groups import topk_picks


@dataclass
class RandomPruner(Pruner):
    """
    Random baseline: each view keeps ``k_v`` tokens drawn uniformly without replacement.

    Rule: score every token with an i.i.d. uniform draw and keep the top ``k_v``. Pass a seed to
    ``prune`` for a reproducible draw.
    """

    name = 'random'
    stage = Stage.PRE_LLM

    def _picks(self, sel: Selection) -> Tensor:
        valid = sel.groups.valid
        scores = torch.rand(valid.shape, generator=sel.generator, device=valid.device)
        return topk_picks(scores, sel.groups.valid, sel.groups.k)


@dataclass
class StridePruner(Pruner):
    """
    Uniform spatial-stride baseline: evenly spaced tokens in raster order.

    Rule: view v with n real tokens and budget k keeps rows ``floor((i + 0.5) * n / k)`` for
    ``i = 0..k-1``. Tokens are laid out row-major over the patch grid, so this is an even
    sub-sampling of the image, the "resize the image smaller" reference point.
    """

    name = 'stride'
    stage = Stage.PRE_LLM

    def _picks(self, sel: Selection) -> Tensor:
        n = sel.groups.valid.sum(dim=1).to(torch.float64)
        k = sel.groups.k.to(sel.tokens.device)
        k_max = int(sel.groups.k.max())
        i = torch.arange(k_max, device=sel.tokens.device, dtype=torch.float64)
        picks = torch.floor((i[None, :] + 0.5) * n[:, None] / k[:, None].to(torch.float64))
        return picks.long().masked_fill(i[None, :] >= k[:, None], -1)
