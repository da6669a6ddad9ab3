"""
A bag's camera calibration: /tf_static (base_link -> each camera) and each camera's CameraInfo.

Every bag of ``bag synth`` and ``bag from-nuscenes`` (calibrated_sensor's extrinsics and
camera_intrinsic) carries both; rosbags reads tf2_msgs, so this works without a ROS install.
The same numbers go into the sidecar ``<bag>/calibration.json`` (frames/calibration.py) for
readers that cannot decode tf2_msgs, such as the node on PyPI's ROS wheels.
"""

from __future__ import annotations

from pathlib import Path

from .reading import BagReader
from .topics import camera_info_topic, TF_STATIC_TOPIC
from ..cameras import NUSCENES_CAMERAS
from ..frames.calibration import (
    CameraCalibration,
    read_calibration,
    SIDECAR_NAME,
    write_calibration,
)


def first_camera_infos(bag: str | Path) -> dict[str, object]:
    """Return each camera's first CameraInfo message (rosbags objects), and /tf_static's."""
    wanted = {camera_info_topic(c): c for c in NUSCENES_CAMERAS}
    found: dict[str, object] = {}
    for m in BagReader(bag, [*wanted, TF_STATIC_TOPIC]).messages():
        key = wanted.get(m.topic, TF_STATIC_TOPIC)
        found.setdefault(key, m.msg)
        if len(found) == len(wanted) + 1:
            break
    return found


def scan_calibration(bag: str | Path) -> dict[str, CameraCalibration]:
    """Return the calibration of every camera with both a CameraInfo and a /tf_static entry."""
    found = first_camera_infos(bag)
    tf = found.get(TF_STATIC_TOPIC)
    poses = {}
    for t in (tf.transforms if tf is not None else []):
        tr, q = t.transform.translation, t.transform.rotation
        poses[t.child_frame_id] = ((tr.x, tr.y, tr.z), (q.w, q.x, q.y, q.z))
    out = {}
    for camera in NUSCENES_CAMERAS:
        info, pose = found.get(camera), poses.get(camera.lower())
        if info is None or pose is None:
            continue
        out[camera] = CameraCalibration.from_fields(info.width, info.height, list(info.k),
                                                    *pose)
    return out


def bag_calibration(bag: str | Path) -> dict[str, CameraCalibration]:
    """Return the bag's calibration: its sidecar if it has one, else scanned from its topics."""
    if (Path(bag) / SIDECAR_NAME).is_file():
        return read_calibration(bag)
    return scan_calibration(bag)


def write_bag_calibration(bag: str | Path) -> Path | None:
    """Write ``<bag>/calibration.json`` from the bag's own topics; None if it has none."""
    cameras = scan_calibration(bag)
    return write_calibration(bag, cameras) if cameras else None
