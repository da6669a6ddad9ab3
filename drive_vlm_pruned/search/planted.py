"""
A planted data set whose answers depend on one camera only.

It checks that a view-rate search finds the camera that matters.

Scenes are rendered as ``drive-vlm data synth`` renders them (same scene mix, rig, capture
times and image format), from seeds of the validation range far past what ``data synth``
writes by default (``PLANTED_SEED_BASE``), so they never meet a training, validation or test
scene. Every QA asks about ONE camera, in the data set's own grammar and by its own rules
(data/qa_rules.py): "Is there a <class> in the <view>?" (exists) and "How many <class plural>
are in the <view>?" (count), for the classes with no marginal object there (a clear pair). Per
frame the answers are balanced: every Yes pair and as many No pairs (exists), every nonzero
count and one zero (count), so no constant answer scores well. What the other five cameras show
cannot change an answer; pruning the planted camera can.

The other five cameras show either the same scene (``others='scene'``: a model must ground the
view a question names) or the same road and ego motion with no agents on it (``others='empty'``:
all the evidence lies in the planted camera, so any model that reads its images depends on that
camera). The second is the planted signal of a search check; the first also asks the model to
know which image is the back left one.
"""

from __future__ import annotations

from dataclasses import dataclass
import json
from pathlib import Path

import numpy as np

from ..cameras import NUSCENES_CAMERAS
from ..data.frame_qa import count_question, exists_question, FAMILIES, MAX_COUNT
from ..data.qa_rules import count_answer, exists_answer, frame_facts, pair_is_clear
from ..data.synth import (
    capture_times,
    JPEG_QUALITY,
    key_frame_times,
    scene_config,
    SPLIT_BASE,
    timestamp_us,
    token,
)
from ..scenes import make_scene, nuscenes_rig, OBJECT_LABELS, render_frame_set
from ..scenes.world import Scene

PLANTED_SEED_BASE = SPLIT_BASE['val'] + 900_000
DEFAULT_CAMERA = 'CAM_BACK_LEFT'
OTHER_VIEWS = ('scene', 'empty')


@dataclass(frozen=True)
class PlantedOptions:
    """
    What to write: the camera, how many scenes and frames, the image size, the split name.

    ``others``: what the other five cameras show, ``'scene'`` or ``'empty'`` (module doc).
    """

    camera: str = DEFAULT_CAMERA
    scenes: int = 3
    frames_per_scene: int = 2
    seed: int = 0
    width: int = 448
    height: int = 252
    split: str = 'val'
    others: str = 'scene'

    def __post_init__(self) -> None:
        if self.others not in OTHER_VIEWS:
            raise ValueError(f'others {self.others!r}: use one of {", ".join(OTHER_VIEWS)}')
        if self.camera not in NUSCENES_CAMERAS:
            raise ValueError(f'camera {self.camera!r}: use one of {", ".join(NUSCENES_CAMERAS)}')
        if self.scenes < 1 or self.frames_per_scene < 1:
            raise ValueError('write at least one scene of one frame')


def _item(family: str, question: str, answer: str, camera: str) -> dict:
    _, tag = FAMILIES[family]
    return {'Q': question, 'A': answer, 'C': None, 'con_up': None, 'con_down': None,
            'cluster': None, 'layer': None, 'tag': [tag], 'type': family, 'camera': camera}


def planted_qa(facts, camera: str, rng: np.random.Generator) -> list[dict]:
    """Balanced exists and count QA about ``camera`` of one frame (module doc)."""
    clear = [lab for lab in OBJECT_LABELS if pair_is_clear(facts, camera, lab)]
    yes = [lab for lab in clear if facts.counted(camera, lab)]
    no = [lab for lab in clear if not facts.counted(camera, lab)]
    no = [no[i] for i in rng.permutation(len(no))[:len(yes)]]
    items = [_item('exists', exists_question(camera, lab), exists_answer(facts, camera, lab),
                   camera) for lab in sorted(yes + no, key=OBJECT_LABELS.index)]
    counts = [lab for lab in yes if len(facts.counted(camera, lab)) <= MAX_COUNT]
    if no:
        counts.append(no[0])
    items += [_item('count', count_question(camera, lab), count_answer(facts, camera, lab),
                    camera) for lab in sorted(counts, key=OBJECT_LABELS.index)]
    return items


def _view_images(frames, camera: str, others: Scene | None, rig, index: int, times) -> dict:
    """Each camera's image: the planted camera's from ``frames``, the rest from ``others``."""
    shown = frames if others is None else render_frame_set(others, rig, index, times)
    return {view.camera: (frames if view.camera == camera else shown).view(view.camera).image
            for view in frames.views}


def write_planted(out: str | Path, options: PlantedOptions = PlantedOptions()) -> Path:
    """Render the planted scenes into ``out`` and write ``out/<split>.json``; return its path."""
    from PIL import Image

    out = Path(out)
    rig = nuscenes_rig(options.width, options.height)
    data = {}
    for i in range(options.scenes):
        seed = PLANTED_SEED_BASE + options.seed + i
        scene = make_scene(scene_config(seed, options.frames_per_scene))
        others = None if options.others == 'scene' else Scene(scene.config, scene.road, ())
        scene_token = token('drive-vlm-planted', 'scene', seed)
        key_frames = {}
        for k, t in enumerate(key_frame_times(options.frames_per_scene)):
            times = capture_times(t)
            frames = render_frame_set(scene, rig, k, times)
            facts = frame_facts(scene, frames)
            qa = planted_qa(facts, options.camera, np.random.default_rng([seed, 5, k]))
            if not qa:
                continue
            images = _view_images(frames, options.camera, others, rig, k, times)
            paths = {}
            for camera, image in images.items():
                rel = (f'samples/{camera}/{scene_token}__{camera}__'
                       f'{timestamp_us(times[camera])}.jpg')
                (out / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(out / rel, format='JPEG', quality=JPEG_QUALITY)
                paths[camera] = rel
            key_frames[token('drive-vlm-planted', 'frame', seed, k)] = {
                'key_object_infos': {},
                'QA': {'perception': qa, 'prediction': [], 'planning': [], 'behavior': []},
                'image_paths': {c: paths[c] for c in NUSCENES_CAMERAS},
            }
        if key_frames:
            data[scene_token] = {'scene_description': f'planted: QA about {options.camera}',
                                 'key_frames': key_frames}
    if not data:
        raise ValueError(f'no frame had a clear question about {options.camera}: render more '
                         'scenes')
    path = out / f'{options.split}.json'
    path.write_text(json.dumps(data) + '\n')
    return path
