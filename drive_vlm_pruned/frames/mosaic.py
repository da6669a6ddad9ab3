"""The kept-token mosaic: six views in a 2 x 3 grid with pruned patches dimmed (~/kept_tokens)."""

from __future__ import annotations

from collections.abc import Sequence
import math

import numpy as np

# Where each nuScenes camera sits in the 2 x 3 grid, as the nuScenes viewers lay them out.
MOSAIC_LAYOUT = {
    'CAM_FRONT_LEFT': (0, 0), 'CAM_FRONT': (0, 1), 'CAM_FRONT_RIGHT': (0, 2),
    'CAM_BACK_LEFT': (1, 0), 'CAM_BACK': (1, 1), 'CAM_BACK_RIGHT': (1, 2),
}
DIM = 0.3  # brightness of pruned patches
MISSING_GREY = 40


def token_grid(tokens: int, aspect: float) -> tuple[int, int]:
    """
    Return (rows, cols) of a view's token grid with rows * cols == tokens.

    Square grids (SigLIP 27 x 27, InternViT 16 x 16) come from square-resized images; otherwise
    (Qwen2.5-VL's native resolution) the factor pair closest to the image aspect w / h.
    """
    side = math.isqrt(tokens)
    if side * side == tokens:
        return side, side
    pairs = [(r, tokens // r) for r in range(1, tokens + 1) if tokens % r == 0]
    return min(pairs, key=lambda rc: abs(math.log(rc[1] / rc[0]) - math.log(aspect)))


def keep_mask(tokens: int, kept: Sequence[int], image_hw: tuple[int, int],
              tile_hw: tuple[int, int]) -> np.ndarray:
    """Return a ``tile_h x tile_w`` bool mask, True over the patches of the kept tokens."""
    rows, cols = token_grid(tokens, image_hw[1] / image_hw[0])
    grid = np.zeros(rows * cols, bool)
    grid[np.asarray(kept, dtype=np.int64)] = True
    grid = grid.reshape(rows, cols)
    ys = np.arange(tile_hw[0]) * rows // tile_hw[0]
    xs = np.arange(tile_hw[1]) * cols // tile_hw[1]
    return grid[ys[:, None], xs[None, :]]


def render_mosaic(images: Sequence[np.ndarray], names: Sequence[str],
                  kept: Sequence[Sequence[int]], tokens: Sequence[int],
                  tile_hw: tuple[int, int] = (180, 320)) -> np.ndarray:
    """
    Return a ``2*tile_h x 3*tile_w`` RGB mosaic with the pruned patches of every view dimmed.

    ``kept[v]`` are view v's kept token rows out of ``tokens[v]`` (the Result's kept_indices and
    tokens_before). Cameras not in ``names`` (silent ones) show as dark grey tiles.
    """
    th, tw = tile_hw
    out = np.full((2 * th, 3 * tw, 3), MISSING_GREY, np.uint8)
    for img, name, idx, n in zip(images, names, kept, tokens):
        row, col = MOSAIC_LAYOUT.get(name, (len(MOSAIC_LAYOUT) // 3, 0))
        ys = np.arange(th) * img.shape[0] // th
        xs = np.arange(tw) * img.shape[1] // tw
        tile = img[ys[:, None], xs[None, :]].astype(np.float32)
        mask = keep_mask(n, idx, img.shape[:2], tile_hw)
        tile[~mask] *= DIM
        out[row * th:(row + 1) * th, col * tw:(col + 1) * tw] = tile.astype(np.uint8)
    return out
