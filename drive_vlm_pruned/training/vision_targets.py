"""
Dense targets for the vision stage, from what the renderer knows about each view.

Per patch of the encoder's ``grid x grid`` (patch (r, c) is token ``r * grid + c``, the square
resize of ``VLMAdapter.preprocess``):

- ``semantic``: the majority label of its pixels (scenes.Label: 0 background ... 5 barrier);
- ``present``: which of the five classes (road, vehicle, pedestrian, sign, barrier) any of its
  pixels shows (patch_labels.py);
- ``band``: the distance band of its nearest pixel's ground range, ``DISTANCE_BANDS_M``, with a
  last band for sky and beyond;
- ``centre``: for each object class, whether the patch holds the centre of the visible box of
  an object the QA rules count (at least ``min_visible_px`` pixels, docs/qa_rules.md): the
  counting target, one hit per object.

Per view, ``counts``: the counted objects of each class, as the count questions ask them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .patch_labels import PATCH_CLASSES, patch_labels
from ..scenes.render import camera_rays, ViewRender
from ..scenes.rig import Camera
from ..scenes.world import OBJECT_LABELS

DISTANCE_BANDS_M = (10.0, 20.0, 40.0, 80.0)  # upper edges; one more band: farther, and sky
SEMANTIC_CLASSES = ('background',) + PATCH_CLASSES


@dataclass(frozen=True)
class ViewTargets:
    """One view: its encoder-size image and the dense targets above (numpy, compact)."""

    image: np.ndarray  # uint8 [3, size, size]
    semantic: np.ndarray  # uint8 [grid, grid]
    present: np.ndarray  # bool [len(PATCH_CLASSES), grid, grid]
    band: np.ndarray  # uint8 [grid, grid]
    centre: np.ndarray  # bool [len(OBJECT_LABELS), grid, grid]
    counts: np.ndarray  # int16 [len(OBJECT_LABELS)]


def resize_view(image: np.ndarray, size: int) -> np.ndarray:
    """Return ``image`` (H x W x 3 uint8) as uint8 [3, size, size], as preprocess resizes it."""
    x = torch.from_numpy(np.require(image, requirements=['C', 'W'])).permute(2, 0, 1)[None]
    x = F.interpolate(x.float(), size=(size, size), mode='bicubic', align_corners=False,
                      antialias=True)
    return x[0].round().clamp(0, 255).to(torch.uint8).numpy()


def ground_range(camera: Camera, object_depth: np.ndarray) -> np.ndarray:
    """Return each pixel's horizontal range (m) from the ego origin; inf for the sky."""
    rays = camera_rays(camera)  # ego-frame rays, optical-axis component 1
    origin = np.asarray(camera.extrinsics.translation)
    with np.errstate(divide='ignore', invalid='ignore'):
        ground_t = np.where(rays[..., 2] < -1e-9, -origin[2] / rays[..., 2], np.inf)
    t = np.minimum(ground_t, object_depth)
    finite = np.isfinite(t)
    x = origin[0] + rays[..., 0] * np.where(finite, t, 0.0)
    y = origin[1] + rays[..., 1] * np.where(finite, t, 0.0)
    return np.where(finite, np.hypot(x, y), np.inf)


def view_targets(view: ViewRender, camera: Camera, size: int, grid: int,
                 min_visible_px: int) -> ViewTargets:
    """Return the targets of one rendered view (see module doc)."""
    mask = view.mask
    present = patch_labels(mask, size, grid, pad_square=False)
    semantic = _block_mode(mask, grid, len(SEMANTIC_CLASSES))
    ranges = ground_range(camera, view.object_depth)
    bands = np.searchsorted(np.asarray(DISTANCE_BANDS_M), ranges).astype(np.int64)
    band = _block_min(bands, grid)
    centre = np.zeros((len(OBJECT_LABELS), grid, grid), dtype=bool)
    counts = np.zeros(len(OBJECT_LABELS), dtype=np.int16)
    h, w = mask.shape
    for obj in view.objects:
        if obj.visible_px < min_visible_px:
            continue
        c = OBJECT_LABELS.index(obj.object3d.label)
        x0, y0, x1, y1 = obj.box
        u = min(max((x0 + x1) / 2.0, 0.0), w - 1e-6)
        v = min(max((y0 + y1) / 2.0, 0.0), h - 1e-6)
        centre[c, int(v * grid / h), int(u * grid / w)] = True
        counts[c] += 1
    return ViewTargets(resize_view(view.image, size), semantic.astype(np.uint8), present,
                       band.astype(np.uint8), centre, counts)


def _blocks(h: int, w: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Return each pixel's patch row and column (the square resize maps rows and columns)."""
    return np.arange(h) * grid // h, np.arange(w) * grid // w


def _block_mode(labels: np.ndarray, grid: int, classes: int) -> np.ndarray:
    rows, cols = _blocks(*labels.shape, grid)
    cell = rows[:, None] * grid + cols[None, :]
    hist = np.zeros((grid * grid, classes), dtype=np.int64)
    np.add.at(hist, (cell.ravel(), labels.ravel().astype(np.int64)), 1)
    return hist.argmax(axis=1).reshape(grid, grid)


def _block_min(values: np.ndarray, grid: int) -> np.ndarray:
    rows, cols = _blocks(*values.shape, grid)
    cell = (rows[:, None] * grid + cols[None, :]).ravel()
    out = np.full(grid * grid, values.max(), dtype=values.dtype)
    np.minimum.at(out, cell, values.ravel())
    return out.reshape(grid, grid)
