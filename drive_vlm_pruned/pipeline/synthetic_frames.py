"""Simple drawn six-view camera frames for the demo and the benchmarks (no dataset needed)."""

from __future__ import annotations

import numpy as np

from .camera_set import CameraSet
from ..cameras import FRAME_PERIOD_NS, NUSCENES_CAMERAS
from ..models.prompts import PLANNING


def synthetic_frame(index: int, size: tuple[int, int] = (225, 400), seed: int = 0) -> CameraSet:
    """Draw six camera images: sky, road with lane marks, and a few boxy vehicles."""
    rng = np.random.default_rng(seed * 1000 + index)
    h, w = size
    images = []
    for v in range(len(NUSCENES_CAMERAS)):
        img = np.empty((h, w, 3), np.uint8)
        horizon = h * 2 // 5
        img[:horizon] = np.linspace([110, 160, 230], [190, 215, 245], horizon).astype(np.uint8)[
            :, None]
        img[horizon:] = (90, 90, 95)
        for x in range(w // 2 - 40 - index * 3 + v, w // 2 + 40, 20):
            img[h - 30:h - 10, max(x, 0):max(x, 0) + 6] = (235, 235, 235)
        for _ in range(int(rng.integers(1, 4))):
            bw, bh = int(rng.integers(w // 10, w // 4)), int(rng.integers(h // 10, h // 4))
            x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(horizon - bh // 2, h - bh))
            img[y0:y0 + bh, x0:x0 + bw] = rng.integers(30, 230, 3)
        images.append(img)
    return CameraSet(index * FRAME_PERIOD_NS, tuple(images), NUSCENES_CAMERAS, PLANNING)
