"""
``drive-vlm data synth``: render scenes and write them as a DriveLM-nuScenes data set.

Layout (docs/qa_rules.md): ``OUT/samples/<CAM>/<scene>__<CAM>__<timestamp_us>.jpg`` (JPEG quality
95, PIL), ``OUT/masks/<CAM>/<same stem>.png`` (uint8 label masks, values ``scenes.Label``),
``OUT/<split>.json`` (scene token -> key frames with ``key_object_infos``, ``QA``,
``image_paths`` and ``gt``) and ``OUT/<split>.meta.json`` (options, seeds, QA counts).

Seeds: scene ``i`` of a run has the scene seed ``SPLIT_BASE[split] + seed + i`` (train from 0,
val from 1,000,000, test from 2,000,000), so the splits never share a scene. Everything about
a scene (road, speed, agents, tokens, the questions drawn) follows from its scene seed and the
options, so a seed gives byte-identical files. Key frames lie KEY_FRAME_DT_S apart from
FIRST_KEY_FRAME_S on, so every one has 1.5 s of ego history and 3 s of GT future.

A run keeps each finished scene under ``OUT/.partial/<split>/`` until the JSON is written: a
rerun with the same options skips those scenes (resume), and the result is the same bytes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
import hashlib
import json
import math
from pathlib import Path
import shutil
import time

import numpy as np

from .frame_qa import CATEGORIES, FAMILIES, frame_qa, view_counts
from .qa_rules import frame_facts, marginal_px, min_visible_px
from ..cameras import NUSCENES_CAMERAS
from ..scenes import (
    make_scene,
    NUSCENES_CAPTURE_OFFSETS_S,
    nuscenes_rig,
    REFERENCE_CAMERA,
    render_frame_set,
    Scene,
    SceneConfig,
)
from ..scenes.frames import FUTURE_DT_S, FUTURE_STEPS

SPLITS = ('train', 'val', 'test')
SPLIT_BASE = {'train': 0, 'val': 1_000_000, 'test': 2_000_000}
SPLIT_SPAN = 1_000_000
FIRST_KEY_FRAME_S = 1.5          # the first key frame has 1.5 s of history behind it
KEY_FRAME_DT_S = 0.5             # nuScenes' key frames come at 2 Hz
BASE_TIMESTAMP_US = 1_700_000_000_000_000
JPEG_QUALITY = 95
FORMAT_VERSION = 3               # bump when a rule changes what a seed writes (3: gt.view_counts)

# Scene mix: (share, low, high) ego speed in m/s per class, drawn away from the class edges of
# qa_rules.SPEED_BANDS so the behavior answer is stable; then the heading change the road
# gives over 2.75 s (degrees), away from the steering edges.
SPEED_MIX = ((0.08, 0.0, 0.0), (0.22, 1.5, 3.0), (0.26, 5.0, 7.0), (0.24, 9.0, 11.0),
             (0.20, 13.0, 16.0))
TURN_MIX = ((0.34, 0.0, 0.0), (0.33, 6.0, 12.0), (0.33, 20.0, 50.0))
ACCEL_SHARE, MAX_ACCEL = 0.25, 0.4   # a quarter of the moving scenes speed up or slow down
MAX_SCENE_CURVATURE = 0.045


@dataclass(frozen=True)
class DataOptions:
    """What to write; every field has a CLI option of the same name."""

    scenes: int = 50
    frames_per_scene: int = 20
    seed: int = 0
    split: str = 'train'
    width: int = 448
    height: int = 252

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f'--split {self.split!r}: use one of {", ".join(SPLITS)}')
        if self.scenes < 1:
            raise ValueError(f'--scenes {self.scenes}: write at least 1 scene')
        if not 1 <= self.frames_per_scene <= 200:
            raise ValueError(f'--frames-per-scene {self.frames_per_scene}: use 1 to 200 '
                             f'(key frames {KEY_FRAME_DT_S} s apart)')
        if self.seed < 0 or self.seed + self.scenes > SPLIT_SPAN:
            raise ValueError(f'--seed {self.seed} with --scenes {self.scenes}: seed + scenes '
                             f'must lie in 0..{SPLIT_SPAN:,} so the splits stay disjoint')
        if not (64 <= self.width <= 4096 and 36 <= self.height <= 4096):
            raise ValueError(f'image size {self.width} x {self.height}: use a width of 64 to '
                             '4096 px and a height of 36 to 4096 px')


@dataclass(frozen=True)
class DataResult:
    """What a run wrote and how long it took."""

    json_path: Path
    meta_path: Path
    scenes: int
    key_frames: int
    qa: int
    resumed_scenes: int
    seconds: float
    majority: dict[str, tuple[int, str, float]] = field(default_factory=dict)

    @property
    def frames_per_s(self) -> float:
        return self.key_frames / self.seconds if self.seconds > 0 else math.inf


def scene_seeds(options: DataOptions) -> list[int]:
    """Return the scene seeds of a run: SPLIT_BASE[split] + seed + i."""
    base = SPLIT_BASE[options.split] + options.seed
    return [base + i for i in range(options.scenes)]


def key_frame_times(frames_per_scene: int) -> list[float]:
    return [FIRST_KEY_FRAME_S + k * KEY_FRAME_DT_S for k in range(frames_per_scene)]


def _draw(rng: np.random.Generator, mix) -> float:
    shares = np.array([m[0] for m in mix])
    _, low, high = mix[int(rng.choice(len(mix), p=shares / shares.sum()))]
    return float(rng.uniform(low, high)) if high > low else float(low)


def scene_config(scene_seed: int, frames_per_scene: int) -> SceneConfig:
    """
    Draw a scene's road, traffic and ego motion from its seed (the SPEED/TURN mixes above).

    The curvature is the one that turns the ego by the drawn heading change over 2.75 s at its
    speed (capped at MAX_SCENE_CURVATURE); a stopped ego gets a random gentle road.
    """
    rng = np.random.default_rng([scene_seed, 7])
    speed = _draw(rng, SPEED_MIX)
    turn_deg = _draw(rng, TURN_MIX) * (1.0 if rng.random() < 0.5 else -1.0)
    accel = 0.0
    if speed > 0 and rng.random() < ACCEL_SHARE:
        accel = float(rng.uniform(-MAX_ACCEL, MAX_ACCEL))
    if speed > 0:
        curvature = math.radians(turn_deg) / (speed * (FUTURE_STEPS - 0.5) * FUTURE_DT_S)
    else:
        curvature = float(rng.uniform(-0.02, 0.02))
    curvature = float(np.clip(curvature, -MAX_SCENE_CURVATURE, MAX_SCENE_CURVATURE))
    lanes_forward = int(rng.integers(1, 4))
    lanes_oncoming = int(rng.integers(0, 3))
    duration = (FIRST_KEY_FRAME_S + (frames_per_scene - 1) * KEY_FRAME_DT_S
                + FUTURE_STEPS * FUTURE_DT_S + 0.5)
    return SceneConfig(
        seed=scene_seed, curvature=curvature, ego_speed=speed, ego_accel=accel,
        lanes_forward=lanes_forward, lanes_oncoming=lanes_oncoming,
        ego_lane=int(rng.integers(lanes_forward)),
        vehicles_per_100m=float(rng.uniform(2.0, 7.0)),
        pedestrians_per_100m=float(rng.uniform(3.0, 14.0)),
        signs_per_100m=float(rng.uniform(1.0, 4.0)),
        barriers_per_100m=float(rng.uniform(0.5, 3.0)),
        duration_s=duration)


def token(*parts) -> str:
    """Hash ``parts`` into 32 hex digits, like a nuScenes token; the same on every machine."""
    return hashlib.md5('/'.join(str(p) for p in parts).encode()).hexdigest()


def scene_description(scene: Scene) -> str:
    c = scene.config
    if c.curvature == 0.0:
        road = 'A straight road'
    else:
        side = 'left' if c.curvature > 0 else 'right'
        road = f'A road curving to the {side} (radius {1.0 / abs(c.curvature):.0f} m)'
    lanes = f'{c.lanes_forward} lane{"s" if c.lanes_forward > 1 else ""}'
    oncoming = (f'{c.lanes_oncoming} oncoming lane{"s" if c.lanes_oncoming > 1 else ""}'
                if c.lanes_oncoming else 'no oncoming lane')
    return (f'{road} with {lanes} in the ego direction and {oncoming}; the ego vehicle drives '
            f'in lane {c.ego_lane + 1} from the centre at {c.ego_speed:.1f} m/s.')


def capture_times(time_s: float) -> dict[str, float]:
    """Each camera's exposure time around a key frame at ``time_s`` (CAM_FRONT exactly then)."""
    ref = NUSCENES_CAPTURE_OFFSETS_S[REFERENCE_CAMERA]
    return {cam: time_s + off - ref for cam, off in NUSCENES_CAPTURE_OFFSETS_S.items()}


def timestamp_us(time_s: float) -> int:
    return BASE_TIMESTAMP_US + int(round(time_s * 1e6))


def _r(value: float, digits: int = 3) -> float:
    return round(float(value), digits) + 0.0


def _future_agents(frames) -> list[list[dict]]:
    steps = []
    for k in range(FUTURE_STEPS):
        steps.append([{'center': [_r(o.boxes[k][0], 2), _r(o.boxes[k][1], 2)],
                       'size': [_r(o.size[0], 2), _r(o.size[1], 2)], 'yaw': _r(o.boxes[k][2])}
                      for o in frames.future_objects])
    return steps


def _save_jpeg(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(rgb).save(path, format='JPEG', quality=JPEG_QUALITY)


def _save_png(path: Path, mask: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(mask).save(path, format='PNG')


def render_scene(scene_seed: int, options: DataOptions, out: Path) -> tuple[str, dict]:
    """Render one scene's key frames, write their images and masks; return (token, JSON entry)."""
    scene = make_scene(scene_config(scene_seed, options.frames_per_scene))
    rig = nuscenes_rig(options.width, options.height)
    scene_token = token('drive-vlm-synth', 'scene', scene_seed)
    key_frames = {}
    for k, t in enumerate(key_frame_times(options.frames_per_scene)):
        times = capture_times(t)
        frames = render_frame_set(scene, rig, k, times)
        images, masks = {}, {}
        for view in frames.views:
            stem = f'{scene_token}__{view.camera}__{timestamp_us(times[view.camera])}'
            images[view.camera] = f'samples/{view.camera}/{stem}.jpg'
            masks[view.camera] = f'masks/{view.camera}/{stem}.png'
            _save_jpeg(out / images[view.camera], view.image)
            _save_png(out / masks[view.camera], view.mask)
        facts = frame_facts(scene, frames)
        qa = frame_qa(facts, np.random.default_rng([scene_seed, 3, k]))
        key_frames[token('drive-vlm-synth', 'frame', scene_seed, k)] = {
            'key_object_infos': qa.key_object_infos,
            'QA': qa.qa,
            'image_paths': {cam: images[cam] for cam in NUSCENES_CAMERAS},
            'gt': {
                'timestamp_us': timestamp_us(t),
                'ego_history': [[_r(x), _r(y)] for x, y in facts.history],
                'future_trajectory': [[_r(x), _r(y)] for x, y in facts.future],
                'future_agents': _future_agents(frames),
                'masks': {cam: masks[cam] for cam in NUSCENES_CAMERAS},
                'image_size': [options.width, options.height],
                'view_counts': view_counts(facts),
            },
        }
    return scene_token, {'scene_description': scene_description(scene), 'key_frames': key_frames}


def _partial_key(options: DataOptions) -> dict:
    return {'version': FORMAT_VERSION, 'frames_per_scene': options.frames_per_scene,
            'width': options.width, 'height': options.height}


def _load_partial(path: Path, options: DataOptions, out: Path) -> tuple[str, dict] | None:
    """Return a finished scene kept by an earlier run with the same options, if complete."""
    try:
        kept = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if kept.get('key') != _partial_key(options):
        return None
    entry = kept['entry']
    for frame in entry['key_frames'].values():
        files = list(frame['image_paths'].values()) + list(frame['gt']['masks'].values())
        if not all((out / f).is_file() for f in files):
            return None
    return kept['token'], entry


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(text)
    tmp.replace(path)


def answers_by_family(data: dict) -> dict[str, list[str]]:
    """Return every answer of a data set, grouped by family (``type``), in FAMILIES order."""
    answers: dict[str, list[str]] = {family: [] for family in FAMILIES}
    for scene in data.values():
        for frame in scene['key_frames'].values():
            for category in CATEGORIES:
                for item in frame['QA'][category]:
                    answers[item['type']].append(item['A'])
    return answers


def majority_shares(data: dict) -> dict[str, tuple[int, str, float]]:
    """
    Per family: (questions, most common answer, its share).

    The share is what always giving that answer would score in exact match: the majority-answer
    baseline on this data (meaningless for the free-form families, where answers rarely repeat).
    """
    out = {}
    for family, answers in answers_by_family(data).items():
        if answers:
            answer, n = Counter(answers).most_common(1)[0]
            out[family] = (len(answers), answer, n / len(answers))
    return out


def write_dataset(out: str | Path, options: DataOptions = DataOptions(), progress: bool = False,
                  overwrite: bool = False) -> DataResult:
    """Render ``options.scenes`` scenes into ``out`` and write ``<split>.json`` (module doc)."""
    from tqdm import tqdm

    out = Path(out)
    json_path = out / f'{options.split}.json'
    meta_path = out / f'{options.split}.meta.json'
    if json_path.exists() and not overwrite:
        raise FileExistsError(f'{json_path} exists: pass --overwrite to write it again, or '
                              'choose another OUT or --split')
    for camera in NUSCENES_CAMERAS:
        (out / 'samples' / camera).mkdir(parents=True, exist_ok=True)
        (out / 'masks' / camera).mkdir(parents=True, exist_ok=True)
    partial = out / '.partial' / options.split
    partial.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data, resumed = {}, 0
    seeds = scene_seeds(options)
    with tqdm(total=len(seeds) * options.frames_per_scene, desc=f'data synth {options.split}',
              unit='frame', disable=not progress) as bar:
        for seed in seeds:
            part = partial / f'{seed}.json'
            kept = _load_partial(part, options, out) if part.exists() else None
            if kept is None:
                scene_token, entry = render_scene(seed, options, out)
                _write_atomic(part, json.dumps({'key': _partial_key(options),
                                                'token': scene_token, 'entry': entry}))
            else:
                scene_token, entry = kept
                resumed += 1
            data[scene_token] = entry
            bar.update(options.frames_per_scene)
    counts = {family: len(a) for family, a in answers_by_family(data).items()}
    # One line: the indented form is twice the size (future agent boxes dominate).
    _write_atomic(json_path, json.dumps(data) + '\n')
    meta = {
        'generator': 'drive-vlm data synth', 'format_version': FORMAT_VERSION,
        'options': asdict(options), 'scene_seeds': [seeds[0], seeds[-1]],
        'split_base': SPLIT_BASE[options.split],
        'key_frames': len(seeds) * options.frames_per_scene,
        'qa_per_family': counts, 'rules': 'docs/qa_rules.md',
        'min_visible_px': min_visible_px(options.width, options.height),
        'marginal_px': marginal_px(options.width, options.height),
    }
    _write_atomic(meta_path, json.dumps(meta, indent=1) + '\n')
    shutil.rmtree(partial)
    if not any((out / '.partial').iterdir()):
        (out / '.partial').rmdir()
    return DataResult(json_path, meta_path, len(seeds), len(seeds) * options.frames_per_scene,
                      sum(counts.values()), resumed, time.perf_counter() - start,
                      majority_shares(data))
