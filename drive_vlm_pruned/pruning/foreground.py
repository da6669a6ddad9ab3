"""
Foreground recall: the share of ground-truth foreground patches that the kept tokens cover.

A diagnostic for every pruner (FastDriveVLA's premise: a driver looks at the foreground). The
patch grid of the GT mask is computed the way the encoder patches the image it sees:

1. the mask (any size, nonzero = foreground) is resized to the encoder's square input
   ``size x size`` exactly as the camera image is (LLaVA-OneVision / InternVL: a plain square
   resize, aspect ratio not kept; bilinear with antialiasing on the 0/1 mask, so a pixel's value is
   its foreground share);
2. token row ``r * grid + c`` covers the ``cell x cell`` pixels at ``(r * cell, c * cell)`` with
   ``cell = size // grid`` (a stride-``cell`` patch conv without padding, as SigLIP's 384 px / 14
   px -> 27 x 27; after InternVL's pixel shuffle a token covers 28 px of 448 -> 16 x 16);
3. a patch is foreground when its mean foreground share is at least ``threshold`` (default 0.5).

Recall over a frame is micro-averaged: kept foreground patches of all views over all
foreground patches of all views (a frame without foreground has no recall: NaN).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import math

import torch
from torch import Tensor
import torch.nn.functional as F


@dataclass(frozen=True)
class PatchGrid:
    """How an encoder patches its square input: ``size`` px, ``grid x grid`` tokens."""

    size: int
    grid: int

    @property
    def cell(self) -> int:
        return self.size // self.grid

    @staticmethod
    def of(size: int, tokens: int) -> PatchGrid:
        """Grid for ``tokens`` row-major patch tokens (a square number) of a ``size`` px input."""
        grid = math.isqrt(int(tokens))
        if grid * grid != int(tokens):
            raise ValueError(f'{tokens} tokens per view is not a square patch grid; foreground '
                             'recall needs the row-major grid of a square-resized view')
        if size < grid:
            raise ValueError(f'a {size} px input cannot hold a {grid} x {grid} patch grid')
        return PatchGrid(int(size), grid)


def patch_foreground_share(mask: Tensor, grid: PatchGrid) -> Tensor:
    """``[grid * grid]`` float: each token's foreground share (module doc, steps 1-2)."""
    if mask.dim() != 2:
        raise ValueError(f'mask has shape {tuple(mask.shape)}; expected [H, W] (nonzero = '
                         'foreground)')
    m = (mask != 0).float()[None, None]
    m = F.interpolate(m, size=(grid.size, grid.size), mode='bilinear', align_corners=False,
                      antialias=True)
    covered = grid.grid * grid.cell
    share = F.avg_pool2d(m[..., :covered, :covered], kernel_size=grid.cell, stride=grid.cell)
    return share.reshape(-1)


def patch_foreground(mask: Tensor, grid: PatchGrid, threshold: float = 0.5) -> Tensor:
    """``[grid * grid]`` bool: the foreground patches of one view (module doc)."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f'threshold={threshold} must lie in (0, 1]')
    return patch_foreground_share(mask, grid) >= threshold


@dataclass(frozen=True)
class Recall:
    """Kept foreground patches over all foreground patches (NaN when there are none)."""

    kept: int
    total: int

    @property
    def value(self) -> float:
        return self.kept / self.total if self.total else float('nan')

    def __add__(self, other: Recall) -> Recall:
        return Recall(self.kept + other.kept, self.total + other.total)


def foreground_recall(kept: Sequence[Tensor | Sequence[int]],
                      foreground: Sequence[Tensor]) -> Recall:
    """
    Recall of one frame: ``kept[v]`` kept rows of view v, ``foreground[v]`` ``[N_v]`` bool.

    ``kept`` may be a ``KeptTokens.indices[b]`` tuple or the pipeline's ``Result.kept_indices``.
    """
    if len(kept) != len(foreground):
        raise ValueError(f'{len(kept)} views kept but {len(foreground)} foreground masks: give '
                         'one per view, in the same order')
    hit = total = 0
    for v, (rows, fg) in enumerate(zip(kept, foreground)):
        fg = fg.bool().cpu()
        rows = torch.as_tensor(rows, dtype=torch.long).cpu()
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= fg.numel()):
            raise ValueError(f'view {v}: kept rows outside its {fg.numel()} foreground patches')
        hit += int(fg[rows].sum())
        total += int(fg.sum())
    return Recall(hit, total)
