"""
Routing supervision: a question that names a camera attends to that camera's visual tokens.

MVPruner's second stage ranks visual tokens by the attention the instruction pays them: in a
trained VLM a question about the back left view attends to the back left view. A small model
trained from scratch on answers alone does not find that routing (the drive-vlm-nano card: its
answers do not change when the named camera is starved). Here the same text-to-visual attention
is a training signal. At one LLM layer, one query head of the row that predicts a turn's answer
is asked to put its attention mass on the visual tokens of the camera the question names::

    loss = mean over such turns of -log(sum of softmax(q . k / sqrt(d)) over the named view)

The scores are recomputed from the layer's own ``q_proj``/``k_proj`` and rotary embedding, read
by a forward pre-hook on its attention module, over exactly the keys the packed mask lets the
row see (the prefix and its own turn), so they are the attention the model computes.
"""

from __future__ import annotations

from collections.abc import Sequence
import sys

import torch
from torch import nn, Tensor

from ..models.prompts import VIEW_WORDS


def asked_view(question: str, names: Sequence[str]) -> int:
    """Return the index in ``names`` of the one camera ``question`` names, or -1."""
    lower = question.lower()
    named = [i for i, n in enumerate(names) if f'the {VIEW_WORDS.get(n, n.lower())}' in lower]
    return named[0] if len(named) == 1 else -1


class AttentionInputs:
    """Forward pre-hook on an attention module: keeps its hidden states and rotary (cos, sin)."""

    def __init__(self, attention: nn.Module) -> None:
        self.attention = attention
        self.hidden: Tensor | None = None
        self.rotary: tuple[Tensor, Tensor] | None = None
        self._handle = attention.register_forward_pre_hook(self._keep, with_kwargs=True)

    def _keep(self, _module, args, kwargs):
        self.hidden = kwargs['hidden_states'] if 'hidden_states' in kwargs else args[0]
        self.rotary = kwargs['position_embeddings']

    def close(self) -> None:
        self._handle.remove()


def routing_loss(inputs: AttentionInputs, head: int, frame: Tensor, row: Tensor,
                 allowed: Tensor, target: Tensor) -> Tensor:
    """
    Mean ``-log`` attention mass of query ``head`` at rows ``(frame, row)`` on ``target`` keys.

    ``allowed`` and ``target`` are bool ``[n, T]`` over the keys of each query's frame.
    """
    attn = inputs.attention
    rotate = sys.modules[type(attn).__module__].apply_rotary_pos_emb
    head_dim = attn.head_dim
    group = attn.config.num_attention_heads // attn.config.num_key_value_heads
    hidden, (cos, sin) = inputs.hidden, inputs.rotary
    lo, hi = head * head_dim, (head + 1) * head_dim
    query = nn.functional.linear(hidden[frame, row], attn.q_proj.weight[lo:hi],
                                 attn.q_proj.bias[lo:hi] if attn.q_proj.bias is not None else None)
    kv = head // group
    klo, khi = kv * head_dim, (kv + 1) * head_dim
    keys = nn.functional.linear(hidden, attn.k_proj.weight[klo:khi],
                                attn.k_proj.bias[klo:khi] if attn.k_proj.bias is not None
                                else None)  # [B, T, d]
    # apply_rotary_pos_emb takes [B, H, T, d] and cos/sin [B, T, d]; one head, one query each.
    query = rotate(query[:, None, None], query[:, None, None], cos[frame, row][:, None],
                   sin[frame, row][:, None])[0][:, 0, 0]
    keys = rotate(keys[:, None], keys[:, None], cos, sin)[1][:, 0]
    scores = torch.einsum('nd,ntd->nt', query, keys[frame]).float() * attn.scaling
    scores = scores.masked_fill(~allowed, float('-inf'))
    mass = (scores.softmax(-1) * target).sum(-1)
    return -torch.log(mass.clamp_min(1e-6)).mean()


def exclusion_loss(inputs: AttentionInputs, frame: Tensor, row: Tensor, allowed: Tensor,
                   others: Tensor) -> Tensor:
    """
    Mean ``-log(1 - attention mass on the other views)`` over every head at rows ``(frame, row)``.

    The rows of a turn that names a camera may read the text and the named view, not the other
    five: without this a small model answers "is there a sign in the back left view?" with
    whether any view shows a sign. ``allowed`` and ``others`` are bool ``[n, T]``.
    """
    attn = inputs.attention
    rotate = sys.modules[type(attn).__module__].apply_rotary_pos_emb
    heads, kv_heads, head_dim = (attn.config.num_attention_heads,
                                 attn.config.num_key_value_heads, attn.head_dim)
    hidden, (cos, sin) = inputs.hidden, inputs.rotary
    query = attn.q_proj(hidden[frame, row]).view(len(frame), heads, 1, head_dim)
    keys = attn.k_proj(hidden).view(*hidden.shape[:2], kv_heads, head_dim).transpose(1, 2)
    query = rotate(query, query, cos[frame, row][:, None], sin[frame, row][:, None])[0]
    query = query.view(len(frame), kv_heads, heads // kv_heads, head_dim)
    keys = rotate(keys, keys, cos, sin)[1]  # [B, kv_heads, T, d]
    losses = []
    for b in frame.unique():  # a few frames a step; rows x keys of one frame at a time
        mine = frame == b
        scores = torch.einsum('nkgd,ktd->nkgt', query[mine], keys[b]).float() * attn.scaling
        scores = scores.masked_fill(~allowed[mine][:, None, None], float('-inf'))
        leak = (scores.softmax(-1) * others[mine][:, None, None]).sum(-1)
        losses.append(-torch.log((1 - leak).clamp_min(1e-6)).flatten(1).mean(1))
    return torch.cat(losses).mean()
