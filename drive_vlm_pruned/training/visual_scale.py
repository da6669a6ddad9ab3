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

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ScaleReport:
    """Mean token norms through one model (``drive-vlm train scale-report``)."""

    vision: tuple[float, ...]  # SigLIP hidden states: patch embeddings, then after each layer
    visual: float  # visual tokens at the LLM input (projector output)
    text_embedding: float  # text tokens at the LLM input
    text: tuple[float, ...]  # text tokens after each decoder layer
    visual_after: tuple[float, ...]  # visual tokens after each decoder layer
    visual_update: tuple[float, ...]  # what each decoder layer adds to a visual token

    def lines(self) -> list[str]:
        fmt = ', '.join
        return [
            f'vision tower hidden states (embeddings, layer 1..): '
            f'{fmt(f"{x:.1f}" for x in self.vision)}',
            f'visual tokens at the LLM input: {self.visual:.1f}; text embeddings: '
            f'{self.text_embedding:.2f}; ratio {self.visual / self.text_embedding:.3g}x',
            f'text tokens after LLM layer 1..: {fmt(f"{x:.1f}" for x in self.text)}',
            f'visual tokens after LLM layer 1..: {fmt(f"{x:.1f}" for x in self.visual_after)}',
            f'update a layer adds to a visual token: '
            f'{fmt(f"{x:.1f}" for x in self.visual_update)} (relative: '
            f'{fmt(f"{u / v:.3f}" for u, v in zip(self.visual_update, self.visual_after))})',
        ]


@torch.no_grad()
def scale_report(adapter, pixels, prefix_prompt, batch: int) -> ScaleReport:
    """
    Measure the mean token norms of a LLaVA-OneVision ``adapter`` on normalised ``pixels``.

    ``pixels`` is ``adapter.preprocess`` output for ``batch`` frames of V views each;
    ``prefix_prompt`` the six-view prompt without a question (``samples.prefix_prompt``).
    """
    from ..pruning import keep_all

    tower = adapter.model.model.vision_tower(pixels.values, output_hidden_states=True)
    feats = adapter.encode(pixels, batch)
    kept = keep_all(feats.tokens.valid_counts(), pixels.values.device)
    prefix = adapter.build_inputs(feats, kept, [prefix_prompt] * batch)
    hidden = adapter.model(inputs_embeds=prefix.inputs_embeds, position_ids=prefix.position_ids,
                           output_hidden_states=True, use_cache=False).hidden_states
    visual = _visual_mask(prefix)

    def mean(x: Tensor, rows: Tensor) -> float:
        return float(x[rows].norm(dim=-1).mean())

    inner = range(1, len(hidden) - 1)  # the last entry is after the final norm
    return ScaleReport(
        tuple(float(h.norm(dim=-1).mean()) for h in tower.hidden_states),
        mean(hidden[0], visual), mean(hidden[0], ~visual),
        tuple(mean(hidden[i], ~visual) for i in inner),
        tuple(mean(hidden[i], visual) for i in inner),
        tuple(mean(hidden[i] - hidden[i - 1], visual) for i in inner))


def _visual_mask(prefix) -> Tensor:
    """Bool ``[B, L]``: the rows of ``prefix`` that hold visual tokens."""
    rows = torch.cat(prefix.visual_rows, dim=1)
    mask = torch.zeros(prefix.inputs_embeds.shape[:2], dtype=torch.bool, device=rows.device)
    mask[torch.arange(rows.shape[0], device=rows.device)[:, None], rows] = True
    return mask


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


def token_norms(net, images: Tensor) -> tuple[float, float]:
    """Mean visual-token norm at the LLM input, mean text-token norm after decoder layer 1."""
    report = scale_report(net.adapter, net.pixels(images), net.prefix, images.shape[0])
    return report.visual, report.text[0]


def norm_penalty(prefix, after_layer_one: Tensor, ratio: float) -> Tensor:
    """
    Return the squared log-excess of the mean visual-token norm over the cap (0 below it).

    The cap is ``ratio`` x the mean norm of the text tokens after decoder layer 1; that norm is
    a target, not trained toward.
    """
    is_visual = _visual_mask(prefix)
    visual = prefix.inputs_embeds[is_visual].float().norm(dim=-1).mean()
    length = is_visual.shape[1]  # the prefix rows; packed answer rows follow them
    text = after_layer_one[:, :length][~is_visual].detach().float().norm(dim=-1).mean()
    return torch.relu(torch.log(visual / (ratio * text))) ** 2
