"""
InternVL in the transformers-native format (``InternVLForConditionalGeneration``).

Each view is one 448 px tile: the InternViT patches (32 x 32 at patch 14) are pixel-shuffled by
the downsample ratio 0.5 into 16 x 16 = 256 tokens, then projected to the LLM width. All 256 are
prunable; the ``<img>`` and ``</img>`` markers around them are text and always stay.
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import Pixels, PromptPieces, VisualFeatures, VLMAdapter
from .prompts import six_view_text
from ..pruning import ViewTokens

SYSTEM = '<|im_start|>system\nYou are a helpful driving assistant.<|im_end|>\n'


class InternVLAdapter(VLMAdapter):
    family = 'internvl'

    @property
    def image_token_id(self) -> int:
        return self.model.config.image_token_id

    def encode(self, pixels: Pixels, batch: int) -> VisualFeatures:
        views = pixels.values.shape[0] // batch
        cfg = self.model.config
        out = self.model.model.get_image_features(
            pixel_values=pixels.values,
            vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        ).pooler_output  # [images, 256, D]
        feats = [out[v::views] for v in range(views)]
        empty = out.new_zeros(batch, 0, out.shape[-1])
        return VisualFeatures(ViewTokens.from_list(feats), tuple(empty for _ in range(views)))

    def prompt(self, question: str, names: Sequence[str]) -> PromptPieces:
        text = list(six_view_text(tuple(names)))
        text = [t + '<img>' for t in text[:-1]] + [text[-1]]
        text = [text[0]] + ['</img>' + t for t in text[1:]]
        text[0] = SYSTEM + '<|im_start|>user\n' + text[0]
        text[-1] = text[-1] + question + '<|im_end|>\n<|im_start|>assistant\n'
        return PromptPieces(tuple(self.tokenizer(t, add_special_tokens=False).input_ids
                                  for t in text))
