"""
Foreground recall of what a pipeline Result kept, against a data set's GT label masks.

The rule (which patches are foreground, how recall is averaged) is pruning/foreground.py's;
this module reads the masks a key frame names (``gt.masks``, one label PNG per camera, nonzero =
foreground, a colour mask reduced by its channel maximum) and caches each view's patch grid.
Two users: the accuracy sweep (per QA, bench/accuracy_sweep.py) and ``foreground_recall_table``,
the per-pruner diagnostic of ``drive-vlm demo-pruners`` (one token decoded per frame).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.drivelm import KeyFrame
from ..pruning import make_pruner, Stage
from ..pruning.foreground import foreground_recall, patch_foreground, PatchGrid, Recall

CACHE_VIEWS = 20_000  # patch grids kept (a few hundred bytes each); the oldest go first


def mask_foreground(path: str | Path, image_size: int, tokens: int,
                    threshold: float = 0.5) -> torch.Tensor:
    """``[tokens]`` bool: the GT-foreground patches of one label mask (module doc)."""
    from PIL import Image

    with Image.open(path) as img:
        mask = torch.from_numpy(np.array(img))
    if mask.dim() == 3:
        mask = mask.amax(dim=-1)
    return patch_foreground(mask, PatchGrid.of(image_size, tokens), threshold)


class FrameForeground:
    """Foreground recall of Results on key frames of one encoder input size, masks cached."""

    def __init__(self, image_size: int) -> None:
        self.image_size = image_size
        self.cache: dict[tuple, torch.Tensor | None] = {}

    @classmethod
    def for_pipeline(cls, pipeline) -> tuple[FrameForeground | None, str]:
        """Return a scorer for a square-input encoder, or None and why not."""
        try:
            _, h, w = pipeline.adapter.image_shape
        except (AttributeError, TypeError, ValueError, KeyError) as err:
            return None, f'foreground recall not computed: no fixed encoder input ({err})'
        if h != w:
            return None, (f'foreground recall not computed: the encoder input is {w} x {h}, '
                          'not the square resize pruning/foreground.py assumes')
        return cls(int(h)), ''

    def recall(self, frame: KeyFrame, result) -> Recall:
        """Kept and total foreground patches of ``result``; (0, 0) when a mask is missing."""
        if frame.gt is None or not frame.gt.masks:
            return Recall(0, 0)
        fg = [self._view(frame, cam, n) for cam, n in zip(result.view_names,
                                                          result.tokens_before)]
        if any(f is None for f in fg):
            return Recall(0, 0)
        return foreground_recall(result.kept_indices, fg)

    def _view(self, frame: KeyFrame, camera: str, tokens: int) -> torch.Tensor | None:
        key = (frame.scene, frame.frame, camera, tokens)
        if key not in self.cache:
            path = frame.gt.masks.get(camera)
            ok = path is not None and Path(path).is_file()
            self.cache[key] = mask_foreground(path, self.image_size, tokens) if ok else None
            if len(self.cache) > CACHE_VIEWS:
                self.cache.pop(next(iter(self.cache)))
        return self.cache[key]


@dataclass(frozen=True)
class RecallCell:
    """Foreground recall of one pruner at one keep ratio over a set of frames."""

    pruner: str
    keep_ratio: float
    prune_layer: int
    kept: int  # GT-foreground patches kept
    total: int  # GT-foreground patches
    frames: int

    @property
    def recall(self) -> float:
        return Recall(self.kept, self.total).value


def foreground_recall_table(pipeline, frames: Sequence[KeyFrame], pruners: Sequence[str],
                            keep_ratios: Sequence[float], reconpruner_weights: str = '',
                            in_llm_layer: int = 2, batch: int = 4,
                            progress: bool = True) -> list[RecallCell]:
    """
    Foreground recall of each pruner at each keep ratio, through ``Pipeline.run_batch``.

    ``frames``: DriveLM key frames with ``gt.masks`` (``data.drivelm.load_drivelm``). In-LLM
    pruners run before layer ``in_llm_layer``; the kept rows are the pipeline's own result
    (``Result.kept_indices``), one token decoded per frame.
    """
    from tqdm.auto import tqdm

    from ..data.drivelm import load_camera_set
    from ..pipeline.pipeline import RuntimeSettings

    missing = [f.where() for f in frames if f.gt is None or not f.gt.masks]
    if missing:
        raise ValueError(f'{missing[0]}: no gt.masks; foreground recall needs the per-camera '
                         'masks of a `drive-vlm data synth` data set')
    scorer = FrameForeground(pipeline.adapter.image_shape[-1])
    sets = [load_camera_set(f) for f in frames]
    totals = {}
    jobs = [(name, r) for name in pruners for r in keep_ratios]
    bar = tqdm(total=len(jobs) * len(sets), disable=not progress, desc='foreground recall')
    for name, ratio in jobs:
        layer = in_llm_layer if make_pruner(name).stage is Stage.IN_LLM else 0
        settings = RuntimeSettings(keep_ratio=ratio, pruner=name, prune_layer=layer,
                                   max_new_tokens=1, reconpruner_weights=reconpruner_weights)
        recall = Recall(0, 0)
        for start in range(0, len(sets), batch):
            chunk = sets[start:start + batch]
            results = pipeline.run_batch(chunk, [settings] * len(chunk))
            for frame, result in zip(frames[start:start + batch], results):
                recall = recall + scorer.recall(frame, result)
            bar.update(len(chunk))
        totals[(name, ratio)] = RecallCell(name, ratio, layer, recall.kept, recall.total,
                                           len(sets))
    bar.close()
    return list(totals.values())


def recall_table(cells: Sequence[RecallCell]) -> str:
    """Markdown: one row per pruner, one column per keep ratio (foreground recall in %)."""
    ratios = sorted({c.keep_ratio for c in cells}, reverse=True)
    names = list(dict.fromkeys(c.pruner for c in cells))
    by = {(c.pruner, c.keep_ratio): c for c in cells}
    lines = ['| pruner | where | ' + ' | '.join(f'keep {r:g}' for r in ratios) + ' |',
             '|---|---|' + '---|' * len(ratios)]
    for name in names:
        first = by[(name, ratios[0])]
        where = 'pre-LLM' if first.prune_layer == 0 else f'layer {first.prune_layer}'
        row = [f'{100 * by[(name, r)].recall:.1f}%' for r in ratios]
        lines.append(f'| {name} | {where} | ' + ' | '.join(row) + ' |')
    return '\n'.join(lines)
