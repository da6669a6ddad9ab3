"""
Bring the visual tokens to the scale of the LLM's own residual stream (stage 2 of nano).

Why: in the from-scratch nano model the SigLIP residual stream grows layer by layer (patch
embeddings ~50, last hidden state ~900) and the projector maps it to visual tokens of norm
~7,500, against ~2 for text embeddings and ~100 for text tokens after the first decoder layer.
Qwen2's pre-norm layers add updates of norm ~10-25 to every token, which cannot move a
7,500-norm vector: the visual tokens pass through the LLM unchanged, so no layer can write into
them which camera they came from or what the question asks, and per-camera questions are
answered at the class prior (model card).

The fix keeps the architecture: scale the projector's last linear layer (weight and bias) so
the visual tokens' mean norm equals the text tokens' mean norm after the first decoder layer.
RMSNorm makes every layer's input scale-free, so the first layer computes exactly what it did
before; from the second layer on the visual tokens can change. ``norm_penalty`` keeps them
from growing back while training continues, and keeps a from-scratch run from growing them.
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def rescale_projector(net, images: Tensor) -> tuple[float, float]:
    """
    Scale ``net``'s projector so visual tokens match text after layer 1 (module doc).

    ``net`` is a ``PackedVLM``; ``images`` uint8 ``[B, V, 3, H, W]`` from the train split.
    Returns the visual tokens' mean norm before, and the text norm they now have.
    """
    visual, text = token_norms(net, images)
    last = net.adapter.model.model.multi_modal_projector.linear_2
    last.weight.mul_(text / visual)
    last.bias.mul_(text / visual)
    return visual, text


@torch.no_grad()
def token_norms(net, images: Tensor) -> tuple[float, float]:
    """Mean visual-token norm at the LLM input, mean text-token norm after decoder layer 1."""
    from ..pruning import keep_all

    adapter, batch = net.adapter, images.shape[0]
    feats = adapter.encode(net.pixels(images), batch)
    kept = keep_all(feats.tokens.valid_counts(), images.device)
    prefix = adapter.build_inputs(feats, kept, [net.prefix] * batch)
    out = adapter.model(inputs_embeds=prefix.inputs_embeds, position_ids=prefix.position_ids,
                        output_hidden_states=True, use_cache=False)
    visual_rows = torch.cat(prefix.visual_rows, dim=1)
    is_text = torch.ones(prefix.inputs_embeds.shape[:2], dtype=torch.bool,
                         device=visual_rows.device)
    is_text[torch.arange(batch, device=visual_rows.device)[:, None], visual_rows] = False
    visual = prefix.inputs_embeds[~is_text].norm(dim=-1).mean()
    text = out.hidden_states[1][is_text].norm(dim=-1).mean()
    return float(visual), float(text)


def norm_penalty(prefix, after_layer_one: Tensor, ratio: float) -> Tensor:
    """
    Return the squared log-excess of the mean visual-token norm over the cap (0 below it).

    The cap is ``ratio`` x the mean norm of the text tokens after decoder layer 1; that norm is
    a target, not trained toward.
    """
    batch = prefix.inputs_embeds.shape[0]
    visual_rows = torch.cat(prefix.visual_rows, dim=1)
    index = torch.arange(batch, device=visual_rows.device)[:, None]
    visual = prefix.inputs_embeds[index, visual_rows].float().norm(dim=-1).mean()
    is_text = torch.ones(prefix.inputs_embeds.shape[:2], dtype=torch.bool,
                         device=visual_rows.device)
    is_text[index, visual_rows] = False
    length = is_text.shape[1]  # the prefix rows; packed answer rows follow them
    text = after_layer_one[:, :length][is_text].detach().float().norm(dim=-1).mean()
    return torch.relu(torch.log(visual / (ratio * text))) ** 2
