"""
In-LLM pruners scored from layer K-1: FastV and DART.

Both read a ``LayerState`` (see ``tokens.LayerState``) and never need the model's attention
weights, so the model can keep SDPA or flash attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Pruner, Selection, Stage
from .groups import topk_picks
from .tokens import LayerState


def text_attention(layer: LayerState) -> Tensor:
    """
    Layer K-1 attention weights of the text rows over all keys, averaged over heads.

    ``softmax(q_t k_s^T * scaling)`` with the causal mask (text row t sits at sequence position
    ``S - T + t`` and sees keys ``s <= S - T + t``) and padding keys masked out. Key heads are
    shared by ``H / H_kv`` query heads (GQA). Returns ``[B, T, S]`` float32.
    """
    q = layer.text_queries.float()
    b, h, t, _ = q.shape
    s = layer.keys.shape[2]
    keys = layer.keys.float().repeat_interleave(h // layer.keys.shape[1], dim=1)
    logits = torch.einsum('bhtd,bhsd->bhts', q, keys) * layer.scaling
    q_pos = torch.arange(s - t, s, device=q.device)
    causal = torch.arange(s, device=q.device)[None, :] <= q_pos[:, None]
    allowed = causal[None, None] & layer.key_mask[:, None, None, :].bool()
    logits = logits.masked_fill(~allowed, float('-inf'))
    return torch.softmax(logits, dim=-1).mean(dim=1)


def fastv_scores(layer: LayerState) -> tuple[Tensor, ...]:
    """
    Score every visual token the FastV way, per view ``[B, N_v]``.

    The score is the attention the LAST prompt token pays the token at layer K-1, averaged over
    heads.
    """
    last = text_attention(_last_row(layer))[:, -1, :]
    return tuple(torch.gather(last, 1, pos) for pos in layer.visual_positions)


def _last_row(layer: LayerState) -> LayerState:
    return LayerState(
        hidden_states=layer.hidden_states,
        keys=layer.keys,
        text_queries=layer.text_queries[:, :, -1:, :],
        text_mask=layer.text_mask[:, -1:],
        key_mask=layer.key_mask,
        visual_positions=layer.visual_positions,
        scaling=layer.scaling,
        input_embeds=layer.input_embeds,
    )


@dataclass
class FastV(Pruner):
    """
    FastV (Chen et al., ECCV 2024), keep-ratio form.

    Rule: at layer K-1, score each visual token by the attention the last prompt token pays it,
    averaged over heads; keep the top-scoring tokens before layer K. As published, the selection
    is joint over all image tokens (``joint=True``); ``joint=False`` applies it per view with the
    allocator's budgets. Scores are computed from that layer's queries and keys, not from returned
    attention weights.
    """

    name = 'fastv'
    stage = Stage.IN_LLM
    joint: bool = True

    def _picks(self, sel: Selection) -> Tensor:
        scores = sel.groups.stack(fastv_scores(sel.layer))
        return topk_picks(scores, sel.groups.valid, sel.groups.k)


@dataclass
class DART(Pruner):
    """
    DART (Wen et al., 2025): duplication-aware pruning around pivot tokens.

    Rule, inside each view (``joint=False``, the default for multi-view input) with budget k:
    pivots = the ``min(pivots, k)`` tokens with the largest L1 norm of their layer K-1 key states
    (heads concatenated); every other token's duplication = its largest cosine similarity (of
    hidden states) to any pivot; keep the pivots plus the ``k - p`` least duplicated tokens, i.e.
    drop the near-duplicates of the pivots.
    """

    name = 'dart'
    stage = Stage.IN_LLM
    joint: bool = False
    pivots: int = 4

    def _picks(self, sel: Selection) -> Tensor:
        valid = sel.groups.valid
        key_norm = sel.groups.stack(sel.layer.view_keys()).float().abs().sum(-1)
        key_norm = key_norm.masked_fill(~valid, float('-inf'))
        p_max = min(self.pivots, valid.shape[1])
        pivot_idx = key_norm.topk(p_max, dim=1).indices  # [G, P]
        p = sel.groups.k.clamp(max=self.pivots).to(valid.device)
        pivot_ok = torch.arange(p_max, device=valid.device)[None, :] < p[:, None]
        x = sel.groups.stack(sel.tokens.features).float()
        x = torch.nn.functional.normalize(x, dim=-1)
        piv = torch.gather(x, 1, pivot_idx[..., None].expand(-1, -1, x.shape[-1]))
        sim = torch.einsum('gnd,gpd->gnp', x, piv).masked_fill(~pivot_ok[:, None, :], -2.0)
        score = -sim.amax(dim=-1)
        is_pivot = torch.zeros_like(valid).scatter(1, pivot_idx, pivot_ok)
        score = score.masked_fill(is_pivot, float('inf'))
        return topk_picks(score, valid, sel.groups.k)
