"""
``drive-vlm train vision``: pretrain the SigLIP tower on dense labels before any language.

Real VLMs read images because their encoder learned to see before a language model was
attached. No CLIP or SigLIP weights can be had here, so the tower learns from the renderer's
own labels (training/vision_targets.py): per-patch semantic class, class presence, distance
band, and the centres of the objects the count questions count; optionally also an ImageNet
teacher's features of each patch (``distill_imagenet``, imagenet_teacher.py). Linear heads read the
hidden state the VLM reads (the tower's last layer, before its post-layernorm, as
LLaVA-OneVision's ``vision_feature_layer -1``); the heads are thrown away, the tower is kept.

Views: the train split's scenes of ``--data`` (its ``train.meta.json``), rendered again at the
same key frames, plus ``extra_scenes`` further scenes of the train seed range; the val split's
scenes are the held-out views. The test split is never read. Views are rendered once into
shards under ``OUT/cache/`` (resumable), then trained on in shuffled batches.

OUT holds ``state.pt`` (resumable: tower, heads, AdamW, schedule, step, history), ``history.json``,
``report.json`` (held-out figures) and ``vision_tower/`` (the tower, SiglipVisionModel's own
format), which ``drive-vlm train vlm --vision-init OUT/vision_tower`` starts from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
import json
from pathlib import Path
import time

import numpy as np
import torch
from torch import nn, Tensor
import torch.nn.functional as F
from tqdm import tqdm

from .cpu_info import bf16_support, emulated_bf16_warning
from .model import vision_config
from .presets import get_preset
from .vision_targets import DISTANCE_BANDS_M, SEMANTIC_CLASSES, view_targets
from ..eval.linear_probe import linear_probe_accuracy
from ..scenes.world import OBJECT_LABELS

SHARD_FRAMES = 10  # key frames (60 views) per cache shard
CENTRE_POS_WEIGHT = 20.0  # a centre is one patch in ~200: weigh the hits up
FIELDS = ('image', 'semantic', 'present', 'band', 'centre', 'counts')


@dataclass(frozen=True)
class VisionConfig:
    """What ``drive-vlm train vision`` takes (its flags)."""

    data: Path
    out: Path
    preset: str = 'nano'
    extra_scenes: int = 0  # train-range scenes beyond the data set's, for more views
    steps: int = 1500
    batch: int = 48  # views per step
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.05
    eval_every: int = 250
    save_every: int = 250
    seed: int = 0
    threads: int = 0
    resume: bool = False
    max_minutes: float | None = None
    bf16: bool = False  # CPU autocast in bfloat16 (the CLI's --precision auto: where it is native)
    val_limit: int | None = None  # held-out key frames (None: the whole val split)
    train_limit: int | None = None  # train key frames (tests)
    # weight of the ImageNet hint (imagenet_teacher.py): the tower also predicts
    # EfficientNet-Lite0's stride-16 features (0: off; training only)
    distill_imagenet: float = 0.0


@dataclass
class VisionResult:
    step: int
    seconds: float
    history: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    tower_dir: Path | None = None


class VisionHeads(nn.Module):
    """
    Linear heads on every patch token: semantic class, presence, distance band, centres.

    With ``hint_channels`` a fifth head predicts the ImageNet teacher's features of the patch
    (``hint_loss``).
    """

    def __init__(self, hidden: int, hint_channels: int = 0) -> None:
        super().__init__()
        self.semantic = nn.Linear(hidden, len(SEMANTIC_CLASSES))
        self.present = nn.Linear(hidden, len(SEMANTIC_CLASSES) - 1)
        self.band = nn.Linear(hidden, len(DISTANCE_BANDS_M) + 1)
        self.centre = nn.Linear(hidden, len(OBJECT_LABELS))
        self.names = ('semantic', 'present', 'band', 'centre')
        if hint_channels:
            self.hint = nn.Linear(hidden, hint_channels)
            self.names += ('hint',)

    def forward(self, tokens: Tensor) -> dict[str, Tensor]:
        return {name: getattr(self, name)(tokens) for name in self.names}


def dense_loss(out: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """Return each label head's loss (cross-entropy, or BCE for multi-label heads) and the sum."""
    flat = {k: v.flatten(0, 1) for k, v in out.items() if k != 'hint'}  # [B * tokens, C]
    pos = torch.full((len(OBJECT_LABELS),), CENTRE_POS_WEIGHT)
    losses = {
        'semantic': F.cross_entropy(flat['semantic'], batch['semantic'].flatten().long()),
        'present': F.binary_cross_entropy_with_logits(
            flat['present'], batch['present'].flatten(2).transpose(1, 2).flatten(0, 1).float()),
        'band': F.cross_entropy(flat['band'], batch['band'].flatten().long()),
        'centre': F.binary_cross_entropy_with_logits(
            flat['centre'], batch['centre'].flatten(2).transpose(1, 2).flatten(0, 1).float(),
            pos_weight=pos.to(flat['centre'].device)),
    }
    losses['total'] = sum(losses.values())
    return losses


def hint_loss(predicted: Tensor, teacher_features: Tensor) -> Tensor:
    """
    Return the ImageNet hint loss (FitNets, Romero et al. 2015).

    The mean squared error of each patch's prediction against the teacher's features of that
    patch, normalised to zero mean and unit variance over its channels, so that the teacher's
    scale does not set the loss weight.
    """
    target = F.layer_norm(teacher_features.float(), teacher_features.shape[-1:])
    return F.mse_loss(predicted.float(), target)


def build_tower(preset_name: str):
    """Return a fresh SiglipVisionModel of the preset's shape (the VLM's own tower class)."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = dict(vision_config(get_preset(preset_name).model))
    config.pop('model_type')
    return SiglipVisionModel(SiglipVisionConfig(**config))


def tower_tokens(tower, images: Tensor) -> Tensor:
    """Return the [B, tokens, hidden] state the VLM reads, from uint8 [B, 3, S, S] views."""
    pixels = (images.float() / 255.0 - 0.5) / 0.5  # the presets' image mean and std
    return tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]


# --- views -----------------------------------------------------------------------------------

def split_scenes(data: Path, split: str, extra: int = 0) -> tuple[list[int], dict]:
    """Return a split's scene seeds (plus ``extra`` more of its range) and its options."""
    path = Path(data) / f'{split}.meta.json'
    if not path.is_file():
        raise FileNotFoundError(f'{path} is missing: train vision re-renders the scenes of a '
                                f'`drive-vlm data synth DIR --split {split}` data set')
    meta = json.loads(path.read_text())
    first, last = meta['scene_seeds']
    return list(range(first, last + 1 + extra)), meta


def render_shards(seeds: list[int], meta: dict, cache: Path, size: int, grid: int,
                  limit: int | None, say: Callable[[str], None]) -> list[Path]:
    """Render every key frame of ``seeds`` into ``SHARD_FRAMES``-frame npz shards (resumable)."""
    from ..data.synth import capture_times, key_frame_times, scene_config
    from ..scenes.frames import render_frame_set
    from ..scenes.rig import nuscenes_rig
    from ..scenes.world import make_scene

    opts = meta['options']
    frames = [(s, k, t) for s in seeds for k, t in enumerate(
        key_frame_times(opts['frames_per_scene']))][:limit]
    rig = nuscenes_rig(opts['width'], opts['height'])
    cache.mkdir(parents=True, exist_ok=True)
    shards = []
    todo = range(0, len(frames), SHARD_FRAMES)
    for start in tqdm(todo, desc=f'render {cache.name}', unit='shard'):
        path = cache / f'shard-{start // SHARD_FRAMES:05d}-{size}-{grid}.npz'
        shards.append(path)
        if path.is_file():
            continue
        views = []
        for seed, k, t in frames[start:start + SHARD_FRAMES]:
            scene = make_scene(scene_config(seed, opts['frames_per_scene']))
            fs = render_frame_set(scene, rig, k, capture_times(t))
            views += [view_targets(v, cam, size, grid, meta['min_visible_px'])
                      for v, cam in zip(fs.views, rig)]
        arrays = {name: np.stack([getattr(v, name) for v in views]) for name in FIELDS}
        tmp = path.with_name(path.stem + '.tmp.npz')
        np.savez(tmp, **arrays)
        tmp.replace(path)
    say(f'{cache.name}: {len(frames)} key frames, {6 * len(frames)} views in {len(shards)} '
        f'shards under {cache}')
    return shards


def load_views(shards: list[Path]) -> dict[str, Tensor]:
    parts = [np.load(p) for p in shards]
    return {name: torch.from_numpy(np.concatenate([p[name] for p in parts])) for name in FIELDS}


# --- training --------------------------------------------------------------------------------

def train_vision(config: VisionConfig, log: Callable[[str], None] = print) -> VisionResult:
    """Run (or resume) the vision stage; return where it stopped (see module doc)."""
    from transformers import get_cosine_schedule_with_warmup

    out = Path(config.out)
    state_path = out / 'state.pt'
    if config.resume and not state_path.is_file():
        raise ValueError(f'--resume: {state_path} does not exist; run without --resume to start')
    if not config.resume and state_path.is_file():
        raise ValueError(f'{out} already holds a run ({state_path}): pass --resume to continue '
                         'it, or a new --out')
    if config.threads:
        torch.set_num_threads(config.threads)
    shape = get_preset(config.preset).model
    grid = shape.image_size // shape.patch_size
    teacher = _imagenet_teacher(config, shape.patch_size)  # before rendering: fail fast
    train_seeds, train_meta = split_scenes(config.data, 'train', config.extra_scenes)
    val_seeds, val_meta = split_scenes(config.data, 'val')
    train = load_views(render_shards(train_seeds, train_meta, out / 'cache' / 'train',
                                     shape.image_size, grid, config.train_limit, log))
    val = load_views(render_shards(val_seeds, val_meta, out / 'cache' / 'val', shape.image_size,
                                   grid, config.val_limit, log))
    torch.manual_seed(config.seed)
    tower = build_tower(config.preset)
    heads = VisionHeads(shape.vision_hidden, teacher.channels if teacher else 0)
    params = list(tower.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay,
                                  betas=(0.9, 0.98))
    scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup, config.steps)
    step, history = 0, {'train': [], 'val': []}
    if config.resume:
        state = torch.load(state_path, weights_only=False)
        if ('hint.weight' in state['heads']) != (teacher is not None):
            raise ValueError(f'--resume: {state_path} was trained '
                             f'{"with" if teacher is None else "without"} --distill-imagenet; '
                             'resume it with the same setting, or start a new --out')
        tower.load_state_dict(state['tower'])
        heads.load_state_dict(state['heads'])
        optimizer.load_state_dict(state['optimizer'])
        scheduler.load_state_dict(state['scheduler'])
        step, history = state['step'], state['history']
        log(f'resumed {state_path} at step {step}')
    out.mkdir(parents=True, exist_ok=True)
    (out / 'config.json').write_text(json.dumps(asdict(config), default=str, indent=1) + '\n')
    log(f'vision stage: {len(train["image"])} train views, {len(val["image"])} held-out views, '
        f'tower {sum(p.numel() for p in tower.parameters()) / 1e6:.2f}M params, batch '
        f'{config.batch}, {config.steps} steps, {"bf16 autocast" if config.bf16 else "fp32"}, '
        f'ImageNet hint weight {config.distill_imagenet} '
        f'(CPU bf16 support: {bf16_support()}, {torch.get_num_threads()} threads)')
    if warning := emulated_bf16_warning('bf16' if config.bf16 else 'no'):
        log(f'warning: {warning}')
    start, spent, first_step = time.monotonic(), 0.0, step
    bar = tqdm(total=config.steps, initial=step, desc='train vision', unit='step')
    while step < config.steps:
        index = _batch_index(step, len(train['image']), config.batch, config.seed)
        batch = {k: v[index] for k, v in train.items()}
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=config.bf16):
            out_heads = heads(tower_tokens(tower, batch['image']))
            losses = dense_loss(out_heads, batch)
            if teacher is not None:
                with torch.no_grad():
                    hint = teacher(batch['image'])
                losses['hint'] = hint_loss(out_heads['hint'], hint)
                losses['total'] = losses['total'] + config.distill_imagenet * losses['hint']
        optimizer.zero_grad(set_to_none=True)
        losses['total'].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        step += 1
        bar.update(1)
        if step % 10 == 0 or step in (1, config.steps):
            history['train'].append({'step': step, **{k: v.item() for k, v in losses.items()}})
            bar.set_postfix(loss=f'{float(losses["total"]):.3f}')
        if step % config.eval_every == 0 or step == config.steps:
            history['val'].append({'step': step, **held_out_metrics(tower, heads, val)})
        spent = time.monotonic() - start
        timed_out = config.max_minutes is not None and spent > 60 * config.max_minutes
        if step % config.save_every == 0 or step == config.steps or timed_out:
            _save(state_path, tower, heads, optimizer, scheduler, step, history)
        if timed_out:
            log(f'stopped after {spent / 60:.1f} min at step {step} (--max-minutes); --resume '
                'continues')
            break
    bar.close()
    result = VisionResult(step, spent, history)
    if step >= config.steps:
        result.report = report(tower, heads, train, val)
        result.report['seconds_per_step'] = spent / max(1, step - first_step)
        result.report['bf16'] = config.bf16
        result.report['cpu_bf16_support'] = bf16_support()
        result.report['threads'] = torch.get_num_threads()
        (out / 'report.json').write_text(json.dumps(result.report, indent=1) + '\n')
        result.tower_dir = out / 'vision_tower'
        tower.save_pretrained(result.tower_dir, safe_serialization=True)
        log(f'wrote {result.tower_dir} and {out / "report.json"}')
    (out / 'history.json').write_text(json.dumps(history, indent=1) + '\n')
    return result


def _imagenet_teacher(config: VisionConfig, patch_size: int):
    """Return the frozen ImageNet teacher when the hint is on (imagenet_teacher.py), else None."""
    if not config.distill_imagenet:
        return None
    if patch_size != 16:
        raise ValueError(f"--distill-imagenet: the teacher's features have stride 16, the "
                         f'{config.preset} tower patch size {patch_size}; use a preset with '
                         '16-px patches, or leave the hint off')
    from .imagenet_teacher import load_teacher
    return load_teacher()


def _batch_index(step: int, views: int, batch: int, seed: int) -> Tensor:
    """Return the views of ``step``: consecutive slices of a seeded permutation per epoch."""
    per_epoch = max(1, views // batch)
    epoch, slot = divmod(step, per_epoch)
    order = torch.randperm(views, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
    return order[slot * batch:(slot + 1) * batch]


def _save(path: Path, tower, heads, optimizer, scheduler, step: int, history: dict) -> None:
    tmp = path.with_name(path.name + '.tmp')
    torch.save({'tower': tower.state_dict(), 'heads': heads.state_dict(),
                'optimizer': optimizer.state_dict(), 'scheduler': scheduler.state_dict(),
                'step': step, 'history': history}, tmp)
    tmp.replace(path)


# --- held-out figures ------------------------------------------------------------------------

@torch.no_grad()
def _features(tower, heads, views: dict[str, Tensor], chunk: int = 64) -> tuple[dict, Tensor]:
    preds, pooled = {k: [] for k in ('semantic', 'band', 'centre')}, []
    for i in range(0, len(views['image']), chunk):
        tokens = tower_tokens(tower, views['image'][i:i + chunk]).float()
        out = heads(tokens)
        preds['semantic'].append(out['semantic'].argmax(-1))
        preds['band'].append(out['band'].argmax(-1))
        preds['centre'].append(out['centre'] > 0)
        pooled.append(torch.cat([tokens.mean(1), tokens.amax(1)], dim=-1))
    return {k: torch.cat(v) for k, v in preds.items()}, torch.cat(pooled)


def held_out_metrics(tower, heads, val: dict[str, Tensor]) -> dict[str, float]:
    """Return per-patch semantic accuracy and mIoU, band accuracy, and centre-count accuracy."""
    was = tower.training
    tower.eval()
    preds, _ = _features(tower, heads, val)
    tower.train(was)
    truth = val['semantic'].flatten(1).long()
    pred = preds['semantic']
    ious = []
    for c in range(len(SEMANTIC_CLASSES)):
        inter = ((pred == c) & (truth == c)).sum().item()
        union = ((pred == c) | (truth == c)).sum().item()
        if union:
            ious.append(inter / union)
    counts = preds['centre'].sum(1)  # [views, classes]: one hit per object
    band = val['band'].flatten(1).long()
    return {'patch_accuracy': (pred == truth).float().mean().item(),
            'miou': float(np.mean(ious)),
            'band_accuracy': (preds['band'] == band).float().mean().item(),
            'count_accuracy_from_centres': (counts == val['counts'].long()).float().mean().item()}


def report(tower, heads, train: dict[str, Tensor], val: dict[str, Tensor]) -> dict:
    """
    Return the held-out figures, plus presence and count accuracy of linear probes.

    The probes are fit on the train views' pooled tokens (mean and max over the view) and
    scored on the held-out views, beside the majority answer of the train views.
    """
    tower.eval()
    out = held_out_metrics(tower, heads, val)
    _, train_x = _features(tower, heads, train)
    _, val_x = _features(tower, heads, val)
    for name, target in (('presence', lambda v: (v['counts'] > 0).long()),
                         ('count', lambda v: v['counts'].clamp(max=5).long())):
        y_train, y_val = target(train), target(val)
        accs, majority = [], []
        for c, label in enumerate(OBJECT_LABELS):
            acc = linear_probe_accuracy(train_x, y_train[:, c], val_x, y_val[:, c])
            common = torch.bincount(y_train[:, c]).argmax()
            accs.append(acc)
            majority.append((y_val[:, c] == common).float().mean().item())
            out[f'{name}_accuracy.{label}'] = acc
            out[f'{name}_majority.{label}'] = majority[-1]
        out[f'{name}_accuracy'] = float(np.mean(accs))
        out[f'{name}_majority'] = float(np.mean(majority))
    return out
