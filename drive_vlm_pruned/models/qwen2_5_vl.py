"""
Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``): the Impromptu-VLA checkpoints.

Each view is resized by the checkpoint's image processor within its min/max pixel budget (1596 px
squares give 57 x 57 = 3249 merged tokens; Impromptu's 262144-pixel setting turns 1600 x 900 into
26 x 48 = 1248 patches, 312 merged tokens) and encoded by the windowed ViT, whose 2 x 2 merger
gives the prunable tokens. Positions are 3-D (mrope: temporal, height, width): they are computed by
the model's own ``get_rope_index`` on the UNPRUNED sequence and gathered at the kept rows, and
decoding continues from the last prompt position + 1, which is the rope-delta correction.

The ViT runs through ``QwenVisionEncoder`` (models/qwen_vision.py): the model's own blocks for one
fixed patch grid, with the rotary table, window permutation and masks precomputed, so it exports
to ONNX like the other families' encoders. The exported grid is the one the processor gives a
``camera_hw`` frame (nuScenes 1600 x 900 unless ``drive-vlm export-vision --camera-size`` says
otherwise); the graph records that size, and loading it sets ``camera_hw`` again. Only the number
of views is dynamic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import cached_property
import math
from typing import ClassVar

import numpy as np
from PIL import Image
import torch
from torch import Tensor

from .base import Pixels, PrefillInputs, PromptPieces, VisualFeatures, VLMAdapter
from .qwen_vision import QwenVisionEncoder
from ..pruning import KeptTokens, ViewTokens
from ..vision.onnx_export import CAMERA_HW_KEY, format_hw, GRID_HW_KEY, parse_hw


class Qwen25VLAdapter(VLMAdapter):
    family = 'qwen2.5-vl'
    image_open = '<|vision_start|>'
    image_close = '<|vision_end|>'
    # The camera frame size the exportable encoder is fixed for (set_camera_hw): by default
    # nuScenes' six 1600 x 900 views.
    camera_hw: tuple[int, int] = (900, 1600)
    # Backends that run a graph built for one input shape; torch and compile run any grid.
    FIXED_GRID_BACKENDS: ClassVar[tuple[str, ...]] = ('onnxruntime', 'tensorrt')

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._grid_encoders: dict[tuple[int, int], QwenVisionEncoder] = {}

    def vision_module(self, grid_hw: tuple[int, int] | None = None) -> QwenVisionEncoder:
        """Return the exportable ViT + merger for a ``grid_hw`` patch grid (``vision_grid``)."""
        return QwenVisionEncoder(self.model.model.visual, grid_hw or self.vision_grid)

    def set_camera_hw(self, camera_hw: tuple[int, int]) -> None:
        """Fix the exportable encoder to ``(H, W)`` camera frames (their patch grid)."""
        if min(camera_hw) < 1:
            raise ValueError(f'camera size {camera_hw[1]}x{camera_hw[0]}: give WxH in pixels')
        self.camera_hw = tuple(camera_hw)
        self.__dict__.pop('vision_grid', None)  # cached for the old size

    def vision_metadata(self) -> dict[str, str]:
        return {CAMERA_HW_KEY: format_hw(self.camera_hw), GRID_HW_KEY: format_hw(self.vision_grid)}

    def use_vision_backend(self, backend) -> None:
        """Use ``backend``; a fixed-grid graph's recorded camera size becomes ``camera_hw``."""
        if CAMERA_HW_KEY in backend.metadata:
            self.set_camera_hw(parse_hw(backend.metadata[CAMERA_HW_KEY]))
        super().use_vision_backend(backend)

    @cached_property
    def vision_grid(self) -> tuple[int, int]:
        """Return the ``(grid_h, grid_w)`` patch grid the processor gives a ``camera_hw`` frame."""
        frame = np.zeros((*self.camera_hw, 3), dtype=np.uint8)
        grid = self.image_processor(images=self._fit_pixels([frame]),
                                    return_tensors='pt')['image_grid_thw'][0]
        return int(grid[1]), int(grid[2])

    @property
    def image_shape(self) -> tuple[int, int]:
        """Return one view's fixed encoder input: ``(patches, patch_dim)`` of ``vision_grid``."""
        config = self.model.config.vision_config
        patch_dim = (config.in_channels * config.temporal_patch_size * config.patch_size ** 2)
        return (self.vision_grid[0] * self.vision_grid[1], patch_dim)

    def preprocess(self, images: Sequence[np.ndarray]) -> Pixels:
        out = self.image_processor(images=self._fit_pixels(images), return_tensors='pt')
        return Pixels(out['pixel_values'].to(self.device, self.dtype),
                      out['image_grid_thw'].to(self.device))

    def _fit_pixels(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """
        Shrink views above the prompt format's pixel budget, as the model was trained.

        Impromptu-VLA trained with LLaMA-Factory's ``image_max_pixels`` 262144: an image with
        more pixels is first resized (nearest neighbour) by sqrt(budget / pixels), each side
        truncated to an integer (LLaMA-Factory mm_plugin ``_preprocess_image``); the image
        processor's own smart resize to multiples of 28 follows. 1600 x 900 becomes 682 x 384,
        then 672 x 392: 48 x 28 patches, 336 tokens.
        """
        budget = self.prompt_format.image_max_pixels
        if not budget:
            return list(images)
        out = []
        for img in images:
            height, width = img.shape[:2]
            if height * width > budget:
                scale = math.sqrt(budget / (height * width))
                size = (int(width * scale), int(height * scale))
                img = np.asarray(Image.fromarray(img).resize(size, Image.Resampling.NEAREST))
            out.append(img)
        return out

    def encode(self, pixels: Pixels, batch: int) -> VisualFeatures:
        views = pixels.grid_thw.shape[0] // batch
        per_image = self._vision_features(pixels)
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

    def _vision_features(self, pixels: Pixels) -> list[Tensor]:
        """Encode each image; images of one patch grid go through the encoder together."""
        grids = [tuple(g) for g in pixels.grid_thw.tolist()]
        chunks = pixels.values.split([t * h * w for t, h, w in grids])
        out: list[Tensor] = [None] * len(grids)
        for grid in dict.fromkeys(grids):
            members = [i for i, g in enumerate(grids) if g == grid]
            encoder = self._encoder(grid)
            feats = encoder(torch.stack([chunks[i] for i in members])).to(self.dtype)
            for row, i in enumerate(members):
                out[i] = feats[row]
        return out

    def _encoder(self, grid: tuple[int, int, int]):
        """Return the vision backend for ``grid``, or an eager encoder built for it."""
        frames, height, width = grid
        if frames != 1:
            raise ValueError(f'grid {grid}: only single images are encoded here, not videos')
        if (height, width) == self.vision_grid:
            return self.vision
        if self.vision_backend in self.FIXED_GRID_BACKENDS:
            fixed_h, fixed_w = self.vision_grid
            raise ValueError(
                f'the {self.vision_backend} vision encoder is fixed to a {fixed_h} x {fixed_w} '
                f'patch grid ({self.camera_hw[1]} x {self.camera_hw[0]} frames), these frames '
                f'give {height} x {width}: feed {self.camera_hw[1]} x {self.camera_hw[0]} '
                'frames, export for these frames (drive-vlm export-vision --camera-size WxH), '
                'or use vision_backend torch'
            )
        if (height, width) not in self._grid_encoders:
            self._grid_encoders[height, width] = self.vision_module((height, width))
        return self._grid_encoders[height, width]

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
        grid_thw = grid_thw[list(prompt.slot_views())]  # the images in prompt order
        image = (ids == self.image_token_id).int()
        positions, _ = self.model.model.get_rope_index(
            ids, mm_token_type_ids=image, image_grid_thw=grid_thw,
            attention_mask=torch.ones_like(ids),
        )
        return positions[:, 0]
