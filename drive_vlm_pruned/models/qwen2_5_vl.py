"""
Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): the Impromptu-VLA checkpoints.

Each view is resized by the checkpoint's image processor within its min/max pixel budget (1596 px
squares give 57 x 57 = 3249 merged tokens; Impromptu's 262144-pixel setting turns 1600 x 900 into
26 x 48 = 1248 patches, 312 merged tokens) and encoded by the windowed ViT, whose 2 x 2 merger
gives the prunable tokens. Positions are 3-D (mrope: temporal, height, width): they are computed by
the model's own ``get_rope_index`` on the UNPRUNED sequence and gathered at the kept rows, and
decoding continues from the last prompt position + 1, which is the rope-delta correction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from .base import Pixels, PrefillInputs, PromptPieces, VisualFeatures, VLMAdapter
from ..pruning import KeptTokens, ViewTokens


class Qwen25VLAdapter(VLMAdapter):
    family = 'qwen2.5-vl'
    image_open = '<|vision_start|>'
    image_close = '<|vision_end|>'

    def preprocess(self, images: Sequence[np.ndarray]) -> Pixels:
        out = self.image_processor(images=list(images), return_tensors='pt')
        return Pixels(out['pixel_values'].to(self.device, self.dtype),
                      out['image_grid_thw'].to(self.device))

    def encode(self, pixels: Pixels, batch: int) -> VisualFeatures:
        views = pixels.grid_thw.shape[0] // batch
        per_image = self.model.model.get_image_features(pixels.values,
                                                        pixels.grid_thw).pooler_output
        feats = []
        for v in range(views):
            rows = [per_image[b * views + v] for b in range(batch)]
            if len({r.shape[0] for r in rows}) > 1:
                raise ValueError(
                    f'view {v} has different image sizes across the batch; batch frames whose '
                    'cameras share one resolution, or run them one at a time'
                )
            feats.append(torch.stack(rows))
        empty = feats[0].new_zeros(batch, 0, feats[0].shape[-1])
        return VisualFeatures(ViewTokens.from_list(feats), tuple(empty for _ in range(views)),
                              pixels.grid_thw)

    def build_inputs(self, feats: VisualFeatures, kept: KeptTokens,
                     prompts: Sequence[PromptPieces]) -> PrefillInputs:
        """Assemble as the base does, then swap 1-D indices for the unpruned 3-D mrope ids."""
        base = super().build_inputs(feats, kept, prompts)
        views = len(feats.tokens.features)
        sizes = feats.tokens.view_sizes()
        pos3 = torch.zeros(3, *base.position_ids.shape, dtype=torch.long, device=self.device)
        for b, prompt in enumerate(prompts):
            full = self.full_rope_index(prompt, sizes, feats.grid_thw[b * views:(b + 1) * views])
            real = base.attention_mask[b].bool()
            pos3[:, b, real] = full[:, base.position_ids[b, real]]
        return replace(base, position_ids=pos3, next_position=pos3[0, :, -1] + 1)

    def full_rope_index(self, prompt: PromptPieces, view_tokens: Sequence[int],
                        grid_thw) -> torch.Tensor:
        """Return ``[3, S]`` mrope ids of the unpruned sequence, by the model's get_rope_index."""
        ids = torch.tensor([self.full_sequence_ids(prompt, view_tokens)], device=self.device)
        image = (ids == self.image_token_id).int()
        positions, _ = self.model.model.get_rope_index(
            ids, mm_token_type_ids=image, image_grid_thw=grid_thw,
            attention_mask=torch.ones_like(ids),
        )
        return positions[:, 0]
