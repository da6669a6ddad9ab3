"""
Per-patch class targets from the label masks: which classes lie under each visual token.

``drive-vlm data synth`` writes a label mask per view (0 background, 1 road, 2 vehicle,
3 pedestrian, 4 sign, 5 barrier: docs/qa_rules.md). The vision stage learns them per patch
(vision_targets.py), and the VLM stage's object routing finds the named class's tokens with
them (view_routing.py).

Geometry: the mask goes through the same steps as its image in ``VLMAdapter.preprocess``
(centred on a square canvas when the checkpoint pads views, then square-resized to the encoder
size), nearest-neighbour so labels never blend; patch (r, c) covers pixel block
``[r*p:(r+1)*p, c*p:(c+1)*p]`` and is token ``r * grid + c``, as for ReconPruner
(training/recon_data.py). A class is present in a patch when any of its pixels is.
"""

from __future__ import annotations

import numpy as np
import torch
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
