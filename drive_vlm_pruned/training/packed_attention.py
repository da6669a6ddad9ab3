"""
Attention for packed training frames, computed block by block instead of through a dense mask.

A packed frame (samples.py) is the views' prefix, then its QA turns. The rule of its mask: the
prefix is causal, each turn sees the prefix and itself causally, and a padding row sees only
itself. Dense masked attention computes every one of the L x L scores and masks most of them:
with a 1,182-token prefix and ~1,900 turn tokens, two thirds of them. This kernel computes the
prefix with the causal kernel, and each turn against the prefix's keys and its own, the turns
sorted by length and batched in a few groups so that little is padded. The cost falls from L^2
to about P^2 / 2 + T * P (P prefix, T turn tokens), and the result is the dense mask's, to float
rounding (test/test_packed_attention.py).

It is registered with transformers' own ``AttentionInterface`` and picked per forward through
the ``packed_layout`` keyword, which the model hands to its attention functions: nothing in
transformers is patched. Without a layout it is plain sdpa, so generation from the same model
(training's planning check) is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

PACKED_ATTENTION = 'drive_vlm_packed'
# Turns sorted by length are batched in this many groups: fewer pads more, more calls cost more.
GROUPS = 8


@dataclass(frozen=True)
class TurnGroup:
    """Turns of similar length, padded to the longest: rows into the flat ``[B * L]`` sequence."""

    rows: Tensor  # long [n, t]: each turn's rows, 0 where padded
    valid: Tensor  # bool [n, t]
    frame: int  # the frame whose prefix these turns see


@dataclass(frozen=True)
class PackedLayout:
    """Where the prefix, the turns and the padding of a packed batch lie."""

    prefix: int  # P: rows [0, P) of every frame
    groups: tuple[TurnGroup, ...]

    @property
    def turns(self) -> int:
        return sum(len(g.rows) for g in self.groups)


def packed_layout(segment: Tensor, groups: int = GROUPS) -> PackedLayout:
    """
    Read the layout from ``segment`` ``[B, L]``: 0 the prefix, k > 0 turn k, -1 padding.

    Every frame's prefix must be its first rows and of one length, and a turn's rows contiguous:
    what ``PackedVLM`` builds. Runs once per step, on the host.
    """
    seg = segment.detach().cpu()
    frames, length = seg.shape
    prefix = int((seg[0] == 0).sum())
    if not bool((seg[:, :prefix] == 0).all()) or bool((seg[:, prefix:] == 0).any()):
        raise ValueError('packed attention needs every frame to start with one prefix of equal '
                         'length (segment 0) and no prefix row after it')
    # runs of equal (frame, segment): each turn is one run
    base = int(seg.max()) + 2
    key = torch.arange(frames)[:, None] * base + seg + 1
    values, counts = torch.unique_consecutive(key.flatten(), return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    turn = values % base - 1 > 0
    starts, counts = starts[turn], counts[turn]
    if len(set((values[turn]).tolist())) != int(turn.sum()):
        raise ValueError('a packed turn must be one run of rows')
    frame_of = starts // length
    built = []
    for frame in range(frames):
        # a group holds one frame's turns: its prefix keys are that frame's, broadcast, whose
        # gradient is a sum (gathered per turn, the backward was a slow scatter-add)
        mine = (frame_of == frame).nonzero()[:, 0]
        order = mine[torch.argsort(counts[mine], stable=True)]
        for chunk in torch.tensor_split(order, min(groups, len(order))) if len(order) else ():
            offset = torch.arange(int(counts[chunk].max()))
            valid = offset[None] < counts[chunk][:, None]
            rows = torch.where(valid, starts[chunk][:, None] + offset[None], 0)
            built.append(TurnGroup(rows.to(segment.device), valid.to(segment.device), frame))
    return PackedLayout(prefix, tuple(built))


def packed_attention_forward(module: torch.nn.Module, query: Tensor, key: Tensor, value: Tensor,
                             attention_mask: Tensor | None, dropout: float = 0.0,
                             scaling: float | None = None,
                             packed_layout: PackedLayout | None = None,
                             **kwargs) -> tuple[Tensor, None]:
    """
    Attend as transformers' attention functions do: ``[B, H, L, d]`` in, ``[B, L, H, d]`` out.

    With ``packed_layout`` it computes the packed rule block by block (the model then builds
    no mask: transformers makes none for an attention function it has no mask function for);
    without one it is sdpa with the given mask.
    """
    if packed_layout is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)
    if dropout or kwargs.get('sliding_window') is not None or query.shape[2] != key.shape[2]:
        raise ValueError('packed attention covers full attention over one packed sequence, '
                         'without attention dropout, sliding window or cache: train this model '
                         'with PackedVLM(dense_attention=True)')
    repeats = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, repeats), repeat_kv(value, repeats)
    frames, heads, length, dim = query.shape
    flat = [x.transpose(1, 2).reshape(frames * length, heads, dim) for x in (query, key, value)]
    rows, outputs = [], []
    p = packed_layout.prefix
    if p:
        head = F.scaled_dot_product_attention(query[:, :, :p], key[:, :, :p], value[:, :, :p],
                                              is_causal=True, scale=scaling)
        rows.append((torch.arange(frames, device=query.device)[:, None] * length +
                     torch.arange(p, device=query.device)).flatten())
        outputs.append(head.transpose(1, 2).reshape(frames * p, heads, dim))
    for group in packed_layout.groups:
        out = _turns(flat, key, value, group, p, scaling)
        rows.append(group.rows[group.valid])
        outputs.append(out[group.valid])
    # a padding row sees only itself: its output is its own value
    result = flat[2].index_put((torch.cat(rows),), torch.cat(outputs))
    return result.view(frames, length, heads, dim), None


def _turns(flat: list[Tensor], key: Tensor, value: Tensor, group: TurnGroup, prefix: int,
           scaling: float | None) -> Tensor:
    """One group's turns, each on the prefix and itself: ``[n, t, H, d]``."""
    n, t = group.rows.shape
    # index_select, not fancy indexing: its backward is index_add, not a sorting index_put
    query, own_key, own_value = (x.index_select(0, group.rows.flatten()).view(n, t, *x.shape[1:])
                                 .transpose(1, 2) for x in flat)  # [n, H, t, d]
    causal = torch.ones(t, t, dtype=torch.bool, device=query.device).tril()
    mask = causal[None] & group.valid[:, None, :]
    if prefix:
        seen_key, seen_value = (x[group.frame, :, :prefix].expand(n, -1, -1, -1)
                                for x in (key, value))
        own_key = torch.cat([seen_key, own_key], dim=2)
        own_value = torch.cat([seen_value, own_value], dim=2)
        seen = torch.ones(n, t, prefix, dtype=torch.bool, device=query.device)
        mask = torch.cat([seen, mask], dim=2)
    out = F.scaled_dot_product_attention(query, own_key, own_value, attn_mask=mask[:, None],
                                         scale=scaling)
    return out.transpose(1, 2)


@contextmanager
def packed_attention(text_config) -> Iterator[None]:
    """Run the LLM whose config this is with the packed kernel inside the block, then restore."""
    before = text_config._attn_implementation
    text_config._attn_implementation = PACKED_ATTENTION
    try:
        yield
    finally:
        text_config._attn_implementation = before


AttentionInterface.register(PACKED_ATTENTION, packed_attention_forward)
