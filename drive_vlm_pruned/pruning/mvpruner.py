"""
MVPruner (seed 000): two-stage dynamic pruning for multi-view VLMs, in OUR exact definition.

The paper publishes no code and no formulas; docs/pruning.md ("MVPruner: our definition") is the
written contract these classes implement. In short, for overall keep ratio r:

- the ratio splits as ``r1 = r ** share`` at stage 1 and the rest at stage 2 (``share = 0.5``:
  both stages remove the same fraction);
- **stage 1** (pre-LLM, on encoder+projector tokens): view budgets from information diversity
  (``DiversityAllocator``), tokens inside a view by T-FPS, which keeps the view's semantic
  coverage;
- **stage 2** (before LLM layer K, on the stage-1 survivors): view budgets proportional to the
  attention the instruction pays each view at layer K-1, tokens ranked by
  ``pct(text relevance) + consistency_weight * consistency`` where consistency is the lower of a
  token's distinctiveness percentiles at the LLM input and at layer K: tokens retained are those
  whose contribution holds across both stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .attention import text_attention
from .base import Pruner, Selection, Stage
from .budgets import allocate_total, DiversityAllocator
from .diversity import TFPS
from .groups import distinctiveness, Groups, percentile_rank, topk_picks
from .tokens import check_keep_ratio, gather_rows, KeptTokens, LayerState, ViewTokens


@dataclass
class MVPrunerStage1(TFPS):
    """
    MVPruner stage 1: diversity-driven view budgets, T-FPS inside each view.

    Rule: ``k_v`` from ``DiversityAllocator`` (weight = floor + mean pairwise cosine distance of
    the view's tokens), then greedy max-min selection within the view.
    """

    name = 'mvpruner-s1'
    stage = Stage.PRE_LLM
    allocator: DiversityAllocator = field(default_factory=DiversityAllocator)


@dataclass
class MVPrunerStage2(Pruner):
    """
    MVPruner stage 2: instruction-guided view budgets and token selection at layer K.

    Rule (module doc, docs/pruning.md): with ``rho_j`` the head-averaged attention the real
    instruction rows pay token j at layer K-1, view v gets budget share ``~ sum_{j in v} rho_j``
    (water-filled within ``[min_per_view, n_v]``); inside the view keep the top ``k_v`` by
    ``pct(rho_j) + consistency_weight * min(pct(c0_j), pct(cK_j))`` with ``c = 1 - cos(token,
    view mean)`` at the LLM input (c0, from ``input_embeds``) and at layer K (cK).
    """

    name = 'mvpruner-s2'
    stage = Stage.IN_LLM
    consistency_weight: float = 0.5
    min_per_view: int = 1

    def select(
        self,
        tokens: ViewTokens,
        budgets: Tensor,
        layer: LayerState | None = None,
        generator: torch.Generator | None = None,
    ) -> KeptTokens:
        if layer is None:
            return super().select(tokens, budgets, layer, generator)
        relevance = self._relevance(layer)
        budgets = self._view_budgets(tokens, budgets, relevance)
        groups = Groups.of(tokens, budgets, joint=False)
        score = self._scores(tokens, groups, layer, relevance)
        return groups.kept(topk_picks(score, groups.valid, groups.k))

    def _picks(self, sel: Selection) -> Tensor:  # pragma: no cover
        raise NotImplementedError('MVPrunerStage2 overrides select')

    @staticmethod
    def _relevance(layer: LayerState) -> tuple[Tensor, ...]:
        """Per view ``[B, N_v]``: mean attention of the real instruction rows to each token."""
        attn = text_attention(layer)  # [B, T, S]
        w = layer.text_mask.float()
        mean = (attn * w[..., None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1.0)
        return tuple(torch.gather(mean, 1, pos) for pos in layer.visual_positions)

    def _view_budgets(
        self, tokens: ViewTokens, budgets: Tensor, relevance: tuple[Tensor, ...]
    ) -> Tensor:
        counts = tokens.valid_counts()
        mass = torch.stack(
            [(r * tokens.valid_mask(v)).sum(1) for v, r in enumerate(relevance)], dim=1
        ).cpu()
        rows = []
        for b in range(tokens.batch_size):
            n = counts[b].tolist()
            rate = [float(m) / c + 1e-12 for m, c in zip(mass[b].tolist(), n)]
            rows.append(allocate_total(n, int(budgets[b].sum()), rate, self.min_per_view))
        return torch.tensor(rows, dtype=torch.long)

    def _scores(
        self,
        tokens: ViewTokens,
        groups: Groups,
        layer: LayerState,
        relevance: tuple[Tensor, ...],
    ) -> Tensor:
        valid = groups.valid
        masks = [tokens.valid_mask(v) for v in range(tokens.num_views)]
        rel = percentile_rank(groups.stack(relevance), valid)
        c_k = groups.stack([distinctiveness(f, m) for f, m in zip(tokens.features, masks)])
        consistency = percentile_rank(c_k, valid)
        if layer.input_embeds is not None:
            c_0 = groups.stack([
                distinctiveness(gather_rows(layer.input_embeds, p), m)
                for p, m in zip(layer.visual_positions, masks)
            ])
            consistency = torch.minimum(percentile_rank(c_0, valid), consistency)
        return rel + self.consistency_weight * consistency


@dataclass
class MVPruner:
    """
    The two MVPruner stages and how the keep ratio splits between them.

    With prune layer K >= 1 the pipeline runs ``stage1`` on the LLM input at ``ratios(r)[0]`` and
    ``stage2`` before layer K at ``ratios(r)[1]`` of the survivors, so the LLM keeps r overall.
    With prune layer 0 only stage 1 can run, and it runs at the full ratio r.
    """

    name = 'mvpruner'
    # Where it starts: stage 1 runs before the LLM at every prune layer (alone at layer 0), so
    # the registry-wide "can it run at layer K" checks treat it as a pre-LLM pruner.
    stage = Stage.PRE_LLM
    share: float = 0.5
    stage1: MVPrunerStage1 = field(default_factory=MVPrunerStage1)
    stage2: MVPrunerStage2 = field(default_factory=MVPrunerStage2)

    def ratios(self, keep_ratio: float) -> tuple[float, float]:
        """``(r1, r2)``: stage-1 keep ratio of all tokens, stage-2 keep ratio of the survivors."""
        r = check_keep_ratio(keep_ratio)
        r1 = r**self.share
        return r1, min(1.0, r / r1)
