"""
``drive-vlm bag from-nuscenes``: one rosbag2 per nuScenes scene, with the planning GT.

Per camera sample_data (keyframes and sweeps, 12 Hz): the ORIGINAL JPEG bytes as a
CompressedImage (format 'jpeg', never re-encoded), CameraInfo from calibrated_sensor, and the
ego pose of that sample_data as Odometry on /odom and map -> base_link on /tf; /tf_static holds
base_link -> each camera's optical frame. Stamps are the sample_data timestamps (us -> ns).
At each keyframe (sample), /gt/future_trajectory (nav_msgs/Path) and /gt/frame carry the GT
future trajectory by the rule in the shared docs/models.md: follow ``sample['next']`` for 6
keyframes,
take each one's ego pose from its LIDAR_TOP sample_data, rotate into the current ego frame
(x forward, y left), and mask steps past the scene's end. A keyframe's reference stamp is its
CAM_FRONT timestamp. The sidecar (topics.py) also lists, for the collision metric, the future
boxes of annotated agents within 50 m (from sample_annotation, where the table exists).

Reading the tables: nuscenes-devkit (the ``nuscenes`` extra) is used when it imports. It pins
numpy<2, which the torch stack here cannot go back to, so without it the converter reads the
same JSON tables itself (NuScenesTables: the devkit's table loading and reverse index, for the
tables this converter needs). Both give the same records; ``--reader`` forces one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import json
from pathlib import Path

import numpy as np

from .messages import (
    BagOut,
    camera_info_msg,
    header,
    make,
    odometry_msg,
    path_msg,
    static_camera_tf,
    transform_msg,
)
from .rig_calibration import write_bag_calibration
from .topics import (
    BASE_FRAME,
    camera_frame,
    camera_info_topic,
    CAMERA_INFO_TYPE,
    COMPRESSED_TYPE,
    frame_json,
    FrameTruth,
    FutureObjectTruth,
    GroundTruth,
    GT_FRAME_TOPIC,
    GT_TRAJECTORY_TOPIC,
    image_topic,
    MAP_FRAME,
    ODOM_TOPIC,
    ODOM_TYPE,
    PATH_TYPE,
    STRING_TYPE,
    TF_STATIC_TOPIC,
    TF_TOPIC,
    TF_TYPE,
    write_ground_truth,
)
from ..cameras import NUSCENES_CAMERAS
from ..scenes.geometry import quaternion_to_matrix, wrap_angle, yaw_of_quaternion

POSE_CHANNEL = 'LIDAR_TOP'
FUTURE_STEPS = 6
FUTURE_RADIUS_M = 50.0
REQUIRED_TABLES = ('scene', 'sample', 'sample_data', 'calibrated_sensor', 'sensor', 'ego_pose',
                   'log')
OPTIONAL_TABLES = ('sample_annotation', 'instance', 'category')
READERS = ('auto', 'devkit', 'tables')


class NuScenesError(ValueError):
    """A dataroot, version, scene or file the converter needs is missing or malformed."""


class NuScenesTables:
    """
    The nuScenes tables this converter reads, loaded from ``<dataroot>/<version>/*.json``.

    It mirrors what nuscenes-devkit's ``NuScenes`` gives for them: ``get(table, token)``,
    sample_data records with ``channel`` and ``sensor_modality``, samples with ``data``
    (channel -> keyframe sample_data token) and ``anns``, annotations with ``category_name``.
    """

    def __init__(self, dataroot: str | Path, version: str) -> None:
        self.dataroot = str(dataroot)
        self.version = version
        table_root = Path(dataroot) / version
        self._index: dict[str, dict[str, int]] = {}
        for name in REQUIRED_TABLES + OPTIONAL_TABLES:
            path = table_root / f'{name}.json'
            if not path.is_file():
                if name in REQUIRED_TABLES:
                    raise NuScenesError(f'{path} is missing: {table_root} is not a complete '
                                        f'nuScenes {version} table folder')
                setattr(self, name, [])
                continue
            try:
                records = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise NuScenesError(f'{path} is not valid JSON: {err}') from None
            setattr(self, name, records)
            self._index[name] = {r['token']: i for i, r in enumerate(records)}
        for sd in self.sample_data:
            sensor = self.get('sensor', self.get('calibrated_sensor',
                                                 sd['calibrated_sensor_token'])['sensor_token'])
            sd['channel'], sd['sensor_modality'] = sensor['channel'], sensor['modality']
        for sample in self.sample:
            sample['data'], sample['anns'] = {}, []
        for sd in self.sample_data:
            if sd['is_key_frame']:
                self.get('sample', sd['sample_token'])['data'][sd['channel']] = sd['token']
        for ann in self.sample_annotation:
            self.get('sample', ann['sample_token'])['anns'].append(ann['token'])
            instance = self.get('instance', ann['instance_token'])
            ann['category_name'] = self.get('category', instance['category_token'])['name']

    def get(self, table: str, token: str) -> dict:
        try:
            return getattr(self, table)[self._index[table][token]]
        except KeyError:
            raise NuScenesError(f'{table} token {token!r} not found in '
                                f'{Path(self.dataroot) / self.version / table}.json') from None


def check_dataroot(dataroot: str | Path, version: str) -> Path:
    """Return ``<dataroot>/<version>``; raise NuScenesError naming what is missing where."""
    root = Path(dataroot).expanduser()
    if not root.is_dir():
        raise NuScenesError(f'nuScenes dataroot not found: {root} (pass --dataroot, the folder '
                            f'that holds {version}/, samples/ and sweeps/)')
    tables = root / version
    if not tables.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith('v'))
        raise NuScenesError(f'nuScenes version {version!r} not found: no folder {tables} '
                            f'(versions in {root}: {", ".join(found) or "none"}; pass --version)')
    return tables


def open_database(dataroot: str | Path, version: str, reader: str = 'auto'):
    """
    Load the tables with nuscenes-devkit or NuScenesTables; return (database, reader used).

    ``auto`` takes the devkit when it imports and the JSON reader otherwise.
    """
    if reader not in READERS:
        raise NuScenesError(f'--reader {reader!r}: use one of {", ".join(READERS)}')
    check_dataroot(dataroot, version)
    if reader in ('auto', 'devkit'):
        try:
            from nuscenes.nuscenes import NuScenes
        except ImportError as err:
            if reader == 'devkit':
                raise NuScenesError(
                    f'nuscenes-devkit does not import ({err}): pip install '
                    '"drive_vlm_pruned[nuscenes]" (it needs numpy<2), or use --reader tables, '
                    'which reads the same JSON tables without it') from None
        else:
            return NuScenes(version=version, dataroot=str(dataroot), verbose=False), 'devkit'
    return NuScenesTables(dataroot, version), 'tables'


@dataclass(frozen=True)
class SceneBag:
    """One converted scene: its bag, sidecar, keyframes and per-topic message counts."""

    scene: str
    path: Path
    sidecar: Path
    keyframes: int
    counts: dict[str, int]


def _ns(timestamp_us: int) -> int:
    return int(timestamp_us) * 1000


def _pose(db, sample_data: dict) -> tuple[np.ndarray, np.ndarray, list]:
    """Return (translation, rotation matrix, quaternion wxyz) of a sample_data's ego pose."""
    ego = db.get('ego_pose', sample_data['ego_pose_token'])
    return (np.asarray(ego['translation'], dtype=float), quaternion_to_matrix(ego['rotation']),
            list(ego['rotation']))


def scene_samples(db, scene: dict) -> list[dict]:
    """Return the scene's keyframes in order, following ``sample['next']``."""
    samples, token = [], scene['first_sample_token']
    while token:
        sample = db.get('sample', token)
        samples.append(sample)
        token = sample['next']
    return samples


def channel_sample_data(db, first_sample: dict, channel: str) -> list[dict]:
    """Return every sample_data of ``channel`` in the scene (sweeps too), in time order."""
    token = first_sample['data'].get(channel)
    if not token:
        return []
    sd = db.get('sample_data', token)
    while sd['prev']:
        sd = db.get('sample_data', sd['prev'])
    out = [sd]
    while sd['next']:
        sd = db.get('sample_data', sd['next'])
        out.append(sd)
    return out


def future_trajectory(db, samples: Sequence[dict], i: int, channel: str = POSE_CHANNEL,
                      steps: int = FUTURE_STEPS) -> tuple[np.ndarray, list[bool]]:
    """
    Return keyframe ``i``'s GT future: ``steps`` x 2 positions in its ego frame, and validity.

    Step k is keyframe i + k's ego pose (from its ``channel`` sample_data) rotated into
    keyframe i's ego frame: ``R0^T (t_k - t_0)``, x forward, y left. Steps past the scene's
    last keyframe are (0, 0) and invalid.
    """
    t0, r0, _ = _pose(db, db.get('sample_data', samples[i]['data'][channel]))
    points, valid = np.zeros((steps, 2)), []
    for k in range(1, steps + 1):
        if i + k >= len(samples):
            valid.append(False)
            continue
        tk, _, _ = _pose(db, db.get('sample_data', samples[i + k]['data'][channel]))
        points[k - 1] = (r0.T @ (tk - t0))[:2]
        valid.append(True)
    return points, valid


def future_objects(db, samples: Sequence[dict], i: int, channel: str = POSE_CHANNEL,
                   steps: int = FUTURE_STEPS, radius_m: float = FUTURE_RADIUS_M
                   ) -> tuple[FutureObjectTruth, ...] | None:
    """
    Return the future boxes of agents annotated at keyframe ``i`` within ``radius_m``.

    Boxes are (x, y, yaw) in keyframe i's ego frame at keyframes i + 1 .. i + steps, None
    where the agent has no annotation then; sizes are (length, width, height) (nuScenes
    stores width, length, height). None when the dataroot has no annotations.
    """
    if not getattr(db, 'sample_annotation', None):
        return None
    t0, r0, q0 = _pose(db, db.get('sample_data', samples[i]['data'][channel]))
    yaw0 = yaw_of_quaternion(q0)
    later = []
    for k in range(1, steps + 1):
        anns = samples[i + k]['anns'] if i + k < len(samples) else []
        later.append({a['instance_token']: a
                      for a in (db.get('sample_annotation', t) for t in anns)})
    out = []
    for token in samples[i]['anns']:
        ann = db.get('sample_annotation', token)
        if np.hypot(*(np.asarray(ann['translation'][:2]) - t0[:2])) > radius_m:
            continue
        boxes = []
        for step in later:
            fut = step.get(ann['instance_token'])
            if fut is None:
                boxes.append(None)
                continue
            x, y, _ = r0.T @ (np.asarray(fut['translation'], dtype=float) - t0)
            yaw = float(wrap_angle(yaw_of_quaternion(fut['rotation']) - yaw0))
            boxes.append((float(x), float(y), yaw))
        w, length, h = ann['size']
        out.append(FutureObjectTruth(ann['instance_token'], ann['category_name'],
                                     (float(length), float(w), float(h)), tuple(boxes)))
    return tuple(out)


def _select_scenes(db, names: Sequence[str], table_root: Path) -> list[dict]:
    by_name = {s['name']: s for s in db.scene}
    if not names:
        return list(db.scene)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        have = sorted(by_name)
        listed = ', '.join(have[:12]) + (f' ... ({len(have)} scenes)' if len(have) > 12 else '')
        raise NuScenesError(f'scene(s) {", ".join(unknown)} not in {table_root / "scene.json"}; '
                            f'it has: {listed}')
    return [by_name[n] for n in names]


def convert_scene(db, scene: dict, out: Path, storage: str = 'mcap', progress: bool = False
                  ) -> SceneBag:
    """Write one scene's bag and sidecar at ``out`` (a new path)."""
    from tqdm import tqdm

    dataroot = Path(db.dataroot)
    samples = scene_samples(db, scene)
    if not samples:
        raise NuScenesError(f'scene {scene["name"]} has no samples')
    pose_channel = POSE_CHANNEL if POSE_CHANNEL in samples[0]['data'] else 'CAM_FRONT'
    cameras = [c for c in NUSCENES_CAMERAS if c in samples[0]['data']]
    if 'CAM_FRONT' not in cameras:
        raise NuScenesError(f'scene {scene["name"]}: the first sample has no CAM_FRONT keyframe')
    # (stamp, order, kind, payload): written in time order; payloads are read lazily so a scene
    # of full-size JPEGs never sits in memory at once.
    plan: list[tuple[int, int, str, object]] = []
    first_cal = {}
    for cam in cameras:
        for sd in channel_sample_data(db, samples[0], cam):
            plan.append((_ns(sd['timestamp']), 0, 'camera', sd))
            first_cal.setdefault(cam, db.get('calibrated_sensor', sd['calibrated_sensor_token']))
    records = []
    for i, sample in enumerate(samples):
        ref = db.get('sample_data', sample['data']['CAM_FRONT'])
        points, valid = future_trajectory(db, samples, i, pose_channel)
        t0, _, q0 = _pose(db, db.get('sample_data', sample['data'][pose_channel]))
        stamps = {c: (_ns(db.get('sample_data', sample['data'][c])['timestamp'])
                      if c in sample['data'] else None) for c in NUSCENES_CAMERAS}
        future_stamps = [_ns(samples[i + k]['timestamp']) if i + k < len(samples) else None
                         for k in range(1, FUTURE_STEPS + 1)]
        record = FrameTruth(
            stamp_ns=_ns(ref['timestamp']), index=i, camera_stamps_ns=stamps,
            ego_pose={'x': float(t0[0]), 'y': float(t0[1]), 'z': float(t0[2]),
                      'yaw': yaw_of_quaternion(q0)},
            future_trajectory=tuple((float(x), float(y)) for x, y in points),
            future_valid=tuple(valid), objects=None,
            future_objects=future_objects(db, samples, i, pose_channel))
        records.append(record)
        plan.append((record.stamp_ns, 1, 'keyframe', (record, points, valid, future_stamps)))
    plan.sort(key=lambda p: (p[0], p[1]))

    with BagOut(out, storage, compress=True) as bag:
        ts = bag.ts
        bag.write(TF_STATIC_TOPIC, 'tf2_msgs/msg/TFMessage', plan[0][0], static_camera_tf(
            ts, plan[0][0], [(c, cal['translation'], cal['rotation'])
                             for c, cal in first_cal.items()]))
        for stamp_ns, _, kind, payload in tqdm(plan, desc=scene['name'], unit='msg',
                                               leave=False, disable=not progress):
            if kind == 'keyframe':
                record, points, valid, future_stamps = payload
                kept = [(p, s) for p, v, s in zip(points, valid, future_stamps) if v]
                bag.write(GT_TRAJECTORY_TOPIC, PATH_TYPE, stamp_ns, path_msg(
                    ts, stamp_ns, [p for p, _ in kept], [s for _, s in kept]))
                bag.write(GT_FRAME_TOPIC, STRING_TYPE, stamp_ns,
                          make(ts, STRING_TYPE, data=frame_json(record)))
                continue
            sd = payload
            cam = sd['channel']
            path = dataroot / sd['filename']
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                raise NuScenesError(f'image file missing: {path} (sample_data {sd["token"]} of '
                                    f'scene {scene["name"]}); is the dataroot complete?') from None
            bag.write(image_topic(cam, compressed=True), COMPRESSED_TYPE, stamp_ns, make(
                ts, COMPRESSED_TYPE, header=header(ts, stamp_ns, camera_frame(cam)), format='jpeg',
                data=np.frombuffer(data, dtype=np.uint8)))
            cal = db.get('calibrated_sensor', sd['calibrated_sensor_token'])
            bag.write(camera_info_topic(cam), CAMERA_INFO_TYPE, stamp_ns, camera_info_msg(
                ts, stamp_ns, cam, sd['width'], sd['height'], np.asarray(cal['camera_intrinsic'])))
            translation, _, rotation = _pose(db, sd)
            bag.write(ODOM_TOPIC, ODOM_TYPE, stamp_ns,
                      odometry_msg(ts, stamp_ns, translation, rotation))
            bag.write(TF_TOPIC, TF_TYPE, stamp_ns, make(ts, TF_TYPE, transforms=[transform_msg(
                ts, stamp_ns, MAP_FRAME, BASE_FRAME, translation, rotation)]))
        counts = dict(bag.counts)
    truth = GroundTruth(
        source='nuscenes', frames=tuple(records),
        meta={'dataroot': str(dataroot), 'version': db.version, 'scene': scene['name'],
              'scene_token': scene['token'], 'pose_channel': pose_channel,
              'image_topics': {c: image_topic(c, True) for c in cameras},
              'future_objects': 'agents annotated at the keyframe within '
                                f'{FUTURE_RADIUS_M:g} m; boxes at later keyframes'},
    )
    sidecar = write_ground_truth(out, truth)
    write_bag_calibration(out)  # calibrated_sensor's extrinsics and K, for tf-less readers
    return SceneBag(scene['name'], out, sidecar, len(records), counts)


def convert_nuscenes(dataroot: str | Path, version: str, out_dir: str | Path,
                     scenes: Sequence[str] = (), storage: str = 'mcap', reader: str = 'auto',
                     progress: bool = False) -> tuple[list[SceneBag], str]:
    """
    Convert the named scenes (default: all) into ``out_dir/<scene name>`` bags.

    Return the bags and the table reader used ('devkit' or 'tables'). Every target path is
    checked before anything is written, so a clash never leaves half the scenes converted.
    """
    from tqdm import tqdm

    table_root = check_dataroot(dataroot, version)
    db, used = open_database(dataroot, version, reader)
    chosen = _select_scenes(db, scenes, table_root)
    out_dir = Path(out_dir)
    clashes = [str(out_dir / s['name']) for s in chosen if (out_dir / s['name']).exists()]
    if clashes:
        raise NuScenesError(f'bag path(s) exist: {", ".join(clashes)}; bags are written to new '
                            'paths: choose another OUT_DIR or delete them')
    out_dir.mkdir(parents=True, exist_ok=True)
    bags = [convert_scene(db, scene, out_dir / scene['name'], storage, progress)
            for scene in tqdm(chosen, desc='scenes', unit='scene', disable=not progress)]
    return bags, used
