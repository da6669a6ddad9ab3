"""
Analytic prefill FLOPs of a decoder-only LLM (multiply-add = 2 FLOPs).

Per decoder layer for n tokens, hidden d, H query heads and H_kv key/value heads of width hd,
MLP width m (SwiGLU: gate, up and down matrices)::

    q and o projections   2 * n * d * (H * hd) * 2
    k and v projections   2 * n * d * (H_kv * hd) * 2        (GQA makes these smaller)
    scores and weighting  2 * n^2 * (H * hd) * 2             (full n x n, FastV's convention)
    MLP                   2 * n * d * m * 3

Pruning before layer K: K layers at n tokens, L - K layers at n_kept (methods.md, FLOPs).
Norms, RoPE, softmax and the LM head are left out: they are small and the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LLMShape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int

    @staticmethod
    def from_config(text_config) -> LLMShape:
        """Read the shape from a transformers text config (Qwen2, Llama, ...)."""
        head_dim = getattr(text_config, 'head_dim', None) or (
            text_config.hidden_size // text_config.num_attention_heads
        )
        return LLMShape(
            layers=text_config.num_hidden_layers,
            hidden=text_config.hidden_size,
            heads=text_config.num_attention_heads,
            kv_heads=getattr(text_config, 'num_key_value_heads', None)
            or text_config.num_attention_heads,
            head_dim=head_dim,
            intermediate=text_config.intermediate_size,
        )


def layer_flops(shape: LLMShape, n: int) -> int:
    """Count the FLOPs of one decoder layer over n tokens (module doc)."""
    d, hd = shape.hidden, shape.head_dim
    q_o = 2 * n * d * (shape.heads * hd) * 2
    k_v = 2 * n * d * (shape.kv_heads * hd) * 2
    attention = 2 * n * n * (shape.heads * hd) * 2
    mlp = 2 * n * d * shape.intermediate * 3
    return q_o + k_v + attention + mlp


def prefill_flops(shape: LLMShape, n_full: int, n_kept: int | None = None,
                  prune_layer: int = 0) -> int:
    """Prefill FLOPs: ``prune_layer`` layers at ``n_full`` tokens, the rest at ``n_kept``."""
    kept = n_full if n_kept is None else n_kept
    k = min(max(prune_layer, 0), shape.layers)
    return k * layer_flops(shape, n_full) + (shape.layers - k) * layer_flops(shape, kept)
