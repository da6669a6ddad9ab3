"""
Prune visual tokens before decoder layer K with forward hooks, not a forked modeling file.

During one prefill call:

- a forward hook on layer K-1's ``q_proj`` keeps its output and a pre-hook keeps that layer's
  rotary table, so the instruction queries can be rebuilt with RoPE for scoring;
- a pre-hook on layer K builds the ``LayerState`` (hidden states entering K, layer K-1 keys from
  the KV cache, instruction queries), asks the pruner for the kept tokens, and cuts hidden states,
  position ids, rotary table and attention mask to the kept rows (kept tokens keep their original
  positions; text rows are always kept);
- pre-hooks on the layers after K hand them the same cut tensors, since the model passes every
  layer the full-length ones.

After the call, ``crop_cache`` cuts the cache entries of layers 0..K-1 to the kept rows, so the
whole KV cache and the decoding attention mask follow the kept tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .call_contract import layer_argument, layer_cache, require_keywords
from ..pruning import KeptTokens, LayerState


@dataclass(frozen=True)
class InLLMRequest:
    """What the pipeline asks for: prune before ``layer`` with ``select``."""

    layer: int
    select: Callable[[LayerState, Tensor], KeptTokens]  # (state, view counts [B, V]) -> kept
    visual_rows: tuple[Tensor, ...]  # per view [B, n_v]: sequence rows of its prunable tokens
    counts: Tensor  # [B, V] real rows in visual_rows (CPU long)
    text_len: int  # T: the instruction is the last T rows of the sequence
    text_mask: Tensor  # [B, T] bool: real instruction rows of each sample
    scaling: float


class LayerPruningHooks:
    """Context manager that installs the hooks for one prefill (module doc)."""

    def __init__(self, layers, attn_implementation: str, request: InLLMRequest,
                 input_embeds: Tensor, attention_mask: Tensor) -> None:
        self.layers = layers
        self.impl = attn_implementation
        self.req = request
        self.input_embeds = input_embeds
        self.attention_mask = attention_mask  # [B, S] long, full sequence
        self.cache = None
        self.kept: KeptTokens | None = None
        self.rows: Tensor | None = None  # [B, L'] kept sequence rows (left-padded)
        self.new_mask_2d: Tensor | None = None
        self._q: Tensor | None = None
        self._rope: tuple[Tensor, Tensor] | None = None
        self._cut: dict | None = None
        self._handles = []

    def __enter__(self) -> LayerPruningHooks:
        k = self.req.layer
        before = self.layers[k - 1]
        self._handles += [
            before.self_attn.q_proj.register_forward_hook(self._keep_queries),
            before.register_forward_pre_hook(self._keep_rope, with_kwargs=True),
            self.layers[k].register_forward_pre_hook(self._prune, with_kwargs=True),
        ]
        for layer in self.layers[k + 1:]:
            self._handles.append(layer.register_forward_pre_hook(self._substitute,
                                                                 with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _keep_queries(self, module, args, output) -> None:
        self._q = output

    def _keep_rope(self, module, args, kwargs) -> None:
        name = f'decoder layer {self.req.layer - 1} ({type(module).__name__})'
        self._rope = layer_argument(kwargs, 'position_embeddings', name)
        self.cache = layer_cache(kwargs, name)

    def _prune(self, module, args, kwargs):
        name = f'decoder layer {self.req.layer} ({type(module).__name__})'
        # The cut tensors replace these keywords; a layer that took them positionally would
        # silently keep the full-length ones.
        require_keywords(kwargs, ('attention_mask', 'position_ids'), name)
        cos, sin = layer_argument(kwargs, 'position_embeddings', name)
        hidden = args[0] if args else kwargs['hidden_states']
        state = self._layer_state(hidden)
        self.kept = self.req.select(state, self.req.counts)
        self.rows, self.new_mask_2d = self._kept_rows(hidden.shape[1])
        self._cut = {
            'attention_mask': self._mask(hidden.dtype),
            'position_ids': _take_positions(kwargs.get('position_ids'), self.rows),
            'position_embeddings': (_take(cos, self.rows), _take(sin, self.rows)),
        }
        cut = _take(hidden, self.rows)
        if args:
            return self._substitute(module, (cut, *args[1:]), kwargs)
        return self._substitute(module, args, {**kwargs, 'hidden_states': cut})

    def _substitute(self, module, args, kwargs):
        return args, {**kwargs, **self._cut}

    def _layer_state(self, hidden: Tensor) -> LayerState:
        b, s, _ = hidden.shape
        keys = self.cache.layers[self.req.layer - 1].keys
        head_dim = keys.shape[-1]
        t = self.req.text_len
        q = self._q[:, s - t:].reshape(b, t, -1, head_dim).transpose(1, 2)
        cos, sin = (x[:, s - t:] for x in self._rope)
        q = q * cos[:, None] + _rotate_half(q) * sin[:, None]
        return LayerState(
            hidden_states=hidden,
            keys=keys,
            text_queries=q,
            text_mask=self.req.text_mask,
            key_mask=self.attention_mask.bool(),
            visual_positions=self.req.visual_rows,
            scaling=self.req.scaling,
            input_embeds=self.input_embeds,
        )

    def _kept_rows(self, s: int) -> tuple[Tensor, Tensor]:
        """Sequence rows to keep per sample (all text, kept visual), left-padded to one length."""
        keep = self.attention_mask.bool().clone()
        counts = self.req.counts.tolist()
        for v, rows in enumerate(self.req.visual_rows):
            for b in range(keep.shape[0]):
                n = counts[b][v]
                dropped = torch.ones(n, dtype=torch.bool, device=keep.device)
                dropped[self.kept.indices[b][v].to(keep.device)] = False
                keep[b, rows[b, :n][dropped]] = False
        lengths = keep.sum(1)
        width = int(lengths.max())
        out = torch.zeros(keep.shape[0], width, dtype=torch.long, device=keep.device)
        mask = torch.zeros_like(out)
        for b in range(keep.shape[0]):
            idx = keep[b].nonzero()[:, 0]
            out[b, width - idx.numel():] = idx
            mask[b, width - idx.numel():] = 1
        return out, mask

    def _mask(self, dtype: torch.dtype) -> Tensor | None:
        """Build the cut sequence's attention mask in the format the attention code expects."""
        m = self.new_mask_2d
        padded = bool((m == 0).any())
        if self.impl == 'flash_attention_2':
            return m if padded else None
        if self.impl == 'sdpa' and not padded:
            return None  # SDPA's own causal path, as the model uses without padding
        n = m.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=m.device).tril()
        allowed = causal[None] & m.bool()[:, None, :]
        # Padding queries attend to themselves only, so no row is fully masked (no NaN).
        allowed |= torch.eye(n, dtype=torch.bool, device=m.device)[None]
        allowed = allowed[:, None]
        if self.impl == 'sdpa':
            return allowed
        zero = torch.zeros((), dtype=dtype, device=m.device)
        return torch.where(allowed, zero, torch.finfo(dtype).min)

    def crop_cache(self) -> None:
        """Cut the cache entries of layers 0..K-1 to the kept rows."""
        for i in range(self.req.layer):
            entry = self.cache.layers[i]
            index = self.rows[:, None, :, None].expand(-1, entry.keys.shape[1], -1,
                                                       entry.keys.shape[-1])
            entry.keys = torch.gather(entry.keys, 2, index)
            entry.values = torch.gather(entry.values, 2, index)


def _take(x: Tensor, rows: Tensor) -> Tensor:
    """``x[b, rows[b]]`` along dim 1 for ``[B, S, ...]`` tensors (rows ``[B, L']``)."""
    if x.shape[0] == 1 and rows.shape[0] > 1:
        x = x.expand(rows.shape[0], *x.shape[1:])
    index = rows.reshape(*rows.shape, *([1] * (x.dim() - 2))).expand(-1, -1, *x.shape[2:])
    return torch.gather(x, 1, index)


def _take_positions(position_ids: Tensor | None, rows: Tensor) -> Tensor | None:
    """Cut ``[B, S]`` (or ``[3, B, S]``) position ids; Qwen2.5-VL's layers may get None."""
    if position_ids is None:
        return None
    if position_ids.dim() == 3:
        return torch.stack([_take(p, rows) for p in position_ids])
    return _take(position_ids, rows)


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)
