"""
Prefill and eager decode through the model's own entry point, reusing the (pruned) KV cache.

``decode`` is the reference decoder (a DynamicCache that grows by one row per token);
pipeline/decoding.py adds the compiled backend with a static cache, equal token for token.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from transformers import DynamicCache

from ..models.base import PrefillInputs
from ..models.call_contract import cache_kwargs
from ..models.layer_pruning import LayerPruningHooks

if TYPE_CHECKING:
    from .waypoint_grammar import WaypointConstraint


@dataclass(frozen=True)
class Sampling:
    """Greedy when ``temperature == 0``; otherwise temperature and nucleus (top-p) sampling."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop_at_eos: bool = True  # benchmarks turn it off to time a fixed number of tokens


@dataclass
class Prefilled:
    """Last-position logits ``[B, V]``, the KV cache and the 2-D mask that matches it."""

    logits: Tensor
    cache: DynamicCache
    attention_mask: Tensor


def prefill(model, inputs: PrefillInputs, hooks: LayerPruningHooks | None = None) -> Prefilled:
    """Run the prompt once; with ``hooks``, visual tokens are cut before their layer."""
    cache = DynamicCache(config=model.config)
    with hooks if hooks is not None else nullcontext():
        out = model(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            position_ids=inputs.position_ids,
            use_cache=True,
            logits_to_keep=1,
            **cache_kwargs(model, cache),
        )
    mask = inputs.attention_mask
    if hooks is not None:
        hooks.crop_cache()
        mask = hooks.new_mask_2d
    # The model fills the cache we passed in place (its output field was renamed in 5.24).
    return Prefilled(out.logits[:, -1].float(), cache, mask)


def decode(model, start: Prefilled, inputs: PrefillInputs, eos_ids: list[int], pad_id: int,
           sampling: Sampling, constraint: WaypointConstraint | None = None) -> Tensor:
    """
    Generate up to ``max_new_tokens`` per sample; finished rows emit ``pad_id``.

    With ``constraint``, each token is chosen among those its row's grammar allows
    (pipeline/waypoint_grammar.py).
    """
    first_logits, cache, mask = start.logits, start.cache, start.attention_mask
    batch = first_logits.shape[0]
    device = first_logits.device
    position = inputs.next_position.clone()
    eos = torch.tensor(eos_ids, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    generator = None
    if sampling.seed is not None:
        generator = torch.Generator(device=device).manual_seed(sampling.seed)
    logits, tokens = first_logits, []
    embed = model.get_input_embeddings()
    for i in range(sampling.max_new_tokens):
        if constraint is not None:
            logits = constraint.mask(logits, sampling.max_new_tokens - 1 - i)
        tok = choose_token(logits, sampling, generator)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        if constraint is not None:
            constraint.advance(tok)
        tokens.append(tok)
        if sampling.stop_at_eos:
            done |= torch.isin(tok, eos)
        # One host sync per token: the reference path; decoding.py's compiled path avoids it.
        if i == sampling.max_new_tokens - 1 or bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        out = model(
            inputs_embeds=embed(tok[:, None]),
            attention_mask=mask,
            position_ids=position[:, None],
            use_cache=True,
            **cache_kwargs(model, cache),
        )
        position = position + 1
        logits = out.logits[:, -1].float()
    if not tokens:
        return torch.empty(batch, 0, dtype=torch.long, device=device)
    return torch.stack(tokens, dim=1)


def choose_token(logits: Tensor, sampling: Sampling,
                 generator: torch.Generator | None) -> Tensor:
    """Pick the next token per row: argmax when greedy, else temperature + top-p sampling."""
    if sampling.temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > sampling.top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
