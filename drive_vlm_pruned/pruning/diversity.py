"""Diversity pruners: T-FPS (Prune2Drive) and DivPrune. Both run greedy max-min (``kcenter``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Pruner, Selection, Stage
from .kcenter import cosine_gram, greedy_kcenter
from .tokens import ViewTokens


def auto_similarity_dtype(device: torch.device) -> torch.dtype | None:
    """
    bfloat16 matmuls on a CPU that has native BF16 support, else the tokens' own dtype.

    The Gram matrix dominates selection cost (O(N^2 D)); on CPU bf16 halves it, while on GPU the
    tokens already arrive in the model's half precision.
    """
    if device.type == 'cpu' and torch.backends.mkldnn.is_available():
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return torch.bfloat16
    return None


@dataclass
class _MaxMin(Pruner):
    """Shared body: Gram matrix per group, then greedy k-center with the group budgets."""

    similarity_dtype: torch.dtype | None | str = 'auto'

    def _picks(self, sel: Selection) -> Tensor:
        dtype = self.similarity_dtype
        if dtype == 'auto':
            dtype = auto_similarity_dtype(sel.tokens.device)
        if sel.groups.joint:
            gram = cosine_gram(sel.groups.stack(sel.tokens.features), dtype)
        else:
            gram = per_view_gram(sel.tokens, dtype)
        return greedy_kcenter(gram, sel.groups.valid, sel.groups.k)


def per_view_gram(tokens: ViewTokens, dtype: torch.dtype | None) -> Tensor:
    """
    ``[B * V, N_max, N_max]`` cosine Gram matrices, one view at a time.

    Working view by view keeps every temporary small (a few MB), so CPU runs reuse heap memory
    instead of faulting in a fresh ``B * V * N * D`` stack on every frame. Padding stays zero.
    """
    sizes = tokens.view_sizes()
    n_max, b, v_count = max(sizes), tokens.batch_size, tokens.num_views
    alloc = torch.zeros if min(sizes) < n_max else torch.empty
    out = alloc(b, v_count, n_max, n_max, device=tokens.device)
    for v, feats in enumerate(tokens.features):
        n = sizes[v]
        out[:, v, :n, :n] = cosine_gram(feats, dtype)
    return out.reshape(b * v_count, n_max, n_max)


@dataclass
class TFPS(_MaxMin):
    """
    T-FPS, Prune2Drive (Sec. 3, "Token-wise Farthest Point Sampling").

    Rule: inside each view, farthest point sampling in token-embedding space with cosine distance
    ``1 - cos``: start from the most isolated token, then repeatedly add the token whose minimum
    distance to the kept set is largest, until the view's budget ``k_v`` is met. Views are sampled
    independently (their budgets come from the allocator: uniform, view-adaptive weights, or
    diversity), all in one batched loop. ``similarity_dtype`` sets the Gram-matrix precision:
    'auto' (bf16 on CPUs with BF16, else the tokens' dtype), None (tokens' dtype) or a dtype.
    """

    name = 'tfps'
    stage = Stage.PRE_LLM
    joint: bool = False


@dataclass
class DivPrune(_MaxMin):
    """
    DivPrune (Alvar et al., CVPR 2025): max-min diversity over ALL visual tokens jointly.

    Rule: the same greedy max-min selection as T-FPS, but over the concatenation of every view of
    a sample with one total budget, so a feature-rich view can take tokens from a bland one.
    """

    name = 'divprune'
    stage = Stage.PRE_LLM
    joint: bool = True
