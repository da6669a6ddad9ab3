"""
InternVL in the transformers-native format (``InternVLForConditionalGeneration``).

Each view is one 448 px tile: the InternViT patches (32 x 32 at patch 14) are pixel-shuffled by
the downsample ratio 0.5 into 16 x 16 = 256 tokens, then projected to the LLM width. All 256 are
prunable; the ``<img>`` and ``</img>`` markers around them are text and always stay.
"""

from __future__ import annotations

from torch import nn, Tensor

from .base import Pixels, VisualFeatures, VLMAdapter
from ..pruning import ViewTokens


class InternVLAdapter(VLMAdapter):
    family = 'internvl'
    image_open = '<img>'
    image_close = '</img>'

    def vision_module(self) -> nn.Module:
        return _InternVisionProjector(self.model.model, self.model.config)

    def encode(self, pixels: Pixels, batch: int) -> VisualFeatures:
        views = pixels.values.shape[0] // batch
        out = self.vision(pixels.values).to(self.dtype)  # [images, 256, D]
        feats = [out[v::views] for v in range(views)]
        empty = out.new_zeros(batch, 0, out.shape[-1])
        return VisualFeatures(ViewTokens.from_list(feats), tuple(empty for _ in range(views)))


class _InternVisionProjector(nn.Module):
    """``get_image_features`` as a module: InternViT, pixel shuffle, projector -> [n, 256, D]."""

    def __init__(self, model, config) -> None:
        super().__init__()
        self.model = model
        self.layer = config.vision_feature_layer
        self.strategy = config.vision_feature_select_strategy

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.model.get_image_features(
            pixel_values=pixel_values, vision_feature_layer=self.layer,
            vision_feature_select_strategy=self.strategy,
        ).pooler_output
