"""
LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``), DriveMM-style six-view prompting.

With several images per prompt the model uses each view's base 384 px crop only: SigLIP gives
27 x 27 = 729 patch tokens, the projector maps them to the LLM width, and one image-newline token
follows them (730 per view). The 729 patch tokens are prunable; the newline always stays.
"""

from __future__ import annotations

import torch

from .base import Pixels, VisualFeatures, VLMAdapter
from ..pruning import ViewTokens


class LlavaOnevisionAdapter(VLMAdapter):
    family = 'llava-onevision'

    def encode(self, pixels: Pixels, batch: int) -> VisualFeatures:
        views = pixels.values.shape[0] // batch
        cfg = self.model.config
        side = cfg.vision_config.image_size
        sizes = torch.tensor([[side, side]] * pixels.values.shape[0], device=self.device)
        out = self.model.model.get_image_features(
            pixels.values, sizes,
            vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
            batch_num_images=torch.tensor([views] * batch, device=self.device),
        )
        per_image = out.pooler_output  # one [N + 1, D] tensor per image: patches, then newline
        feats, suffix = [], []
        for v in range(views):
            rows = torch.stack([per_image[b * views + v] for b in range(batch)])
            feats.append(rows[:, :-1])
            suffix.append(rows[:, -1:])
        return VisualFeatures(ViewTokens.from_list(feats), tuple(suffix))
