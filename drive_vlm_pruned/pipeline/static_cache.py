"""
A KV cache of fixed shape, allocated once and refilled every frame (gpt-fast's static cache).

Prefill stays as it is: the prompt runs into a ``DynamicCache``, and in-LLM pruning crops that
cache to the kept rows (models/layer_pruning.py). ``StaticKV.load`` then copies the (pruned) keys
and values into the first ``L`` slots of a transformers ``StaticCache`` and sets each layer's
length to ``L``. Decoding writes token ``t`` into slot ``L + t`` in place, so every decode step
sees tensors of the same shape at the same addresses: what ``torch.compile`` and CUDA graphs
need.

The 2-D attention mask is fixed for the whole answer: the prompt's mask (0 at left padding) in
slots ``[0, L)`` and 1 after. Slots beyond the current token hold the previous frame's values;
the causal mask hides them, because transformers places the query at the cache's current length
(``StaticLayer.cumulative_length``), not at its RoPE position.

The capacity is the prompt plus the answer rounded up to ``SLOT_QUANTUM`` slots, so frames whose
prompts differ by a few tokens (a longer question) reuse the same cache and compiled graph, while
a pruned prompt gets a small cache: decode reads all of it every step. pipeline/decoding.py keeps
one cache per shape (batch, capacity), the three most recently used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import DynamicCache, StaticCache
from transformers.cache_utils import StaticLayer

SLOT_QUANTUM = 256


class StaticCacheUnsupported(RuntimeError):
    """This model's cache cannot be held in full-attention static layers (e.g. sliding window)."""


@dataclass(frozen=True)
class CacheShape:
    """What fixes a static cache: batch, slots, KV heads, head size, dtype and device."""

    batch: int
    capacity: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device

    @property
    def nbytes(self) -> int:
        """Return the bytes of one layer's keys plus values."""
        element = torch.empty((), dtype=self.dtype).element_size()
        return 2 * self.batch * self.kv_heads * self.capacity * self.head_dim * element


def capacity_for(needed: int, quantum: int = SLOT_QUANTUM) -> int:
    """Round ``needed`` slots up to a multiple of ``quantum``."""
    return -(-needed // quantum) * quantum


class StaticKV:
    """One transformers ``StaticCache`` of a fixed shape, refilled from each frame's prefill."""

    def __init__(self, config, shape: CacheShape) -> None:
        self.shape = shape
        self.cache = StaticCache(config=config, max_cache_len=shape.capacity)
        kinds = {type(layer).__name__ for layer in self.cache.layers
                 if type(layer) is not StaticLayer}
        if kinds:
            raise StaticCacheUnsupported(
                f'the model has {", ".join(sorted(kinds))} cache layers; the static decode '
                'path supports full-attention layers only'
            )
        self.cache.early_initialization(shape.batch, shape.kv_heads, shape.head_dim,
                                        shape.dtype, shape.device)

    @staticmethod
    def shape_for(prefilled: DynamicCache, new_tokens: int) -> CacheShape:
        """Return the cache shape a prefilled cache plus ``new_tokens`` generated ones need."""
        keys = prefilled.layers[0].keys
        batch, heads, length, head_dim = keys.shape
        return CacheShape(batch, capacity_for(length + new_tokens), heads, head_dim, keys.dtype,
                          keys.device)

    def load(self, prefilled: DynamicCache, mask: Tensor) -> Tensor:
        """
        Copy the prefilled keys and values into slots ``[0, L)``; return the fixed decode mask.

        ``mask`` ``[B, L]`` is the prefill's 2-D mask (after in-LLM pruning, the cut one). The
        returned ``[B, capacity]`` mask keeps it and opens every later slot.
        """
        length = mask.shape[1]
        if len(prefilled.layers) != len(self.cache.layers):
            raise ValueError(f'the prefill filled {len(prefilled.layers)} cache layers, the '
                             f'model has {len(self.cache.layers)}')
        for source, target in zip(prefilled.layers, self.cache.layers):
            if source.keys.shape[2] != length:
                raise ValueError(f'a prefilled cache layer holds {source.keys.shape[2]} rows '
                                 f'but the mask has {length}: every layer must be cut alike')
            target.keys[:, :, :length].copy_(source.keys)
            target.values[:, :, :length].copy_(source.values)
            # In place: the compiled step reads this tensor at a fixed address.
            target.cumulative_length.fill_(length)
        full = torch.ones(mask.shape[0], self.shape.capacity, dtype=mask.dtype,
                          device=mask.device)
        full[:, :length] = mask
        return full

    @property
    def nbytes(self) -> int:
        """Return the bytes the cache holds, all layers."""
        return self.shape.nbytes * len(self.cache.layers)
