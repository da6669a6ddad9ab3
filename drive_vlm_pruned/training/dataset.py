"""
A data split prepared once: the six views resized by the adapter (uint8 cache) and tokenised QA.

Pre-rendering: every key frame's six images go through ``VLMAdapter.preprocess`` (the resize the
pipeline does at inference) once; the resized views are stored as uint8 ``[N, V, 3, H, W]`` in a
memory-mapped file under the run directory, and normalised on the fly by ``PackedVLM.pixels``.
Storing uint8 rounds each resized pixel to the nearest of 256 levels (at most 0.5/255 away from
the float the pipeline feeds). The cache is keyed by the data file (size, mtime) and the image
processor settings, and is rebuilt when they change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .samples import FrameTurns, prefix_prompt, tokenise_turn
from ..cameras import NUSCENES_CAMERAS
from ..data.drivelm import data_file, KeyFrame, load_camera_set, load_drivelm
from ..data.frame_qa import drill_qa
from ..data.plan_drill import drill_behavior_mc, drill_planning
from ..models.base import VLMAdapter


@dataclass
class SplitData:
    """One split ready to train on: frames, their cached views and their tokenised turns."""

    split: str
    frames: list[KeyFrame]
    images: np.ndarray  # uint8 [N, V, 3, H, W] (memory-mapped; V = 0 in the language stage)
    turns: list[FrameTurns]
    labels: np.ndarray | None = None  # bool [N, V, C, g, g] per-patch classes (patch_labels.py)

    def __len__(self) -> int:
        return len(self.frames)

    def batch(self, index: list[int]) -> tuple[torch.Tensor, list[FrameTurns]]:
        images = torch.from_numpy(np.stack([self.images[i] for i in index]))
        return images, [self.turns[i] for i in index]

    def patch_labels(self, index: list[int]) -> torch.Tensor:
        """Bool ``[B, V, C, g, g]`` for frames ``index``; ValueError if none were prepared."""
        if self.labels is None:
            raise ValueError(f'the {self.split} split was prepared without patch labels')
        return torch.from_numpy(np.stack([self.labels[i] for i in index]))


def load_frames(data: Path, split: str) -> list[KeyFrame]:
    """Read ``<data>/<split>.json``; ValueError if it has no QA to train on."""
    frames = load_drivelm(data, split=split)
    if not frames or not any(f.qa for f in frames):
        raise ValueError(f'{data_file(data, split)} has no key frames with QA: write the data '
                         'set with `drive-vlm data synth --out DIR` first')
    return frames


def qa_texts(frames: list[KeyFrame]) -> list[str]:
    """Every question and answer text of ``frames`` (the tokenizer's training corpus)."""
    return [text for f in frames for qa in f.qa for text in (qa.question, qa.answer)]


def frame_texts(frame: KeyFrame, index: int, drills: tuple[int, int, int, int] = (0, 0, 0, 0),
                seed: int = 0) -> list[tuple[str, str, str]]:
    """
    ``(family, question, answer)`` of a frame's QA, then its drill turns.

    ``drills`` = (exists, count, planning, behavior choice) turns: the camera drills come from
    the frame's ``gt.view_counts`` (``drill_qa``), the planning and behavior-choice drills from
    other train ego motions (``drill_planning``, ``drill_behavior_mc``), each kind from its own
    generator so one never shifts another.
    """
    exists, count, plan, choice = drills
    texts = [(qa.family or qa.category, qa.question, qa.answer) for qa in frame.qa]
    if exists or count:
        counts = frame.gt.view_counts if frame.gt is not None else {}
        if not counts:
            raise ValueError(f'{frame.where()}: no gt.view_counts for the drill questions; '
                             'write the data with `drive-vlm data synth` (format 3 or later), '
                             'or train with --drill-exists 0 --drill-count 0')
        texts += drill_qa(counts, np.random.default_rng([seed, 7, index]), exists, count)
    if plan:
        texts += drill_planning(np.random.default_rng([seed, 11, index]), plan)
    if choice:
        texts += drill_behavior_mc(np.random.default_rng([seed, 13, index]), choice)
    return texts


def tokenise_frames(adapter: VLMAdapter, frames: list[KeyFrame],
                    drills: tuple[int, int, int, int] = (0, 0, 0, 0),
                    seed: int = 0) -> list[FrameTurns]:
    names = NUSCENES_CAMERAS
    prefix = prefix_prompt(adapter, names)
    return [FrameTurns(tuple(tokenise_turn(adapter, names, question, answer, family, prefix,
                                           f.gt.view_counts if f.gt is not None else None)
                             for family, question, answer in frame_texts(f, i, drills, seed)))
            for i, f in enumerate(frames)]


def prepare_split(adapter: VLMAdapter, data: Path, split: str, cache_dir: Path,
                  frames: list[KeyFrame] | None = None,
                  log: Callable[[str], None] = print, with_labels: bool = False,
                  drills: tuple[int, int, int, int] = (0, 0, 0, 0), seed: int = 0,
                  with_views: bool = True) -> SplitData:
    """
    Load, pre-render (or reuse the cache) and tokenise one split; per-patch labels too.

    ``with_views=False`` (the language stage) renders nothing: its images have zero views.
    """
    frames = frames if frames is not None else load_frames(data, split)
    images = (_view_cache(adapter, data_file(data, split), frames, cache_dir / split, log)
              if with_views else np.empty((len(frames), 0, *adapter.image_shape), np.uint8))
    labels = None
    if with_labels:
        labels = _label_cache(adapter, data_file(data, split), frames,
                              cache_dir / f'{split}-labels', log)
    return SplitData(split, frames, images, tokenise_frames(adapter, frames, drills, seed), labels)


def _label_cache(adapter: VLMAdapter, source: Path, frames: list[KeyFrame], stem: Path,
                 log: Callable[[str], None]) -> np.ndarray:
    """Per-patch class labels of every view (patch_labels.py), cached like the views."""
    from PIL import Image

    from .patch_labels import PATCH_CLASSES, patch_labels

    vision = adapter.model.config.vision_config
    size, grid = vision.image_size, vision.image_size // vision.patch_size
    pad = adapter.prompt_format.pad_to_square
    shape = (len(frames), len(NUSCENES_CAMERAS), len(PATCH_CLASSES), grid, grid)
    stat = source.stat()
    key = hashlib.sha256(json.dumps([str(source.resolve()), stat.st_size, stat.st_mtime_ns,
                                     shape, size, pad]).encode()).hexdigest()
    meta, raw = stem.with_suffix('.json'), stem.with_suffix('.bool')
    if meta.is_file() and json.loads(meta.read_text()).get('key') == key:
        return np.fromfile(raw, dtype=np.bool_).reshape(shape)
    out = np.zeros(shape, dtype=np.bool_)
    for i, frame in enumerate(tqdm(frames, desc=f'patch labels {stem.name}', unit='frame')):
        masks = frame.gt.masks if frame.gt is not None else {}
        for v, camera in enumerate(NUSCENES_CAMERAS):
            if camera not in masks or not masks[camera].is_file():
                raise ValueError(f'{frame.where()}: no {camera} label mask; the patch loss needs '
                                 'the masks `drive-vlm data synth` writes (gt.masks)')
            with Image.open(masks[camera]) as m:
                out[i, v] = patch_labels(np.asarray(m), size, grid, pad)
    stem.parent.mkdir(parents=True, exist_ok=True)
    tmp = raw.with_name(raw.name + '.tmp')
    out.tofile(tmp)
    tmp.replace(raw)
    meta.write_text(json.dumps({'key': key, 'shape': shape, 'source': str(source)}))
    log(f'patch labels of {len(frames)} {stem.name.split("-")[0]} frames to {raw}')
    return out


def _view_cache(adapter: VLMAdapter, source: Path, frames: list[KeyFrame], stem: Path,
                log: Callable[[str], None]) -> np.ndarray:
    shape = (len(frames), len(NUSCENES_CAMERAS), *adapter.image_shape)
    proc = adapter.image_processor
    stat = source.stat()
    key = hashlib.sha256(json.dumps([str(source.resolve()), stat.st_size, stat.st_mtime_ns,
                                     shape, proc.image_mean, proc.image_std]).encode())
    meta, raw = stem.with_suffix('.json'), stem.with_suffix('.u8')
    if meta.is_file() and json.loads(meta.read_text()).get('key') == key.hexdigest():
        return np.memmap(raw, dtype=np.uint8, mode='r', shape=shape)
    stem.parent.mkdir(parents=True, exist_ok=True)
    tmp = raw.with_name(raw.name + '.tmp')
    out = np.memmap(tmp, dtype=np.uint8, mode='w+', shape=shape)
    mean = torch.tensor(proc.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(proc.image_std).view(1, 3, 1, 1)
    for i, frame in enumerate(tqdm(frames, desc=f'pre-render {stem.name}', unit='frame')):
        pixels = adapter.preprocess(load_camera_set(frame).images).values.float().cpu()
        # Undo the normalisation: the resized [0, 255] view, rounded to uint8.
        out[i] = (((pixels * std + mean) * 255.0).round().clamp(0, 255)).to(torch.uint8).numpy()
    out.flush()
    del out
    tmp.replace(raw)
    meta.write_text(json.dumps({'key': key.hexdigest(), 'shape': shape, 'source': str(source)}))
    log(f'pre-rendered {len(frames)} {stem.name} frames to {raw}')
    return np.memmap(raw, dtype=np.uint8, mode='r', shape=shape)
