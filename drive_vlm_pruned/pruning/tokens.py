"""
The tensors a pruner reads and the indices it returns.

Everything here is plain torch. ``ViewTokens`` is the pruner input (one ``[B, N_v, D]`` tensor per
camera view), ``KeptTokens`` the output (sorted kept indices per sample and view), and
``LayerState`` the hand-off a model adapter gives the pruners that act inside the LLM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ViewTokens:
    """
    Visual tokens of V camera views for a batch of B frames.

    ``features[v]`` is ``[B, N_v, D]``; views may differ in ``N_v`` but share ``D``.
    ``counts`` (optional, ``[B, V]`` long on the CPU) says how many leading rows of each view are
    real tokens for each sample; rows past the count are padding and are never selected. It is
    needed inside the LLM after an earlier stage kept a different number of tokens per sample.
    """

    features: tuple[Tensor, ...]
    names: tuple[str, ...] = ()
    counts: Tensor | None = None

    @staticmethod
    def from_list(
        features: Sequence[Tensor], names: Sequence[str] = (), counts: Tensor | None = None
    ) -> ViewTokens:
        """Build from a list of ``[N_v, D]`` or ``[B, N_v, D]`` tensors and validate them."""
        feats = tuple(f.unsqueeze(0) if f.dim() == 2 else f for f in features)
        tokens = ViewTokens(feats, tuple(names), counts)
        tokens.validate()
        return tokens

    @property
    def num_views(self) -> int:
        return len(self.features)

    @property
    def batch_size(self) -> int:
        return self.features[0].shape[0]

    @property
    def dim(self) -> int:
        return self.features[0].shape[-1]

    @property
    def device(self) -> torch.device:
        return self.features[0].device

    def view_sizes(self) -> list[int]:
        """Return the padded token count N_v of each view."""
        return [f.shape[1] for f in self.features]

    def valid_counts(self) -> Tensor:
        """``[B, V]`` long (CPU): real tokens per sample and view."""
        if self.counts is not None:
            return self.counts
        return torch.tensor([self.view_sizes()] * self.batch_size, dtype=torch.long)

    def valid_mask(self, v: int) -> Tensor:
        """Return ``[B, N_v]`` bool on the tokens' device: True at the real rows of view v."""
        rows = torch.arange(self.features[v].shape[1], device=self.device)
        return rows[None, :] < self.valid_counts()[:, v:v + 1].to(self.device)

    def view_name(self, v: int) -> str:
        return self.names[v] if v < len(self.names) else f'view{v}'

    def validate(self) -> None:
        """
        Raise ValueError naming the first problem found.

        Checked: no views, bad shapes, empty views, D or B mismatch, non-finite values, or counts
        that do not fit.
        """
        if not self.features:
            raise ValueError('no camera views given: pass one [B, N, D] token tensor per view')
        if self.names and len(self.names) != len(self.features):
            raise ValueError(
                f'{len(self.names)} view names for {len(self.features)} views: '
                'give one name per view'
            )
        ref = self.features[0]
        for v, f in enumerate(self.features):
            name = self.view_name(v)
            if f.dim() != 3:
                raise ValueError(f'view {name!r} has shape {tuple(f.shape)}; expected [B, N, D]')
            if f.shape[1] == 0:
                raise ValueError(
                    f'view {name!r} is empty (0 tokens): drop the view or fix the encoder'
                )
            if f.shape[2] != ref.shape[2]:
                raise ValueError(
                    f'view {name!r} has feature dim D={f.shape[2]} but view {self.view_name(0)!r} '
                    f'has D={ref.shape[2]}: all views must come from the same encoder/projector'
                )
            if f.shape[0] != ref.shape[0]:
                raise ValueError(f'view {name!r} has batch {f.shape[0]}, expected {ref.shape[0]}')
            if f.device != ref.device:
                raise ValueError(f'view {name!r} is on {f.device}, others on {ref.device}')
            if not f.is_floating_point():
                raise ValueError(
                    f'view {name!r} has dtype {f.dtype}; pass floating-point features'
                )
            # One cheap reduction: NaN/inf in any feature makes its row sum non-finite.
            if not bool(torch.isfinite(f.sum(dim=-1)).all()):
                raise ValueError(
                    f'view {name!r} has NaN or inf features (or values so large they overflow): '
                    'check the encoder output or run it in a wider dtype'
                )
        if self.counts is not None:
            expect = (self.batch_size, self.num_views)
            if tuple(self.counts.shape) != expect:
                raise ValueError(f'counts has shape {tuple(self.counts.shape)}, expected {expect}')
            sizes = torch.tensor(self.view_sizes())
            if bool((self.counts < 1).any()) or bool((self.counts > sizes).any()):
                raise ValueError('counts must lie in [1, N_v] for every sample and view')


@dataclass(frozen=True)
class KeptTokens:
    """
    Pruner output: the kept token rows of every view of every sample.

    ``indices[b][v]`` is a sorted 1-D long tensor of rows of ``ViewTokens.features[v][b]``.
    """

    indices: tuple[tuple[Tensor, ...], ...]

    def counts(self) -> list[list[int]]:
        """Kept tokens per sample and view."""
        return [[int(ix.numel()) for ix in sample] for sample in self.indices]

    def total(self, b: int = 0) -> int:
        return sum(int(ix.numel()) for ix in self.indices[b])

    def flat(self, b: int, view_sizes: Sequence[int]) -> Tensor:
        """Kept rows of sample b as indices into the views laid end to end (view 0 first)."""
        offsets = [0]
        for n in view_sizes[:-1]:
            offsets.append(offsets[-1] + n)
        parts = [ix + off for ix, off in zip(self.indices[b], offsets)]
        return torch.cat(parts)


@dataclass(frozen=True)
class LayerState:
    """
    The hand-off from a model adapter to an in-LLM pruner acting before decoder layer K.

    The adapter runs layers ``0..K-1`` on the full sequence, then fills this from layer ``K-1``:

    - ``hidden_states`` ``[B, S, D]``: the input of layer K (output of layer K-1).
    - ``keys`` ``[B, H_kv, S, hd]``: layer K-1 key states with RoPE applied, exactly the tensors
      the KV cache holds for that layer.
    - ``text_queries`` ``[B, H, T, hd]``: layer K-1 query states, RoPE applied, of the LAST T
      positions of the sequence (the instruction after the last image; row ``T-1`` is the last
      prompt token of every sample, as in left-padded batches). ``text_mask`` ``[B, T]`` marks the
      rows that are real instruction tokens of that sample.
    - ``key_mask`` ``[B, S]`` bool: real (non-padding) positions.
    - ``visual_positions[v]`` ``[B, N_v]`` long: sequence index of every token of view v, in the
      same row order as ``ViewTokens.features[v]``.
    - ``scaling``: the layer's attention softmax scale (``head_dim ** -0.5`` for Qwen2/Llama).
    - ``input_embeds`` ``[B, S, D]`` (optional): the layer-0 input, for scores that compare a
      token's role before and inside the LLM (MVPruner stage 2).

    Batch rows whose views hold fewer real tokens are padded; ``ViewTokens.counts`` says how many.
    """

    hidden_states: Tensor
    keys: Tensor
    text_queries: Tensor
    text_mask: Tensor
    key_mask: Tensor
    visual_positions: tuple[Tensor, ...]
    scaling: float
    input_embeds: Tensor | None = None

    def view_tokens(self, names: Sequence[str] = (), counts: Tensor | None = None) -> ViewTokens:
        """Return the hidden states of each view's tokens, as pruner input."""
        feats = tuple(gather_rows(self.hidden_states, pos) for pos in self.visual_positions)
        return ViewTokens.from_list(feats, names, counts)

    def view_keys(self) -> tuple[Tensor, ...]:
        """Per view ``[B, N_v, H_kv * hd]``: each token's layer K-1 key, heads concatenated."""
        b, h, s, hd = self.keys.shape
        flat = self.keys.transpose(1, 2).reshape(b, s, h * hd)
        return tuple(gather_rows(flat, pos) for pos in self.visual_positions)

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent tensor."""
        b, s, _ = self.hidden_states.shape
        if self.keys.dim() != 4 or self.keys.shape[0] != b or self.keys.shape[2] != s:
            raise ValueError(f'keys {tuple(self.keys.shape)} must be [B={b}, H_kv, S={s}, hd]')
        q = self.text_queries
        if q.dim() != 4 or q.shape[0] != b or q.shape[-1] != self.keys.shape[-1]:
            raise ValueError(f'text_queries {tuple(q.shape)} must be [B={b}, H, T, hd]')
        if q.shape[1] % self.keys.shape[1]:
            raise ValueError(
                f'{q.shape[1]} query heads is not a multiple of {self.keys.shape[1]} key heads'
            )
        if tuple(self.text_mask.shape) != (b, q.shape[2]):
            raise ValueError(f'text_mask must be [B={b}, T={q.shape[2]}]')
        if tuple(self.key_mask.shape) != (b, s):
            raise ValueError(f'key_mask must be [B={b}, S={s}]')
        for v, pos in enumerate(self.visual_positions):
            if pos.dim() != 2 or pos.shape[0] != b:
                raise ValueError(f'visual_positions[{v}] must be [B={b}, N_v]')
            if bool((pos < 0).any()) or bool((pos >= s).any()):
                raise ValueError(
                    f'visual_positions[{v}] points outside the sequence of length {s}'
                )


def gather_rows(x: Tensor, rows: Tensor) -> Tensor:
    """``x[b, rows[b]]`` for every b: ``[B, S, D]`` and ``[B, N]`` -> ``[B, N, D]``."""
    return torch.gather(x, 1, rows.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def check_keep_ratio(keep_ratio: float) -> float:
    """Return keep_ratio as float, or raise ValueError if it is outside (0, 1]."""
    r = float(keep_ratio)
    if not (0.0 < r <= 1.0):
        raise ValueError(
            f'keep_ratio={keep_ratio} is outside (0, 1]: it is the fraction of visual tokens KEPT '
            '(0.1 keeps 10%); a drop ratio d converts as keep_ratio = 1 - d'
        )
    return r
