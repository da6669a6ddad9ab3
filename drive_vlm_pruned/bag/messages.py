"""
Build ROS 2 messages with rosbags' typestore and write them into a rosbag2 (mcap or sqlite3).

``make`` fills every field a caller leaves out with its ROS default (0, '', empty sequence,
zeroed fixed array, nested defaults), so builders only name what they mean. No rclpy needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
import math
from pathlib import Path

import numpy as np

from .topics import (
    BASE_FRAME,
    camera_frame,
    CAMERA_INFO_TYPE,
    MAP_FRAME,
    ODOM_TYPE,
    PATH_TYPE,
    TF_STATIC_TOPIC,
    TF_TYPE,
    typestore,
)
from ..frames.stamps import stamp_fields

STORAGES = ('mcap', 'sqlite3')

_NUMPY = {
    'bool': np.bool_, 'byte': np.uint8, 'octet': np.uint8, 'char': np.uint8, 'uint8': np.uint8,
    'int8': np.int8, 'uint16': np.uint16, 'int16': np.int16, 'uint32': np.uint32,
    'int32': np.int32, 'uint64': np.uint64, 'int64': np.int64, 'float32': np.float32,
    'float64': np.float64,
}
_BASE, _NAME, _ARRAY, _SEQUENCE = 1, 2, 3, 4  # rosbags.typesys Nodetype values


def _default(ts, node) -> object:
    kind, spec = node
    kind = int(kind)
    if kind == _BASE:
        name = spec[0]
        if name == 'string' or name == 'wstring':
            return ''
        if name == 'bool':
            return False
        return 0.0 if name.startswith('float') else 0
    if kind == _NAME:
        return make(ts, spec)
    inner, length = spec
    inner_kind, inner_spec = int(inner[0]), inner[1]
    if inner_kind == _BASE and inner_spec[0] in _NUMPY:
        return np.zeros(length if kind == _ARRAY else 0, dtype=_NUMPY[inner_spec[0]])
    count = length if kind == _ARRAY else 0
    return [_default(ts, inner) for _ in range(count)]


def make(ts, typename: str, **fields):
    """Return a ``typename`` message of typestore ``ts``; unnamed fields get ROS defaults."""
    _, members = ts.fielddefs[typename]
    names = {name for name, _ in members}
    unknown = set(fields) - names
    if unknown:
        raise TypeError(f'{typename} has no field(s) {sorted(unknown)}; it has {sorted(names)}')
    values = {name: fields[name] if name in fields else _default(ts, node)
              for name, node in members}
    return ts.types[typename](**values)


def stamp(ts, stamp_ns: int):
    return make(ts, 'builtin_interfaces/msg/Time', **stamp_fields(stamp_ns))


def header(ts, stamp_ns: int, frame_id: str):
    return make(ts, 'std_msgs/msg/Header', stamp=stamp(ts, stamp_ns), frame_id=frame_id)


def quaternion_msg(ts, wxyz: Sequence[float]):
    w, x, y, z = (float(c) for c in wxyz)
    return make(ts, 'geometry_msgs/msg/Quaternion', x=x, y=y, z=z, w=w)


def yaw_quaternion(yaw: float) -> tuple[float, float, float, float]:
    return (math.cos(yaw / 2.0), 0.0, 0.0, math.sin(yaw / 2.0))


def pose_msg(ts, xyz: Sequence[float], wxyz: Sequence[float]):
    x, y, z = (float(c) for c in xyz)
    return make(ts, 'geometry_msgs/msg/Pose',
                position=make(ts, 'geometry_msgs/msg/Point', x=x, y=y, z=z),
                orientation=quaternion_msg(ts, wxyz))


def transform_msg(ts, stamp_ns: int, parent: str, child: str, xyz: Sequence[float],
                  wxyz: Sequence[float]):
    x, y, z = (float(c) for c in xyz)
    return make(ts, 'geometry_msgs/msg/TransformStamped', header=header(ts, stamp_ns, parent),
                child_frame_id=child,
                transform=make(ts, 'geometry_msgs/msg/Transform',
                               translation=make(ts, 'geometry_msgs/msg/Vector3', x=x, y=y, z=z),
                               rotation=quaternion_msg(ts, wxyz)))


def camera_info_msg(ts, stamp_ns: int, camera: str, width: int, height: int,
                    k: np.ndarray):
    """Return a distortion-free CameraInfo (plumb_bob, D = 0; P = [K | 0], R = I)."""
    k = np.asarray(k, dtype=np.float64).reshape(3, 3)
    p = np.zeros((3, 4))
    p[:, :3] = k
    return make(ts, CAMERA_INFO_TYPE, header=header(ts, stamp_ns, camera_frame(camera)),
                height=int(height), width=int(width), distortion_model='plumb_bob',
                d=np.zeros(5), k=k.reshape(-1), r=np.eye(3).reshape(-1), p=p.reshape(-1))


def odometry_msg(ts, stamp_ns: int, xyz: Sequence[float], wxyz: Sequence[float],
                 velocity_xy: Sequence[float] = (0.0, 0.0), yaw_rate: float = 0.0):
    """Return map -> base_link odometry; the twist is in base_link, as REP-105 says."""
    twist = make(ts, 'geometry_msgs/msg/Twist',
                 linear=make(ts, 'geometry_msgs/msg/Vector3', x=float(velocity_xy[0]),
                             y=float(velocity_xy[1])),
                 angular=make(ts, 'geometry_msgs/msg/Vector3', z=float(yaw_rate)))
    return make(ts, ODOM_TYPE, header=header(ts, stamp_ns, MAP_FRAME),
                child_frame_id=BASE_FRAME,
                pose=make(ts, 'geometry_msgs/msg/PoseWithCovariance',
                          pose=pose_msg(ts, xyz, wxyz)),
                twist=make(ts, 'geometry_msgs/msg/TwistWithCovariance', twist=twist))


def tf_msg(ts, transforms: Sequence) -> object:
    return make(ts, TF_TYPE, transforms=list(transforms))


def path_msg(ts, stamp_ns: int, points_xy: Sequence[Sequence[float]],
             pose_stamps_ns: Sequence[int]) -> object:
    """Return a base_link Path of waypoints; each pose faces from the previous waypoint."""
    poses = []
    prev = (0.0, 0.0)
    for (x, y), pose_stamp in zip(points_xy, pose_stamps_ns, strict=True):
        x, y = float(x), float(y)
        yaw = math.atan2(y - prev[1], x - prev[0]) if (x, y) != prev else 0.0
        poses.append(make(ts, 'geometry_msgs/msg/PoseStamped',
                          header=header(ts, int(pose_stamp), BASE_FRAME),
                          pose=pose_msg(ts, (x, y, 0.0), yaw_quaternion(yaw))))
        prev = (x, y)
    return make(ts, PATH_TYPE, header=header(ts, stamp_ns, BASE_FRAME), poses=poses)


def _qos_latched():
    from rosbags.interfaces import (
        Qos,
        QosDurability,
        QosHistory,
        QosLiveliness,
        QosReliability,
        QosTime,
    )

    zero = QosTime(0, 0)
    return Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL,
               zero, zero, QosLiveliness.AUTOMATIC, zero, False)


@dataclass
class BagOut:
    """
    A rosbag2 being written: one connection per topic, messages counted per topic.

    mcap bags get zstd-compressed chunks (``compress``), which rosbags and ``ros2 bag`` read
    natively; sqlite3 bags are written uncompressed. /tf_static is offered latched (transient
    local), so ``ros2 bag play`` replays it to late subscribers too.
    """

    path: Path
    storage: str = 'mcap'
    compress: bool = True
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer

        if self.storage not in STORAGES:
            raise ValueError(f'storage {self.storage!r}: use one of {", ".join(STORAGES)}')
        self.path = Path(self.path)
        if self.path.exists():
            raise FileExistsError(f'{self.path} exists: a bag is written to a new path; '
                                  'choose another or delete it')
        self.ts = typestore()
        plugin = StoragePlugin.MCAP if self.storage == 'mcap' else StoragePlugin.SQLITE3
        self._writer = Writer(self.path, version=9, storage_plugin=plugin)
        if self.compress and self.storage == 'mcap':
            self._writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        self._connections: dict[str, object] = {}
        self._writer.open()

    def write(self, topic: str, msgtype: str, stamp_ns: int, msg) -> None:
        conn = self._connections.get(topic)
        if conn is None:
            qos = [_qos_latched()] if topic == TF_STATIC_TOPIC else []
            conn = self._writer.add_connection(topic, msgtype, typestore=self.ts,
                                               offered_qos_profiles=qos)
            self._connections[topic] = conn
        self._writer.write(conn, int(stamp_ns), self.ts.serialize_cdr(msg, msgtype))
        self.counts[topic] = self.counts.get(topic, 0) + 1

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> BagOut:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def static_camera_tf(ts, stamp_ns: int,
                     cameras: Sequence[tuple[str, Sequence[float], Sequence[float]]]):
    """Return one /tf_static message: base_link -> each camera's optical frame."""
    return tf_msg(ts, [transform_msg(ts, stamp_ns, BASE_FRAME, camera_frame(name), xyz, wxyz)
                       for name, xyz, wxyz in cameras])
