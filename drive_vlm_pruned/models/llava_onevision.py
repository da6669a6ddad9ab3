"""
LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``), DriveMM-style six-view prompting.

With several images per prompt the model uses each view's base 384 px crop only: SigLIP gives
27 x 27 = 729 patch tokens, the projector maps them to the LLM width, and one image-newline token
follows them (730 per view). The 729 patch tokens are prunable; the newline always stays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn, Tensor

from .base import Pixels, VisualFeatures, VLMAdapter
from ..pruning import ViewTokens


class LlavaOnevisionAdapter(VLMAdapter):
    family = 'llava-onevision'

    def vision_module(self) -> nn.Module:
        return _SiglipProjector(self.model.model, self.model.config.vision_feature_layer,
                                self.model.config.vision_feature_select_strategy)

    def preprocess(self, images: Sequence[np.ndarray]) -> Pixels:
        """Pad views to squares first when the checkpoint trained that way (DriveMM)."""
        if self.prompt_format.pad_to_square:
            images = [pad_to_square(img, self.image_processor.image_mean) for img in images]
        return super().preprocess(images)

    def encode(self, pixels: Pixels, batch: int) -> VisualFeatures:
        views = pixels.values.shape[0] // batch
        per_image = self.vision(pixels.values).to(self.dtype)  # [images, 729, D]
        newline = self.model.model.image_newline.to(self.dtype)
        feats, suffix = [], []
        for v in range(views):
            feats.append(per_image[v::views])
            suffix.append(newline.expand(batch, 1, -1))
        return VisualFeatures(ViewTokens.from_list(feats), tuple(suffix))


class _SiglipProjector(nn.Module):
    """
    The base-crop path of ``get_image_features`` without the list packing, so it exports.

    Vision tower hidden state at ``vision_feature_layer`` (the CLS row dropped for the 'default'
    strategy), then the multimodal projector: ``[n, 3, 384, 384] -> [n, 729, D]``. The image
    newline is appended by the adapter. The tests check it equals the model's own path.
    """

    def __init__(self, model, layer: int, strategy: str) -> None:
        super().__init__()
        self.tower = model.vision_tower
        self.projector = model.multi_modal_projector
        self.layer = layer
        self.drop_cls = strategy == 'default'

    def forward(self, pixel_values: Tensor) -> Tensor:
        hidden = self.tower(pixel_values, output_hidden_states=True).hidden_states[self.layer]
        if self.drop_cls:
            hidden = hidden[:, 1:]
        return self.projector(hidden)


def pad_to_square(image: np.ndarray, mean: Sequence[float]) -> np.ndarray:
    """
    Centre ``image`` on a square canvas of the image-mean colour (LLaVA's ``expand2square``).

    LLaVA-NeXT pads every image of a multi-image sample this way before the 384 px resize
    (zhijian11/DriveMM llava/train/train.py ``process_image(..., 'pad')``), so a 1600 x 900 view
    keeps its aspect ratio with grey bands above and below.
    """
    height, width = image.shape[:2]
    if height == width:
        return image
    side = max(height, width)
    colour = np.array([int(m * 255) for m in mean], dtype=image.dtype)
    canvas = np.empty((side, side, image.shape[2]), dtype=image.dtype)
    canvas[:] = colour
    top, left = (side - height) // 2, (side - width) // 2
    canvas[top:top + height, left:left + width] = image
    return canvas
