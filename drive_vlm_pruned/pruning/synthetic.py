"""
Synthetic multi-view tokens and layer states for the demo, the benchmarks and the tests.

``synthetic_views`` lays each view out as a square patch grid: a sky region and a road region,
each a near-constant direction plus noise (the bland, redundant tokens real encoders produce), and
a few planted objects, each a small rectangle of tokens sharing a distinct direction.
"""

from __future__ import annotations

from dataclasses import dataclass
import math

import torch
from torch import Tensor

from .tokens import LayerState, ViewTokens
from ..cameras import NUSCENES_CAMERAS

SKY, ROAD = 0, 1


@dataclass(frozen=True)
class SyntheticScene:
    """Tokens plus the region label of every token (0 sky, 1 road, 2+ object id)."""

    tokens: ViewTokens
    labels: Tensor  # [V, N] long, same for every sample in the batch
    grid: int


def synthetic_views(
    views: int = 6,
    tokens_per_view: int = 729,
    dim: int = 1152,
    batch: int = 1,
    objects_per_view: int = 3,
    noise: float = 0.15,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = 'cpu',
) -> SyntheticScene:
    """Make a batch of synthetic six-view scenes (module doc); deterministic for a seed."""
    gen = torch.Generator().manual_seed(seed)
    grid = math.isqrt(tokens_per_view)
    if grid * grid != tokens_per_view:
        raise ValueError(f'tokens_per_view={tokens_per_view} must be a square (a patch grid)')
    labels = torch.empty(views, tokens_per_view, dtype=torch.long)
    feats = []
    rows = torch.arange(tokens_per_view) // grid
    cols = torch.arange(tokens_per_view) % grid
    for v in range(views):
        protos = torch.randn(2 + objects_per_view, dim, generator=gen)
        lab = torch.where(rows < grid * 2 // 5, SKY, ROAD)
        for o in range(objects_per_view):
            h, w = [int(x) for x in torch.randint(2, max(3, grid // 4), (2,), generator=gen)]
            r0 = int(torch.randint(grid * 2 // 5 - 1, grid - h + 1, (1,), generator=gen))
            c0 = int(torch.randint(0, grid - w + 1, (1,), generator=gen))
            box = (rows >= r0) & (rows < r0 + h) & (cols >= c0) & (cols < c0 + w)
            lab = torch.where(box, 2 + o, lab)
        labels[v] = lab
        base = protos[lab]
        x = base + noise * torch.randn(batch, tokens_per_view, dim, generator=gen)
        feats.append(x.to(device=device, dtype=dtype))
    names = NUSCENES_CAMERAS[:views] if views <= len(NUSCENES_CAMERAS) else ()
    tokens = ViewTokens.from_list(feats, names)
    return SyntheticScene(tokens, labels, grid)


def synthetic_layer_state(
    tokens: ViewTokens,
    prefix_len: int = 8,
    text_len: int = 16,
    heads: int = 8,
    kv_heads: int = 2,
    head_dim: int = 32,
    seed: int = 0,
) -> LayerState:
    """
    Make a layer state whose sequence is ``prefix + view 0 + ... + view V-1 + instruction``.

    Hidden states at visual positions are the view tokens; everything else is random, with keys of
    the visual tokens correlated with their features so that attention scores are not pure noise.
    """
    gen = torch.Generator().manual_seed(seed)
    b, d, dev = tokens.batch_size, tokens.dim, tokens.device
    sizes = tokens.view_sizes()
    s = prefix_len + sum(sizes) + text_len
    hidden = torch.randn(b, s, d, generator=gen).to(dev)
    starts = [prefix_len + sum(sizes[:v]) for v in range(len(sizes))]
    positions = []
    for start, feats in zip(starts, tokens.features):
        pos = torch.arange(start, start + feats.shape[1], device=dev)
        hidden[:, pos] = feats.float()
        positions.append(pos.expand(b, -1).contiguous())
    to_keys = torch.randn(d, kv_heads * head_dim, generator=gen).to(dev) / math.sqrt(d)
    keys = (hidden @ to_keys).reshape(b, s, kv_heads, head_dim).transpose(1, 2).contiguous()
    queries = torch.randn(b, heads, text_len, head_dim, generator=gen).to(dev)
    return LayerState(
        hidden_states=hidden,
        keys=keys,
        text_queries=queries,
        text_mask=torch.ones(b, text_len, dtype=torch.bool, device=dev),
        key_mask=torch.ones(b, s, dtype=torch.bool, device=dev),
        visual_positions=tuple(positions),
        scaling=head_dim**-0.5,
        input_embeds=hidden + 0.1 * torch.randn(b, s, d, generator=gen).to(dev),
    )
