"""One synchronized frame of the six surround cameras, as the pipeline's input."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..cameras import NUSCENES_CAMERAS


@dataclass(frozen=True)
class CameraSet:
    """
    Six RGB images taken together, plus the question to ask about them.

    ``images[v]`` is an ``H x W x 3`` uint8 RGB array of camera ``names[v]``; sizes may differ
    between cameras. ``stamp_ns`` is the set's stamp (the node copies it onto every output).
    ``missing`` names cameras left out (silent ones, with the node's ``min_views`` below six):
    such a set runs on the views it has, and its result is marked degraded.
    """

    stamp_ns: int
    images: tuple[np.ndarray, ...]
    names: tuple[str, ...] = NUSCENES_CAMERAS
    question: str = ''
    missing: tuple[str, ...] = ()

    def validate(self, expected_views: int = len(NUSCENES_CAMERAS)) -> None:
        """Raise ValueError naming the bad view and the fix."""
        if not self.images or len(self.images) + len(self.missing) != expected_views:
            raise ValueError(
                f'got {len(self.images)} camera images and {len(self.missing)} named missing; '
                f'the model expects {expected_views} '
                f'({", ".join(NUSCENES_CAMERAS[:expected_views])}): send one image per camera'
            )
        if len(self.names) != len(self.images):
            raise ValueError(f'{len(self.names)} view names for {len(self.images)} images')
        for name, img in zip(self.names, self.images):
            if not isinstance(img, np.ndarray):
                raise ValueError(
                    f'{name}: image is a {type(img).__name__}, expected a numpy array'
                )
            if img.ndim != 3 or img.shape[2] != 3:
                raise ValueError(
                    f'{name}: image has shape {img.shape}; expected H x W x 3 RGB '
                    '(convert mono/RGBA/BGR to RGB first)'
                )
            if img.shape[0] == 0 or img.shape[1] == 0:
                raise ValueError(f'{name}: image is empty ({img.shape[0]} x {img.shape[1]})')
            if img.dtype != np.uint8:
                raise ValueError(f'{name}: image dtype is {img.dtype}; expected uint8 RGB')
