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

Object routing goes one step further for the questions that also name a class ("Is there a
sign in the back left view?", "How many signs are in ..."): a second head is asked to put its
mass on the named view's tokens whose patch shows that class (the label masks of
patch_labels.py), or on the first prefix token when the view shows none, so that its output
says "found" or "not found" (samples.object_targets, ``share_loss``). Count-aware
(``Recipe.object_count``), the first prefix token keeps a share of ``1 / (n + 1)`` for ``n``
objects that count, so that the output also says how many. A model that answers from those tokens
needs them: prune them away and the answer changes, which is what a per-camera keep rate can
then trade.
"""

from __future__ import annotations

from collections.abc import Sequence
import sys

import torch
from torch import nn, Tensor

from .patch_labels import PATCH_CLASSES
from ..models.prompts import VIEW_WORDS

# how the data set's questions name a class (data/qa_rules.py): "a sign" and "many signs"
_CLASS_WORDS = {c: (f' a {c} ', f' many {c}s ') for c in PATCH_CLASSES if c != 'road'}


def asked_view(question: str, names: Sequence[str]) -> int:
    """Return the index in ``names`` of the one camera ``question`` names, or -1."""
    lower = question.lower()
    named = [i for i, n in enumerate(names) if f'the {VIEW_WORDS.get(n, n.lower())}' in lower]
    return named[0] if len(named) == 1 else -1


def asked_class(question: str) -> int:
    """Return the index in ``PATCH_CLASSES`` of the one object class ``question`` names, or -1."""
    lower = f' {question.lower()} '
    named = [PATCH_CLASSES.index(c) for c, words in _CLASS_WORDS.items()
             if any(w in lower for w in words)]
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


def attention_probs(inputs: AttentionInputs, frame: Tensor, row: Tensor,
                    allowed: Tensor) -> Tensor:
    """
    Attention weights ``[n, heads, T]`` of the queries at ``(frame, row)`` over their frame's keys.

    Recomputed from the layer's own ``q_proj``/``k_proj`` and rotary function on the inputs the
    hook kept; ``allowed`` (bool ``[n, T]``) is each query's row of the packed mask.
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
    probs = torch.empty(len(frame), heads, hidden.shape[1], device=hidden.device)
    for b in frame.unique():  # a few frames a step; rows x keys of one frame at a time
        mine = frame == b
        scores = torch.einsum('nkgd,ktd->nkgt', query[mine], keys[b]).float() * attn.scaling
        scores = scores.masked_fill(~allowed[mine][:, None, None], float('-inf'))
        probs[mine] = scores.softmax(-1).flatten(1, 2)
    return probs


def routing_loss(probs: Tensor, head: int, target: Tensor) -> Tensor:
    """Mean ``-log`` attention mass of query ``head`` on ``target`` keys (bool ``[n, T]``)."""
    mass = (probs[:, head] * target).sum(-1)
    return -torch.log(mass.clamp_min(1e-6)).mean()


def share_loss(probs: Tensor, head: int, target: Tensor, share: Tensor) -> Tensor:
    """
    Mean cross-entropy of query ``head``'s split (``target`` keys, key 0) against ``share``.

    ``-(s log m_target + (1 - s) log m_0)`` is least at ``m_target = s``, ``m_0 = 1 - s``:
    object routing (samples.object_targets) asks for ``s`` 1 (found), 0 (not found, where it
    is ``routing_loss`` on key 0) or, count-aware, ``n / (n + 1)``.
    """
    mass = (probs[:, head] * target).sum(-1).clamp_min(1e-6)
    sink = probs[:, head, 0].clamp_min(1e-6)
    return -(share * torch.log(mass) + (1 - share) * torch.log(sink)).mean()
