"""
The plan in the camera: a view with its kept tokens, the planned and the true future path.

One view with its pruned patches dimmed, the kept-token grid outlined, and the planned
trajectory and the ground-truth future drawn on the road (the recording's overlays).

Waypoints are ego-frame ground points (frames/calibration.py projects them); PIL's ImageDraw
rasterises the lines, so nothing here draws pixels by hand.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from .calibration import CameraCalibration, ground_polyline
from .mosaic import DIM, keep_mask, token_grid

PLAN_COLOUR = (0, 255, 255)  # cyan: the model's plan
TRUTH_COLOUR = (255, 0, 255)  # magenta: where the car really went
GRID_COLOUR = (255, 255, 0)  # yellow: the outline of every kept token's patch


def plan_overlay(image: np.ndarray, kept: Sequence[int], tokens: int,
                 camera: CameraCalibration | None = None,
                 plan_xy: Sequence[Sequence[float]] | None = None,
                 truth_xy: Sequence[Sequence[float]] | None = None,
                 line_px: int = 3) -> np.ndarray:
    """
    Return ``image`` (H x W x 3 RGB) with the pruner's choice and the two paths drawn on it.

    ``kept`` are the view's kept token rows of ``tokens`` (Result.kept_indices[v] and
    tokens_before[v]); pruned patches are dimmed and kept ones outlined. With ``camera`` (the
    calibration of this image's size; see CameraCalibration.scaled), ``plan_xy`` and
    ``truth_xy`` are drawn as ground paths from the ego origin.
    """
    h, w = image.shape[:2]
    out = image.astype(np.float32)
    out[~keep_mask(tokens, kept, (h, w), (h, w))] *= DIM
    canvas = Image.fromarray(out.astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    _outline_kept(draw, kept, tokens, (h, w))
    if camera is not None:
        if camera.width != w or camera.height != h:
            camera = camera.scaled(w, h)
        # The truth goes under the plan, wider, so a plan on the true path leaves it visible.
        for path, colour, width in ((truth_xy, TRUTH_COLOUR, line_px + 4),
                                    (plan_xy, PLAN_COLOUR, line_px)):
            for line in ground_polyline(camera, path or []):
                draw.line([tuple(p) for p in line.tolist()], fill=colour, width=width)
    return np.asarray(canvas)


def _outline_kept(draw: ImageDraw.ImageDraw, kept: Sequence[int], tokens: int,
                  image_hw: tuple[int, int]) -> None:
    rows, cols = token_grid(tokens, image_hw[1] / image_hw[0])
    ph, pw = image_hw[0] / rows, image_hw[1] / cols
    for index in np.asarray(kept, dtype=np.int64).tolist():
        r, c = divmod(index, cols)
        draw.rectangle([c * pw, r * ph, (c + 1) * pw - 1, (r + 1) * ph - 1], outline=GRID_COLOUR)
