"""
Read and write DriveLM-nuScenes files: real ones and the synthetic ones of ``data synth``.

The shape (DriveLM-nuScenes; our additions: docs/qa_rules.md): scene token -> ``key_frames``
-> frame token ->
``key_object_infos`` (c-tag -> info), ``QA`` (perception / prediction / planning / behavior lists
of ``{"Q", "A", "tag", ...}``), ``image_paths`` (camera -> path) and, in our synthetic files only,
``gt`` (ego history, future trajectory, future agent boxes, masks). A QA's id is
``<scene>_<frame>_<i>``, ``i`` indexing perception + prediction + planning + behavior of that
frame in that order (DriveLM's ``challenge/evaluation.py``). Predictions are a JSON list of
``{"id", "question", "answer"}``.

Image paths: relative ones are taken against the directory of the JSON file. With
``image_root`` (real DriveLM, whose paths read ``../nuscenes/samples/CAM_FRONT/x.jpg``), the
path from its first ``samples`` or ``sweeps`` component on is joined to ``image_root``, so
``image_root`` is the nuScenes folder that holds ``samples/``.

Every problem with a file (a missing image, an unknown camera, a malformed c-tag) raises
:class:`DriveLMError` naming the file and the item (scene, frame, QA id).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
import json
from pathlib import Path
import re

import numpy as np

from ..cameras import NUSCENES_CAMERAS
from ..pipeline.camera_set import CameraSet

CATEGORIES = ('perception', 'prediction', 'planning', 'behavior')
DEFAULT_SPLIT = 'test'
SPLITS = ('train', 'val', 'test')
# A c-tag names an object by the centre of its 2-D box: <cN,CAMERA,x,y> in pixels.
CTAG = re.compile(r'<c(\d+),\s*([A-Za-z_]+),\s*(-?\d+(?:\.\d+)?),\s*(-?\d+(?:\.\d+)?)>')
# Anything that starts like a c-tag; it must then match CTAG in full.
CTAG_CANDIDATE = re.compile(r'<c(?:\d|,)[^<>]*>?')
IMAGE_ROOT_ANCHORS = ('samples', 'sweeps')


class DriveLMError(ValueError):
    """A DriveLM file that cannot be used as it is; the message names the item and the file."""


@dataclass(frozen=True)
class CTag:
    """An object reference ``<cN,CAMERA,x,y>``: box centre in pixels of that camera."""

    index: int
    camera: str
    x: float
    y: float

    def __str__(self) -> str:
        return f'<c{self.index},{self.camera},{self.x},{self.y}>'


@dataclass(frozen=True)
class QA:
    """One question of a key frame, with its ground-truth answer ('' in q-only files)."""

    id: str  # noqa: A003 - DriveLM's key name
    question: str
    answer: str
    category: str  # perception | prediction | planning | behavior
    tags: tuple[int, ...]  # DriveLM metric: 0 accuracy, 1 GPT, 2 language, 3 match
    family: str | None = None  # our question family (``type``); None in real DriveLM files
    small: bool = False  # synthetic exists/count: every counted object is small (qa_rules)


@dataclass(frozen=True)
class AgentBox:
    """A ground-truth agent box at one future step, in the ego frame at the key frame."""

    center: tuple[float, float]
    size: tuple[float, float]  # length, width (metres)
    yaw: float


@dataclass(frozen=True)
class FrameGT:
    """The ground truth that synthetic files carry and DriveLM lacks (docs/qa_rules.md, ``gt``)."""

    timestamp_us: int
    ego_history: tuple[tuple[float, float], ...]  # t-1.5 .. t, 0.5 s apart (ego frame at t)
    future_trajectory: tuple[tuple[float, float], ...]  # t+0.5 .. t+3.0
    future_agents: tuple[tuple[AgentBox, ...], ...]  # per future step
    masks: dict[str, Path]
    image_size: tuple[int, int] | None  # width, height
    # camera -> class -> objects that count (None: unclear); format 3 on (frame_qa.view_counts)
    view_counts: dict[str, dict[str, int | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class KeyFrame:
    """One key frame: six camera images, the objects named by c-tags, its QA and ground truth."""

    scene: str
    frame: str
    image_paths: dict[str, Path]  # camera -> absolute path, nuScenes order
    key_objects: dict[str, dict]  # c-tag text -> info
    qa: tuple[QA, ...]
    gt: FrameGT | None = None
    source: Path | None = None  # the JSON file it came from

    def where(self) -> str:
        return f'{self.source}: scene {self.scene}, frame {self.frame}'


@dataclass(frozen=True)
class Prediction:
    """One answer in DriveLM's prediction format."""

    id: str  # noqa: A003 - DriveLM's key name
    question: str
    answer: str

    def as_json(self) -> dict:
        return {'id': self.id, 'question': self.question, 'answer': self.answer}


def qa_id(scene: str, frame: str, index: int) -> str:
    """Return DriveLM's QA id ``<scene>_<frame>_<index>``."""
    return f'{scene}_{frame}_{index}'


def data_file(path: str | Path, split: str | None = None) -> Path:
    """
    Return the JSON file that ``path`` names: itself, or ``<dir>/<split>.json`` for a directory.

    ``split`` (default 'test') applies to a directory only.
    """
    path = Path(path)
    if path.is_dir():
        name = f'{split or DEFAULT_SPLIT}.json'
        if not (path / name).is_file():
            found = sorted(p.name for p in path.glob('*.json'))
            raise DriveLMError(
                f'{path} has no {name}; it holds {found or "no JSON files"}: pass --split with '
                'one of those, or the JSON file itself as --data'
            )
        return path / name
    if not path.is_file():
        raise DriveLMError(f'{path} does not exist: pass a DriveLM JSON file or a data directory '
                           'written by `drive-vlm data synth`')
    return path


def load_drivelm(path: str | Path, image_root: str | Path | None = None,
                 split: str | None = None, check_images: bool = True) -> list[KeyFrame]:
    """
    Read a DriveLM-nuScenes JSON file (or ``<dir>/<split>.json``) into key frames, in file order.

    ``check_images`` (default) makes sure every camera image exists, so a long run cannot stop
    half way on a missing file.
    """
    source = data_file(path, split)
    try:
        data = json.loads(source.read_text())
    except json.JSONDecodeError as err:
        raise DriveLMError(f'{source} is not valid JSON: {err}') from None
    if not isinstance(data, dict):
        raise DriveLMError(f'{source}: expected an object keyed by scene token, got '
                           f'{type(data).__name__}')
    root = Path(image_root).expanduser().resolve() if image_root else None
    frames = []
    for scene, scene_data in data.items():
        key_frames = scene_data.get('key_frames') if isinstance(scene_data, dict) else None
        if not isinstance(key_frames, dict):
            raise DriveLMError(f'{source}: scene {scene} has no "key_frames" object')
        for frame, record in key_frames.items():
            frames.append(_key_frame(source, root, scene, frame, record, check_images))
    return frames


def _key_frame(source: Path, root: Path | None, scene: str, frame: str, record,
               check_images: bool) -> KeyFrame:
    where = f'{source}: scene {scene}, frame {frame}'
    if not isinstance(record, dict):
        raise DriveLMError(f'{where}: expected an object, got {type(record).__name__}')
    objects = record.get('key_object_infos') or {}
    for tag in objects:
        _check_ctags(tag, f'{where}, key_object_infos')
    images = _image_paths(source, root, record.get('image_paths'), where, check_images)
    qa = tuple(_qa_items(scene, frame, record.get('QA'), where))
    gt = _frame_gt(source.parent, record['gt'], where) if record.get('gt') else None
    return KeyFrame(scene, frame, images, dict(objects), qa, gt, source)


def _image_paths(source: Path, root: Path | None, paths, where: str,
                 check: bool) -> dict[str, Path]:
    if not isinstance(paths, dict):
        raise DriveLMError(f'{where}: no "image_paths" object (camera -> image file)')
    unknown = [c for c in paths if c not in NUSCENES_CAMERAS]
    if unknown:
        raise DriveLMError(f'{where}: unknown camera {unknown[0]!r} in image_paths; cameras are '
                           f'{", ".join(NUSCENES_CAMERAS)}')
    missing = [c for c in NUSCENES_CAMERAS if c not in paths]
    if missing:
        raise DriveLMError(f'{where}: image_paths has no {", ".join(missing)}; the model needs '
                           f'all six cameras ({", ".join(NUSCENES_CAMERAS)})')
    out = {}
    for camera in NUSCENES_CAMERAS:
        path = resolve_image(str(paths[camera]), source.parent, root)
        if check and not path.is_file():
            hint = ('check --image-root (the folder that holds samples/)' if root else
                    'pass --image-root DIR, the nuScenes folder that holds samples/')
            raise DriveLMError(f'{where}: {camera} image not found: {path} (from '
                               f'{paths[camera]!r}); {hint}')
        out[camera] = path
    return out


def resolve_image(text: str, base: Path, root: Path | None) -> Path:
    """Resolve one ``image_paths`` entry (module doc: relative to the JSON, or to image_root)."""
    path = Path(text).expanduser()
    if path.is_absolute():
        return path
    if root is None:
        return (base / path).resolve()
    parts = path.parts
    for i, part in enumerate(parts):
        if part in IMAGE_ROOT_ANCHORS:
            return root.joinpath(*parts[i:])
    return root.joinpath(*[p for p in parts if p not in ('..', '.')])


def _qa_items(scene: str, frame: str, qa, where: str) -> Iterable[QA]:
    if not isinstance(qa, dict):
        raise DriveLMError(f'{where}: no "QA" object (perception / prediction / planning / '
                           'behavior lists)')
    index = 0
    for category in CATEGORIES:
        items = qa.get(category) or []
        if not isinstance(items, list):
            raise DriveLMError(f'{where}: QA.{category} is a {type(items).__name__}, not a list')
        for item in items:
            ident = qa_id(scene, frame, index)
            here = f'{where}, QA {ident}'
            if not isinstance(item, dict) or not isinstance(item.get('Q'), str):
                raise DriveLMError(f'{here}: expected {{"Q": question, "A": answer, ...}}')
            answer = item.get('A') or ''
            if not isinstance(answer, str):
                raise DriveLMError(f'{here}: "A" is a {type(answer).__name__}, not a string')
            _check_ctags(item['Q'], f'{here} (question)')
            _check_ctags(answer, f'{here} (answer)')
            tags = item.get('tag') or []
            if not isinstance(tags, list) or not all(isinstance(t, int) for t in tags):
                raise DriveLMError(f'{here}: "tag" must be a list of metric numbers 0-3, '
                                   f'got {tags!r}')
            yield QA(ident, item['Q'], answer, category, tuple(tags), item.get('type'),
                     bool(item.get('small', False)))
            index += 1


def _check_ctags(text: str, where: str) -> None:
    for match in CTAG_CANDIDATE.finditer(text):
        candidate = match.group(0)
        full = CTAG.fullmatch(candidate)
        if full is None:
            raise DriveLMError(
                f'{where}: malformed c-tag {candidate!r}: expected <cN,CAMERA,x,y> (object N, '
                'its camera, the box centre x and y in pixels), e.g. <c1,CAM_FRONT,812.5,431.0>'
            )
        if full.group(2) not in NUSCENES_CAMERAS:
            raise DriveLMError(f'{where}: unknown camera {full.group(2)!r} in c-tag '
                               f'{candidate!r}; cameras are {", ".join(NUSCENES_CAMERAS)}')


def parse_ctags(text: str) -> list[CTag]:
    """Return the well-formed c-tags of ``text`` in order (malformed ones are skipped)."""
    return [CTag(int(m.group(1)), m.group(2), float(m.group(3)), float(m.group(4)))
            for m in CTAG.finditer(text)]


def _frame_gt(base: Path, gt, where: str) -> FrameGT:
    try:
        agents = tuple(
            tuple(AgentBox((float(a['center'][0]), float(a['center'][1])),
                           (float(a['size'][0]), float(a['size'][1])), float(a['yaw']))
                  for a in step)
            for step in gt.get('future_agents') or ())
        size = gt.get('image_size')
        return FrameGT(
            timestamp_us=int(gt.get('timestamp_us', 0)),
            ego_history=_points(gt.get('ego_history') or ()),
            future_trajectory=_points(gt.get('future_trajectory') or ()),
            future_agents=agents,
            masks={c: (base / p).resolve() for c, p in (gt.get('masks') or {}).items()},
            image_size=(int(size[0]), int(size[1])) if size else None,
            view_counts={str(c): {str(lab): None if n is None else int(n)
                                  for lab, n in by_label.items()}
                         for c, by_label in (gt.get('view_counts') or {}).items()},
        )
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
        raise DriveLMError(f'{where}: malformed "gt" ({type(err).__name__}: {err}); its fields '
                           'are in docs/qa_rules.md, "Ground truth per key frame"') from None


def _points(values) -> tuple[tuple[float, float], ...]:
    return tuple((float(p[0]), float(p[1])) for p in values)


def load_camera_set(frame: KeyFrame, blank: bool = False) -> CameraSet:
    """
    Read the six images of ``frame`` as a CameraSet (RGB uint8, nuScenes order).

    ``blank`` gives all-zero (black) images of each camera's size instead: only the image header
    is read for the size, never a pixel, so nothing of the real picture can reach the model
    (the blind baseline).
    """
    from PIL import Image, UnidentifiedImageError

    images = []
    for camera in NUSCENES_CAMERAS:
        path = frame.image_paths[camera]
        try:
            with Image.open(path) as img:
                if blank:
                    width, height = img.size
                    images.append(np.zeros((height, width, 3), np.uint8))
                else:
                    images.append(np.array(img.convert('RGB')))  # writable, as torch wants
        except (OSError, UnidentifiedImageError) as err:
            raise DriveLMError(f'{frame.where()}: cannot read the {camera} image {path}: '
                               f'{err}') from None
    stamp = frame.gt.timestamp_us * 1000 if frame.gt else 0
    return CameraSet(stamp, tuple(images), NUSCENES_CAMERAS)


def write_predictions(path: str | Path, predictions: Iterable[Prediction]) -> Path:
    """Write predictions as DriveLM's JSON list of ``{"id", "question", "answer"}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    items = [p.as_json() for p in predictions]
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(items, indent=1, ensure_ascii=False) + '\n')
    tmp.replace(path)  # a reader never sees half a file
    return path


def read_predictions(path: str | Path) -> list[Prediction]:
    """Read a DriveLM predictions file; DriveLMError names a bad entry."""
    path = Path(path)
    try:
        items = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DriveLMError(f'{path}: cannot read predictions: {err}') from None
    if not isinstance(items, list):
        raise DriveLMError(f'{path}: expected a JSON list of {{"id", "question", "answer"}}')
    out = []
    for n, item in enumerate(items):
        if not isinstance(item, Mapping) or not isinstance(item.get('id'), str) or \
                not isinstance(item.get('answer'), str):
            raise DriveLMError(f'{path}: entry {n} needs a string "id" and "answer", got '
                               f'{str(item)[:80]}')
        out.append(Prediction(item['id'], str(item.get('question', '')), item['answer']))
    return out


def all_qa(frames: Iterable[KeyFrame]) -> list[tuple[KeyFrame, QA]]:
    """Every QA of ``frames`` with its frame, in file order (the order predictions are written)."""
    return [(frame, qa) for frame in frames for qa in frame.qa]
