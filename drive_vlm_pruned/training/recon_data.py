"""
ReconPruner training views: image + foreground-mask pairs, encoded once by the frozen encoder.

Two layouts are read (docs/reconpruner.md):

- a data set written by ``drive-vlm data synth`` (``DIR/<split>.json`` in DriveLM shape): every
  key frame gives six views, each with its label mask ``gt.masks[camera]`` (docs/qa_rules.md;
  every nonzero label, road included, is foreground, as nuScenes-FG defines it);
- user pairs in a nuScenes-FG-like layout::

      DIR/images/<any/sub/path>/<name>.jpg|.jpeg|.png
      DIR/masks/<same/sub/path>/<name>.png      (nonzero = foreground)
      DIR/val.txt   (optional: image paths relative to DIR/images, one a line, held out)

  Without ``val.txt`` every tenth pair (sorted by path) is the validation split.

Each view is square-resized the way the encoder sees it (``VLMAdapter.preprocess``) to the
reconstruction size ``grid * patch_pixels``, and its mask likewise (bilinear with antialiasing,
then >= 0.5), so pixel block (r, c) lies under token ``r * grid + c``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
import hashlib
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .reconpruner import ReconData

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png')
CACHE_VERSION = 1


@dataclass(frozen=True)
class ViewPair:
    """One camera view: its image and its foreground mask."""

    image: Path
    mask: Path


def find_pairs(data_dir: str | Path, split: str) -> list[ViewPair]:
    """Return the views of ``split`` (train | val | test) in either layout (module doc)."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise ValueError(f'--data {root} is not a directory: pass a data set written by '
                         '`drive-vlm data synth`, or a folder with images/ and masks/')
    if (root / 'images').is_dir() and (root / 'masks').is_dir():
        return _folder_pairs(root, split)
    if any(root.glob('*.json')):
        return _synthetic_pairs(root, split)
    raise ValueError(f'{root} holds neither <split>.json (a `drive-vlm data synth` data set) nor '
                     'images/ and masks/ folders (image + mask pairs): see docs/reconpruner.md')


def _synthetic_pairs(root: Path, split: str) -> list[ViewPair]:
    from ..cameras import NUSCENES_CAMERAS
    from ..data.drivelm import load_drivelm

    frames = load_drivelm(root, split=split)
    pairs = []
    for frame in frames:
        if frame.gt is None or not frame.gt.masks:
            raise ValueError(f'{frame.where()}: no gt.masks; ReconPruner needs per-camera '
                             'foreground masks (data written by `drive-vlm data synth`)')
        for camera in NUSCENES_CAMERAS:
            mask = frame.gt.masks.get(camera)
            if mask is None or not mask.is_file():
                raise ValueError(f'{frame.where()}: the {camera} mask {mask} is missing')
            pairs.append(ViewPair(frame.image_paths[camera], mask))
    return pairs


def _folder_pairs(root: Path, split: str) -> list[ViewPair]:
    images = sorted(p for p in (root / 'images').rglob('*') if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f'{root / "images"} holds no .jpg/.jpeg/.png images')
    held_out = None
    if (root / 'val.txt').is_file():
        held_out = {line.strip() for line in (root / 'val.txt').read_text().splitlines()
                    if line.strip()}
    pairs = []
    for i, image in enumerate(images):
        rel = image.relative_to(root / 'images')
        mask = (root / 'masks' / rel).with_suffix('.png')
        if not mask.is_file():
            raise ValueError(f'image {image} has no mask {mask}: every image needs a PNG mask '
                             'at the same relative path under masks/ (nonzero = foreground)')
        is_val = rel.as_posix() in held_out if held_out is not None else i % 10 == 9
        if (split == 'val') == is_val:
            pairs.append(ViewPair(image, mask))
    return pairs


def read_pair(pair: ViewPair, size: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Return (RGB uint8 H x W x 3 original, [3, size, size] uint8, [1, size, size] bool)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(pair.image) as img:
            rgb = np.asarray(img.convert('RGB'))
        with Image.open(pair.mask) as m:
            mask = np.asarray(m)
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f'cannot read {pair.image} / {pair.mask}: {err}') from None
    if mask.ndim == 3:
        mask = mask.max(axis=-1)
    if mask.shape[:2] != rgb.shape[:2]:
        raise ValueError(f'mask {pair.mask} is {mask.shape[1]}x{mask.shape[0]} but image '
                         f'{pair.image} is {rgb.shape[1]}x{rgb.shape[0]}: they must match')
    x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(size, size), mode='bicubic', align_corners=False, antialias=True)
    m = torch.from_numpy((mask != 0).astype(np.float32))[None, None]
    m = F.interpolate(m, size=(size, size), mode='bilinear', align_corners=False, antialias=True)
    return rgb, x[0].clamp(0, 255).round().to(torch.uint8), m[0] >= 0.5


def token_grid(adapter) -> int:
    """Tokens per side of one view's square patch grid (LLaVA-OneVision, InternVL)."""
    probe = np.zeros((adapter.image_shape[1], adapter.image_shape[2], 3), np.uint8)
    with torch.inference_mode():
        feats = adapter.encode(adapter.preprocess([probe]), 1)
    n = feats.tokens.features[0].shape[1]
    grid = math.isqrt(n)
    if grid * grid != n:
        raise ValueError(f'{adapter.family} gives {n} tokens per view, not a square patch grid: '
                         'ReconPruner training needs a square-resized view (LLaVA-OneVision, '
                         'InternVL)')
    return grid


def encode_pairs(adapter, pairs: Sequence[ViewPair], recon_size: int, batch: int = 16,
                 progress: bool = True) -> ReconData:
    """Encode every view once with the frozen encoder + projector (``adapter.encode``)."""
    from tqdm.auto import tqdm

    tokens, images, masks = [], [], []
    bar = tqdm(range(0, len(pairs), batch), disable=not progress, desc='encoding views',
               unit='batch')
    for start in bar:
        chunk = [read_pair(p, recon_size) for p in pairs[start:start + batch]]
        with torch.inference_mode():
            feats = adapter.encode(adapter.preprocess([c[0] for c in chunk]), len(chunk))
        tokens.append(feats.tokens.features[0].to('cpu', torch.float16))
        images.append(torch.stack([c[1] for c in chunk]))
        masks.append(torch.stack([c[2] for c in chunk]))
    return ReconData(torch.cat(tokens), torch.cat(images), torch.cat(masks))


def cache_key(model_dir: Path, pairs: Sequence[ViewPair], recon_size: int) -> dict:
    """Return what the encoded views depend on: model weights, files and sizes."""
    digest = hashlib.sha256()
    for p in pairs:
        for path in (p.image, p.mask):
            stat = path.stat()
            digest.update(f'{path}:{stat.st_size}:{stat.st_mtime_ns};'.encode())
    weights = sorted(model_dir.glob('*.safetensors'))
    model = [(w.name, w.stat().st_size, w.stat().st_mtime_ns) for w in weights
             if w.name != 'reconpruner.safetensors']
    return {'version': CACHE_VERSION, 'model': str(model_dir.resolve()), 'weights': model,
            'files': digest.hexdigest(), 'views': len(pairs), 'size': recon_size}


def load_or_encode(adapter, model_dir: Path, pairs: Sequence[ViewPair], recon_size: int,
                   cache: Path | None, progress: bool = True,
                   log: Callable[[str], None] = print) -> ReconData:
    """Return the encoded views from ``cache`` if it matches, else encode and cache them."""
    key = cache_key(model_dir, pairs, recon_size)
    if cache is not None:
        data = ReconData.load(cache, key)
        if data is not None:
            log(f'{len(data)} encoded views from {cache}')
            return data
    data = encode_pairs(adapter, pairs, recon_size, progress=progress)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + '.tmp')
        data.save(tmp, key)
        tmp.replace(cache)
    return data
