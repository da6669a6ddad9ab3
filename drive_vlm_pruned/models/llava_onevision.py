"""
LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``), DriveMM-style six-view prompting.

With several images per prompt the model uses each view's base 384 px crop only: SigLIP gives
27 x 27 = 729 patch tokens, the projector maps them to the LLM width, and one image-newline token
follows them (730 per view). The 729 patch tokens are prunable; the newline always stays.
"""

from __future__ import annotations

from torch import nn, Tensor

from .base import Pixels, VisualFeatures, VLMAdapter
from ..pruning import ViewTokens


class LlavaOnevisionAdapter(VLMAdapter):
    family = 'llava-onevision'

    def vision_module(self) -> nn.Module:
        return _SiglipProjector(self.model.model, self.model.config.vision_feature_layer,
                                self.model.config.vision_feature_select_strategy)

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
