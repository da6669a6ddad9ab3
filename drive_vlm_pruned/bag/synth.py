"""
``drive-vlm bag synth``: write a rosbag2 of a procedurally rendered six-camera drive, with GT.

Frame sets come at 12 Hz (period 83 333 333 ns from a fixed base stamp, so a seed gives the
same bytes every time). Within a set the cameras fire in nuScenes order at fixed offsets
(scenes.rig.NUSCENES_CAPTURE_OFFSETS_S, 42.6 ms from first to last, centred in the set's
first 50 ms); ``jitter_ms`` adds a uniform +-J ms to each and the result is clamped into that
window, so a set never spreads over more than 50 ms. Each camera renders the scene at its own
exposure time. With ``drop_prob`` each camera message (image, camera_info and mask together)
is left out independently; the sidecar names the dropped cameras (stamp null). Jitter and
drops draw from their own random streams, so switching them on never changes the scene.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
import io
from pathlib import Path

import numpy as np

from .messages import (
    BagOut,
    camera_info_msg,
    header,
    make,
    odometry_msg,
    path_msg,
    pose_msg,
    STORAGES,
    transform_msg,
    yaw_quaternion,
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
    GT_OBJECTS_TOPIC,
    GT_TRAJECTORY_TOPIC,
    image_topic,
    IMAGE_TYPE,
    MAP_FRAME,
    MARKERS_TYPE,
    mask_topic,
    ODOM_TOPIC,
    ODOM_TYPE,
    PATH_TYPE,
    STRING_TYPE,
    TF_STATIC_TOPIC,
    TF_TOPIC,
    TF_TYPE,
    ViewObjectTruth,
    write_ground_truth,
)
from ..cameras import CAMERA_RATE_HZ, FRAME_PERIOD_NS, NUSCENES_CAMERAS
from ..scenes import (
    FrameSet,
    Label,
    make_scene,
    NUSCENES_CAPTURE_OFFSETS_S,
    nuscenes_rig,
    REFERENCE_CAMERA,
    render_frame_set,
    Scene,
    SceneConfig,
)
from ..scenes.frames import FUTURE_DT_S, FUTURE_RADIUS_M, FUTURE_STEPS

BASE_STAMP_NS = 1_700_000_000_000_000_000   # 2023-11-14: a fixed start keeps bags reproducible
MAX_SPREAD_NS = 50_000_000                    # a set's six exposures lie within 50 ms
MARKER_COLORS = {'vehicle': (0.2, 0.4, 1.0), 'pedestrian': (1.0, 0.2, 0.2),
                 'sign': (1.0, 1.0, 0.2), 'barrier': (1.0, 0.5, 0.0)}


@dataclass(frozen=True)
class SynthOptions:
    """How to make the bag; every field has a CLI option of the same name."""

    frames: int = 36
    width: int = 400
    height: int = 225
    compressed: bool = False
    jpeg_quality: int = 90
    storage: str = 'mcap'
    compression: bool = True
    seed: int = 0
    jitter_ms: float = 0.0
    drop_prob: float = 0.0
    curve: float = 0.0
    speed: float = 8.0

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError(f'--frames {self.frames}: write at least 1 frame set')
        if not (16 <= self.width <= 4096 and 16 <= self.height <= 4096):
            raise ValueError(f'image size {self.width} x {self.height}: use 16 to 4096 px a side')
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f'--jpeg-quality {self.jpeg_quality}: use 1 to 100')
        if self.storage not in STORAGES:
            raise ValueError(f'--storage {self.storage!r}: use one of {", ".join(STORAGES)}')
        if not 0.0 <= self.jitter_ms <= 20.0:
            raise ValueError(f'--jitter-ms {self.jitter_ms}: use 0 to 20 ms (a set spans 50 ms)')
        if not 0.0 <= self.drop_prob < 1.0:
            raise ValueError(f'--drop-prob {self.drop_prob}: use a probability in [0, 1)')
        try:
            scene_config(self)  # the scene's own limits on curvature and speed
        except ValueError as err:
            raise ValueError(f'--curve {self.curve} / --speed {self.speed}: {err}') from None


@dataclass(frozen=True)
class SynthResult:
    """What was written: the bag, its sidecar, per-topic message counts and dropped images."""

    path: Path
    sidecar: Path
    frames: int
    dropped: int
    counts: dict[str, int]


def scene_config(options: SynthOptions) -> SceneConfig:
    """Return the scene behind a bag: long enough for every frame's 3 s of future."""
    duration = options.frames / CAMERA_RATE_HZ + FUTURE_STEPS * FUTURE_DT_S + 1.0
    return SceneConfig(seed=options.seed, curvature=options.curve, ego_speed=options.speed,
                       duration_s=duration)


def capture_stamps_ns(index: int, jitter_ms: float, rng: np.random.Generator
                      ) -> dict[str, int]:
    """Return each camera's stamp in frame set ``index`` (NUSCENES_CAMERAS order)."""
    start = BASE_STAMP_NS + index * FRAME_PERIOD_NS
    # Centre the nominal 42.6 ms spread in the 50 ms window, so small jitter is never clamped.
    nominal = NUSCENES_CAPTURE_OFFSETS_S.values()
    margin = (MAX_SPREAD_NS - (max(nominal) - min(nominal)) * 1e9) / 2.0
    stamps = {}
    for name in NUSCENES_CAMERAS:
        offset = margin + NUSCENES_CAPTURE_OFFSETS_S[name] * 1e9
        if jitter_ms > 0:
            offset += rng.uniform(-jitter_ms, jitter_ms) * 1e6
        stamps[name] = start + int(round(min(max(offset, 0.0), MAX_SPREAD_NS)))
    return stamps


def scene_time(stamp_ns: int) -> float:
    return (stamp_ns - BASE_STAMP_NS) / 1e9


def _image_msg(ts, stamp_ns: int, camera: str, rgb: np.ndarray, compressed: bool, quality: int):
    if compressed:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format='JPEG', quality=quality)
        return COMPRESSED_TYPE, make(ts, COMPRESSED_TYPE,
                                     header=header(ts, stamp_ns, camera_frame(camera)),
                                     format='jpeg',
                                     data=np.frombuffer(buf.getvalue(), dtype=np.uint8))
    h, w = rgb.shape[:2]
    return IMAGE_TYPE, make(ts, IMAGE_TYPE, header=header(ts, stamp_ns, camera_frame(camera)),
                            height=h, width=w, encoding='rgb8', step=3 * w,
                            data=np.ascontiguousarray(rgb).reshape(-1))


def _mask_msg(ts, stamp_ns: int, camera: str, mask: np.ndarray):
    h, w = mask.shape
    return make(ts, IMAGE_TYPE, header=header(ts, stamp_ns, camera_frame(camera)), height=h,
                width=w, encoding='mono8', step=w, data=np.ascontiguousarray(mask).reshape(-1))


def _markers_msg(ts, stamp_ns: int, scene: Scene, frames: FrameSet):
    """Return the 3-D boxes of agents within 50 m, in base_link at the reference stamp."""
    pose = frames.ego_pose
    markers = []
    for obj in scene.objects(frames.time_s):
        x, y, z = pose.to_ego(np.array([obj.position]))[0]
        if np.hypot(x, y) > FUTURE_RADIUS_M:
            continue
        r, g, b = MARKER_COLORS[obj.label]
        markers.append(make(
            ts, 'visualization_msgs/msg/Marker', header=header(ts, stamp_ns, BASE_FRAME),
            ns=obj.label, id=obj.track_id, type=1, action=0,
            pose=pose_msg(ts, (x, y, z), yaw_quaternion(obj.yaw - pose.yaw)),
            scale=make(ts, 'geometry_msgs/msg/Vector3', x=obj.size[0], y=obj.size[1],
                       z=obj.size[2]),
            color=make(ts, 'std_msgs/msg/ColorRGBA', r=r, g=g, b=b, a=0.6),
            # Boxes vanish unless the next set refreshes them (2.4 frame periods).
            lifetime=make(ts, 'builtin_interfaces/msg/Duration', sec=0, nanosec=200_000_000),
        ))
    return make(ts, MARKERS_TYPE, markers=markers)


def frame_truth(frames: FrameSet, stamps: dict[str, int], dropped: set[str]) -> FrameTruth:
    """Return the sidecar record of a rendered frame set (objects: visible ones only)."""
    pose = frames.ego_pose
    objects = {}
    for view in frames.views:
        if view.camera in dropped:
            continue
        objects[view.camera] = tuple(
            ViewObjectTruth(o.object3d.track_id, o.object3d.label, o.object3d.position,
                            o.object3d.size, o.object3d.yaw, o.box, o.visible_px)
            for o in view.objects if o.visible_px > 0)
    return FrameTruth(
        stamp_ns=stamps[REFERENCE_CAMERA], index=frames.index,
        camera_stamps_ns={c: (None if c in dropped else stamps[c]) for c in NUSCENES_CAMERAS},
        ego_pose={'x': pose.x, 'y': pose.y, 'z': 0.0, 'yaw': pose.yaw},
        future_trajectory=tuple((float(x), float(y)) for x, y in frames.future_trajectory),
        future_valid=(True,) * len(frames.future_trajectory),
        objects=objects,
        future_objects=tuple(FutureObjectTruth(o.track_id, o.label, o.size, o.boxes)
                             for o in frames.future_objects),
    )


def synth_bag(out: str | Path, options: SynthOptions = SynthOptions(),
              progress: bool = False) -> SynthResult:
    """Render ``options.frames`` frame sets and write them, with GT, as a new bag at ``out``."""
    from tqdm import tqdm

    scene = make_scene(scene_config(options))
    rig = nuscenes_rig(options.width, options.height)
    jitter_rng = np.random.default_rng([options.seed, 1])
    drop_rng = np.random.default_rng([options.seed, 2])
    records = []
    dropped_total = 0
    with BagOut(Path(out), options.storage, options.compression) as bag:
        ts = bag.ts
        for index in tqdm(range(options.frames), desc='synth', unit='set', disable=not progress):
            stamps = capture_stamps_ns(index, options.jitter_ms, jitter_rng)
            dropped = {c for c in NUSCENES_CAMERAS if drop_rng.random() < options.drop_prob}
            dropped_total += len(dropped)
            frames = render_frame_set(scene, rig, index,
                                      {c: scene_time(s) for c, s in stamps.items()})
            if index == 0:
                bag.write(TF_STATIC_TOPIC, TF_TYPE, min(stamps.values()), make(
                    ts, TF_TYPE, transforms=[
                        transform_msg(ts, min(stamps.values()), BASE_FRAME, camera_frame(c.name),
                                      c.extrinsics.translation, c.extrinsics.quaternion())
                        for c in rig]))
            out_msgs = []
            for order, (cam, view) in enumerate(zip(rig, frames.views)):
                st = stamps[cam.name]
                pose = view.ego_pose
                quat = yaw_quaternion(pose.yaw)
                yaw_rate = scene.road.frenet_speed(pose.speed, scene.ego_d) * scene.road.curvature
                out_msgs.append((st, order, ODOM_TOPIC, ODOM_TYPE, odometry_msg(
                    ts, st, (pose.x, pose.y, 0.0), quat, (pose.speed, 0.0), yaw_rate)))
                out_msgs.append((st, order, TF_TOPIC, TF_TYPE, make(ts, TF_TYPE, transforms=[
                    transform_msg(ts, st, MAP_FRAME, BASE_FRAME, (pose.x, pose.y, 0.0), quat)])))
                if cam.name in dropped:
                    continue
                msgtype, msg = _image_msg(ts, st, cam.name, view.image, options.compressed,
                                          options.jpeg_quality)
                out_msgs.append((st, order, image_topic(cam.name, options.compressed), msgtype,
                                 msg))
                k = cam.intrinsics
                out_msgs.append((st, order, camera_info_topic(cam.name), CAMERA_INFO_TYPE,
                                 camera_info_msg(ts, st, cam.name, k.width, k.height,
                                                 k.matrix())))
                out_msgs.append((st, order, mask_topic(cam.name), IMAGE_TYPE,
                                 _mask_msg(ts, st, cam.name, view.mask)))
            record = frame_truth(frames, stamps, dropped)
            ref = record.stamp_ns
            step_ns = int(FUTURE_DT_S * 1e9)
            out_msgs.append((ref, 99, GT_TRAJECTORY_TOPIC, PATH_TYPE, path_msg(
                ts, ref, frames.future_trajectory,
                [ref + (k + 1) * step_ns for k in range(len(frames.future_trajectory))])))
            out_msgs.append((ref, 99, GT_OBJECTS_TOPIC, MARKERS_TYPE,
                             _markers_msg(ts, ref, scene, frames)))
            out_msgs.append((ref, 99, GT_FRAME_TOPIC, STRING_TYPE,
                             make(ts, STRING_TYPE, data=frame_json(record))))
            for st, _, topic, msgtype, msg in sorted(out_msgs, key=lambda m: (m[0], m[1])):
                bag.write(topic, msgtype, st, msg)
            records.append(record)
        counts = dict(bag.counts)
    truth = GroundTruth(
        source='synth', frames=tuple(records),
        labels={str(int(label)): label.name.lower() for label in Label},
        mask_topics={c: mask_topic(c) for c in NUSCENES_CAMERAS},
        meta={'generator': 'drive_vlm_pruned.scenes', 'options': asdict(options),
              'scene': asdict(scene.config), 'frame_period_ns': FRAME_PERIOD_NS,
              'image_topics': {c: image_topic(c, options.compressed) for c in NUSCENES_CAMERAS}},
    )
    sidecar = write_ground_truth(out, truth)
    write_bag_calibration(out)  # calibration.json: /tf_static and CameraInfo, for tf-less readers
    return SynthResult(Path(out), sidecar, options.frames, dropped_total, counts)
