"""
Per-patch class targets from the label masks, for the vision tower's auxiliary loss.

Why: trained on answer tokens only, the nano model answers per-camera questions ("Is there a
sign in the back left view?") at the class prior: its exists/count accuracy stalled after ~600
steps while the language side kept learning (model card). ``drive-vlm data synth`` already
writes a label mask per view (0 background, 1 road, 2 vehicle, 3 pedestrian, 4 sign, 5 barrier:
docs/qa_rules.md). Linear probes inside the LLM (``GroundingProbe``) turn those masks into dense
targets for the two things a per-camera question needs: visual tokens that know what lies under
them and in which camera, and a question side that gathers them.

Geometry: the mask goes through the same steps as its image in ``VLMAdapter.preprocess``
(centred on a square canvas when the checkpoint pads views, then square-resized to the encoder
size), nearest-neighbour so labels never blend; patch (r, c) covers pixel block
``[r*p:(r+1)*p, c*p:(c+1)*p]`` and is token ``r * grid + c``, as for ReconPruner
(training/recon_data.py). A class is present in a patch when any of its pixels is.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn, Tensor
import torch.nn.functional as F

# mask labels 1..5, in order (0 is background)
PATCH_CLASSES: tuple[str, ...] = ('road', 'vehicle', 'pedestrian', 'sign', 'barrier')


def patch_labels(mask: np.ndarray, size: int, grid: int, pad_square: bool) -> np.ndarray:
    """Return bool ``[len(PATCH_CLASSES), grid, grid]``: which classes lie under each patch."""
    if mask.ndim == 3:
        mask = mask.max(axis=-1)
    if pad_square and mask.shape[0] != mask.shape[1]:
        side = max(mask.shape)
        canvas = np.zeros((side, side), dtype=mask.dtype)
        top, left = (side - mask.shape[0]) // 2, (side - mask.shape[1]) // 2
        canvas[top:top + mask.shape[0], left:left + mask.shape[1]] = mask
        mask = canvas
    m = torch.from_numpy(np.require(mask, requirements=['C', 'W'])).float()[None, None]
    m = F.interpolate(m, size=(size, size), mode='nearest')[0, 0].long()
    onehot = F.one_hot(m.clamp(0, len(PATCH_CLASSES)), len(PATCH_CLASSES) + 1)[..., 1:]
    per_patch = F.max_pool2d(onehot.permute(2, 0, 1).float()[None], size // grid)[0]
    return per_patch.bool().numpy()


class GroundingProbe(nn.Module):
    """
    Linear probes that teach the LLM to find a class in a named camera; training only, never saved.

    - Token probe, on every visual token's hidden state after ``token_layer`` LLM layers: which
      (camera, class) pairs lie under its patch, a ``V * C`` multi-label target that is zero
      outside its own camera's block. A token must then carry the conjunction "a sign, in the
      back-left view", which the image alone cannot tell (the back-left and front-left views
      look alike): only the prompt order says which camera a token came from.
    - Scene probe, on each QA turn's answer position after ``scene_layer`` layers: the frame's
      whole ``V x C`` presence table. This asks the question side to gather the table from the
      visual tokens (an average over them suffices once they carry the conjunction), so that
      the answer only has to read the entry its question names.

    Both are binary cross-entropies; the token probe's positives are weighted by ``pos_weight``
    per class, so "nothing anywhere" cannot score well. Trained on answers alone the nano model's
    exists answers stayed at the class prior (model card).
    """

    def __init__(self, width: int, views: int, pos_weight: Tensor) -> None:
        super().__init__()
        self.views = views
        self.token = nn.Linear(width, views * len(PATCH_CLASSES))
        self.scene = nn.Linear(width, views * len(PATCH_CLASSES))
        self.register_buffer('pos_weight', pos_weight.float().repeat(views), persistent=False)

    def token_loss(self, tokens: Tensor, labels: Tensor) -> Tensor:
        """``tokens`` ``[B, V, N, D]`` (N = grid*grid, token order); labels ``[B, V, C, g, g]``."""
        per_patch = labels.flatten(3).transpose(2, 3).float()  # [B, V, N, C]
        eye = torch.eye(self.views, device=tokens.device)  # the token's own camera block
        target = (eye[None, :, None, :, None] * per_patch[:, :, :, None, :]).flatten(3)
        return F.binary_cross_entropy_with_logits(self.token(_normed(tokens)), target,
                                                  pos_weight=self.pos_weight)

    def scene_loss(self, states: Tensor, frame_of: Tensor, labels: Tensor) -> Tensor:
        """``states`` ``[T, D]`` at the answer positions of turns from frames ``frame_of``."""
        present = labels.flatten(3).any(-1).flatten(1).float()  # [B, V * C]
        # Unweighted: per camera a class is present far more often than under a given patch.
        return F.binary_cross_entropy_with_logits(self.scene(_normed(states)), present[frame_of])


def _normed(x: Tensor) -> Tensor:
    # Hidden states reach norms in the hundreds; without a norm the probes' first logits are
    # huge and their loss swamps the answer loss under the shared gradient clip.
    return F.layer_norm(x.float(), x.shape[-1:])


def class_pos_weight(labels: np.ndarray, cap: float = 20.0) -> Tensor:
    """Return ``(1 - p) / p`` per class over ``[..., C, g, g]`` labels, clipped to [1, cap]."""
    share = labels.reshape(-1, labels.shape[-3], labels.shape[-2] * labels.shape[-1])
    p = share.mean(axis=(0, 2)).clip(1e-4, 1 - 1e-4)
    return torch.from_numpy(((1 - p) / p).clip(1.0, cap)).float()
