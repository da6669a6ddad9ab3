"""
The bags' contract: topic names, frames, message types, and the ground-truth sidecar schema.

Every bag that ``drive-vlm bag synth`` or ``bag from-nuscenes`` writes carries, per camera
(``/cam_front`` ... in nuScenes order, see cameras.camera_topic):

===================================  =============================  =============================
topic                                type                           stamp, frame
===================================  =============================  =============================
/cam_front/image_raw                 sensor_msgs/msg/Image (rgb8)   exposure, ``cam_front``
/cam_front/image_raw/compressed      sensor_msgs/msg/CompressedImage (jpeg) instead, if compressed
/cam_front/camera_info               sensor_msgs/msg/CameraInfo     exposure, ``cam_front``
/cam_front/foreground_mask           sensor_msgs/msg/Image (mono8)  synth only: Label values
/odom                                nav_msgs/msg/Odometry          every exposure, map->base_link
/tf                                  tf2_msgs/msg/TFMessage         every exposure, map->base_link
/tf_static                           tf2_msgs/msg/TFMessage         once, base_link->cam_*
/gt/future_trajectory                nav_msgs/msg/Path              reference stamp, base_link
/gt/objects                          visualization_msgs/msg/MarkerArray  synth: 3-D boxes
/gt/frame                            std_msgs/msg/String            reference stamp: the JSON
                                                                    record of the sidecar
===================================  =============================  =============================

The reference stamp of a frame set is its CAM_FRONT stamp (nuScenes keys samples the same way).
Only the core ROS 2 interfaces are used, so a real ``ros2 bag play`` replays every topic.

The sidecar ``<bag>/ground_truth.json`` (beside metadata.yaml; rosbag2 ignores extra files)
indexes the same ground truth per frame set for offline scoring without decoding the bag::

    {"schema": "drive_vlm_pruned/ground_truth", "version": 1, "source": "synth" | "nuscenes",
     "cameras": [...], "reference_camera": "CAM_FRONT", "trajectory_dt_s": 0.5,
     "trajectory_steps": 6, "labels": {"0": "background", "1": "road", ...},
     "mask_topics": {"CAM_FRONT": "/cam_front/foreground_mask", ...} | {},
     "meta": {...how it was made...},
     "frames": [FrameTruth, ...]}            # sorted by stamp_ns

A FrameTruth is ``stamp_ns`` (the key), ``index``, ``camera_stamps_ns`` (camera -> stamp, null
where that message was dropped), ``ego_pose`` (map frame: x, y, z, yaw), ``future_trajectory``
(6 x [x, y], ego frame at stamp_ns, x forward, y left), ``future_valid`` (6 booleans; false past
a scene's end), ``objects`` (camera -> list of {track_id, label, position [x, y, z] (ego frame
at that camera's stamp), size [length, width, height], yaw, box [x0, y0, x1, y1] (pixels),
visible_px}, objects with at least one visible pixel; null where not known, as for nuScenes),
and ``future_objects`` (list of {track_id, label, size, boxes: 6 x ([x, y, yaw] | null)}, ego
frame at stamp_ns; the collision metric's agent boxes).
Masks are referenced, not copied: the mono8 image on ``mask_topics[camera]`` at
``camera_stamps_ns[camera]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
import json
from pathlib import Path

from ..cameras import camera_topic, NUSCENES_CAMERAS

TYPESTORE_NAME = 'ros2_lyrical'  # rosbags' newest ROS 2 store; these types hash as in Kilted

ODOM_TOPIC = '/odom'
TF_TOPIC = '/tf'
TF_STATIC_TOPIC = '/tf_static'
GT_TRAJECTORY_TOPIC = '/gt/future_trajectory'
GT_OBJECTS_TOPIC = '/gt/objects'
GT_FRAME_TOPIC = '/gt/frame'
MAP_FRAME = 'map'
BASE_FRAME = 'base_link'
SIDECAR_NAME = 'ground_truth.json'
SCHEMA = 'drive_vlm_pruned/ground_truth'
SCHEMA_VERSION = 1

IMAGE_TYPE = 'sensor_msgs/msg/Image'
COMPRESSED_TYPE = 'sensor_msgs/msg/CompressedImage'
CAMERA_INFO_TYPE = 'sensor_msgs/msg/CameraInfo'
ODOM_TYPE = 'nav_msgs/msg/Odometry'
TF_TYPE = 'tf2_msgs/msg/TFMessage'
PATH_TYPE = 'nav_msgs/msg/Path'
MARKERS_TYPE = 'visualization_msgs/msg/MarkerArray'
STRING_TYPE = 'std_msgs/msg/String'


def camera_frame(name: str) -> str:
    """Return the optical TF frame of camera ``name`` (``cam_front``)."""
    return name.lower()


def camera_info_topic(name: str) -> str:
    """Return ``/cam_front/camera_info``: beside the image topic, as image_transport expects."""
    return f'/{name.lower()}/camera_info'


def mask_topic(name: str) -> str:
    """Return ``/cam_front/foreground_mask`` (mono8, scenes.Label values)."""
    return f'/{name.lower()}/foreground_mask'


def image_topic(name: str, compressed: bool) -> str:
    """Return the camera's image topic (cameras.camera_topic, the node's default)."""
    return camera_topic(name, compressed)


def typestore():
    """Return the rosbags typestore every bag here is written with."""
    from rosbags.typesys import get_typestore, Stores

    return get_typestore(Stores(TYPESTORE_NAME))


@dataclass(frozen=True)
class ViewObjectTruth:
    """An object in one camera's view (sidecar ``objects[camera][i]``)."""

    track_id: int
    label: str
    position: tuple[float, float, float]
    size: tuple[float, float, float]
    yaw: float
    box: tuple[float, float, float, float]
    visible_px: int


@dataclass(frozen=True)
class FutureObjectTruth:
    """An agent's future boxes: ``boxes[k]`` = (x, y, yaw) at step k + 1, or None if unknown."""

    track_id: int | str
    label: str
    size: tuple[float, float, float]
    boxes: tuple[tuple[float, float, float] | None, ...]


@dataclass(frozen=True)
class FrameTruth:
    """The ground truth of one frame set, keyed by its reference (CAM_FRONT) stamp."""

    stamp_ns: int
    index: int
    camera_stamps_ns: dict[str, int | None]
    ego_pose: dict[str, float]
    future_trajectory: tuple[tuple[float, float], ...]
    future_valid: tuple[bool, ...]
    objects: dict[str, tuple[ViewObjectTruth, ...]] | None = None
    future_objects: tuple[FutureObjectTruth, ...] | None = None

    @property
    def complete(self) -> bool:
        """Return True when every camera's message of this set is in the bag."""
        return all(s is not None for s in self.camera_stamps_ns.values())

    def to_json(self) -> dict:
        out = asdict(self)
        out['future_trajectory'] = [list(p) for p in self.future_trajectory]
        return out

    @classmethod
    def from_json(cls, rec: Mapping) -> FrameTruth:
        objects = rec.get('objects')
        future = rec.get('future_objects')
        return cls(
            stamp_ns=int(rec['stamp_ns']), index=int(rec['index']),
            camera_stamps_ns={k: (None if v is None else int(v))
                              for k, v in rec['camera_stamps_ns'].items()},
            ego_pose={k: float(v) for k, v in rec['ego_pose'].items()},
            future_trajectory=tuple((float(x), float(y)) for x, y in rec['future_trajectory']),
            future_valid=tuple(bool(v) for v in rec['future_valid']),
            objects=None if objects is None else {
                cam: tuple(ViewObjectTruth(
                    int(o['track_id']), o['label'], tuple(o['position']), tuple(o['size']),
                    float(o['yaw']), tuple(o['box']), int(o['visible_px'])) for o in objs)
                for cam, objs in objects.items()},
            future_objects=None if future is None else tuple(
                FutureObjectTruth(o['track_id'], o['label'], tuple(o['size']),
                                  tuple(None if b is None else tuple(b) for b in o['boxes']))
                for o in future),
        )


@dataclass(frozen=True)
class GroundTruth:
    """A bag's sidecar: frame records sorted by stamp, plus what they mean."""

    source: str
    frames: tuple[FrameTruth, ...]
    cameras: tuple[str, ...] = NUSCENES_CAMERAS
    reference_camera: str = 'CAM_FRONT'
    trajectory_dt_s: float = 0.5
    trajectory_steps: int = 6
    labels: dict[str, str] = field(default_factory=dict)
    mask_topics: dict[str, str] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def by_stamp(self) -> dict[int, FrameTruth]:
        return {f.stamp_ns: f for f in self.frames}

    def frame_at(self, stamp_ns: int, tolerance_ns: int = 0) -> FrameTruth | None:
        """
        Return the record whose stamp is nearest ``stamp_ns``, if within ``tolerance_ns``.

        A synchronizer may stamp a set with another camera's stamp: pass a tolerance of half a
        frame period (~41 ms at 12 Hz) to match any stamp of the set.
        """
        best = min(self.frames, key=lambda f: abs(f.stamp_ns - stamp_ns), default=None)
        if best is None or abs(best.stamp_ns - stamp_ns) > tolerance_ns:
            return None
        return best

    def to_json(self) -> dict:
        return {
            'schema': SCHEMA, 'version': SCHEMA_VERSION, 'source': self.source,
            'cameras': list(self.cameras), 'reference_camera': self.reference_camera,
            'trajectory_dt_s': self.trajectory_dt_s, 'trajectory_steps': self.trajectory_steps,
            'labels': self.labels, 'mask_topics': self.mask_topics, 'meta': self.meta,
            'frames': [f.to_json() for f in self.frames],
        }

    @classmethod
    def from_json(cls, data: Mapping) -> GroundTruth:
        if data.get('schema') != SCHEMA:
            raise ValueError(f'not a {SCHEMA} file (schema {data.get("schema")!r})')
        if data.get('version') != SCHEMA_VERSION:
            raise ValueError(f'ground-truth schema version {data.get("version")}; this code '
                             f'reads version {SCHEMA_VERSION}: rewrite the bag with this version')
        return cls(
            source=data['source'],
            frames=tuple(FrameTruth.from_json(r) for r in data['frames']),
            cameras=tuple(data['cameras']), reference_camera=data['reference_camera'],
            trajectory_dt_s=float(data['trajectory_dt_s']),
            trajectory_steps=int(data['trajectory_steps']), labels=dict(data['labels']),
            mask_topics=dict(data['mask_topics']), meta=dict(data.get('meta', {})),
        )


def sidecar_path(bag: str | Path) -> Path:
    """Return where a bag's sidecar lives: ``<bag>/ground_truth.json``."""
    return Path(bag) / SIDECAR_NAME


def frame_json(frame: FrameTruth) -> str:
    """Return one record as the compact JSON the ``/gt/frame`` topic carries."""
    return json.dumps(_rounded(frame.to_json()), separators=(',', ':'))


def write_ground_truth(bag: str | Path, truth: GroundTruth) -> Path:
    """Write the sidecar into the bag directory (floats rounded to 1 mm / 1 mrad)."""
    path = sidecar_path(bag)
    path.write_text(json.dumps(_rounded(truth.to_json()), separators=(',', ':')) + '\n')
    return path


def read_ground_truth(bag: str | Path) -> GroundTruth:
    """Read a bag's sidecar; raise FileNotFoundError naming where it was looked for."""
    path = sidecar_path(bag)
    if not path.is_file():
        raise FileNotFoundError(
            f'no ground truth for bag {bag}: {path} is missing (bags from `drive-vlm bag synth` '
            'and `bag from-nuscenes` have one; other bags carry none)')
    return GroundTruth.from_json(json.loads(path.read_text()))


def _rounded(value):
    """Round floats to 3 decimals, recursively: keeps the sidecar small and diffable."""
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, Mapping):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, Iterable) and not isinstance(value, str):
        return [_rounded(v) for v in value]
    return value
