"""
Camera calibration of the rig, and the projection of ego-frame ground points into a camera.

A pinhole camera with no distortion, as sensor_msgs/CameraInfo's ``k`` and a base_link ->
optical-frame transform give it (the bags' /tf_static; nuScenes' calibrated_sensor):

    p_cam = R^T (p_base - t),   (u, v) = (fx x / z + cx, fy y / z + cy)

with ``p_base = R p_cam + t`` (R's columns are the optical x right, y down, z forward axes in
base_link). base_link lies on the ground (nuScenes' ego frame; the synthetic rig's), so a
trajectory waypoint (x, y) is the ground point (x, y, 0).

The sidecar ``<bag>/calibration.json`` holds the same numbers for readers without tf2_msgs
(the node with PyPI's ROS wheels)::

    {"schema": "drive_vlm_pruned/calibration", "version": 1, "frame": "base_link",
     "cameras": {"CAM_FRONT": {"width": 400, "height": 225, "k": [9 floats, row-major],
                               "translation": [x, y, z], "rotation_wxyz": [w, x, y, z]}, ...}}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
import json
from pathlib import Path

import numpy as np

from ..scenes.geometry import quaternion_from_matrix, quaternion_to_matrix

SCHEMA = 'drive_vlm_pruned/calibration'
SCHEMA_VERSION = 1
SIDECAR_NAME = 'calibration.json'
NEAR_M = 0.5  # points closer to the image plane than this are cut before projecting


@dataclass(frozen=True)
class CameraCalibration:
    """One camera: image size, intrinsic matrix K, and its pose in base_link (R, t)."""

    width: int
    height: int
    k: np.ndarray  # 3 x 3
    rotation: np.ndarray  # 3 x 3, p_base = rotation @ p_cam + translation
    translation: np.ndarray  # 3

    @classmethod
    def from_fields(cls, width: int, height: int, k: Sequence[float],
                    translation: Sequence[float], rotation_wxyz: Sequence[float]
                    ) -> CameraCalibration:
        """Build from CameraInfo-style fields (``k`` row-major) and a TF-style pose."""
        k = np.asarray(k, dtype=float).reshape(3, 3)
        if k[0, 0] <= 0 or k[1, 1] <= 0:
            raise ValueError(f'camera matrix K has focal lengths {k[0, 0]}, {k[1, 1]}: a '
                             'calibrated camera has positive fx and fy (is CameraInfo.k set?)')
        return cls(int(width), int(height), k, quaternion_to_matrix(rotation_wxyz),
                   np.asarray(translation, dtype=float).reshape(3))

    def to_camera(self, points_base: np.ndarray) -> np.ndarray:
        """Return N x 3 base_link points in the optical frame."""
        return (np.asarray(points_base, dtype=float) - self.translation) @ self.rotation

    def project(self, points_base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (N x 2 pixels, N bools: in front of the camera by at least NEAR_M)."""
        p = self.to_camera(points_base)
        front = p[:, 2] >= NEAR_M
        z = np.where(front, p[:, 2], 1.0)
        uv = (p[:, :2] / z[:, None]) @ self.k[:2, :2].T + self.k[:2, 2]
        return uv, front

    def scaled(self, width: int, height: int) -> CameraCalibration:
        """Return the calibration of the same camera's image resized to ``width`` x ``height``."""
        sx, sy = width / self.width, height / self.height
        k = self.k.copy()
        k[0] *= sx
        k[1] *= sy
        return CameraCalibration(width, height, k, self.rotation, self.translation)

    def to_json(self) -> dict:
        return {'width': self.width, 'height': self.height,
                'k': [float(v) for v in self.k.reshape(-1)],
                'translation': [float(v) for v in self.translation],
                'rotation_wxyz': [float(v) for v in quaternion_from_matrix(self.rotation)]}


def ground_polyline(camera: CameraCalibration, points_xy: Sequence[Sequence[float]],
                    start_xy: Sequence[float] | None = (0.0, 0.0), step_m: float = 0.25
                    ) -> list[np.ndarray]:
    """
    Return the pixel polylines of a ground path, cut where it leaves the camera's front.

    The path runs from ``start_xy`` (the ego origin; None: from the first point) through
    ``points_xy``, resampled every ``step_m`` so the part behind the camera is cut close to the
    near plane instead of at the next waypoint. Each polyline is K x 2 (K >= 2).
    """
    pts = [tuple(start_xy)] if start_xy is not None else []
    pts += [tuple(p) for p in points_xy]
    if len(pts) < 2:
        return []
    xy = np.asarray(pts, dtype=float)
    dense = [xy[:1]]
    for a, b in zip(xy[:-1], xy[1:]):
        n = max(1, int(np.ceil(np.linalg.norm(b - a) / step_m)))
        dense.append(a + (b - a) * (np.arange(1, n + 1) / n)[:, None])
    ground = np.concatenate(dense)
    uv, front = camera.project(np.column_stack([ground, np.zeros(len(ground))]))
    runs, current = [], []
    for point, ok in zip(uv, front):
        if ok:
            current.append(point)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [np.asarray(r) for r in runs if len(r) >= 2]


def calibration_json(cameras: Mapping[str, CameraCalibration]) -> dict:
    """Return the sidecar document of a rig (see module doc)."""
    return {'schema': SCHEMA, 'version': SCHEMA_VERSION, 'frame': 'base_link',
            'cameras': {name: cam.to_json() for name, cam in cameras.items()}}


def write_calibration(directory: str | Path, cameras: Mapping[str, CameraCalibration]) -> Path:
    """Write ``<directory>/calibration.json``; return its path."""
    path = Path(directory) / SIDECAR_NAME
    path.write_text(json.dumps(calibration_json(cameras), indent=1) + '\n')
    return path


def read_calibration(path: str | Path) -> dict[str, CameraCalibration]:
    """Read a calibration sidecar (a file, or a bag directory holding one); named errors."""
    path = Path(path)
    if path.is_dir():
        path = path / SIDECAR_NAME
    if not path.is_file():
        raise FileNotFoundError(f'no calibration at {path}: bags from `drive-vlm bag synth` and '
                                '`bag from-nuscenes` carry <bag>/calibration.json; pass that file')
    data = json.loads(path.read_text())
    if data.get('schema') != SCHEMA or data.get('version') != SCHEMA_VERSION:
        raise ValueError(f'{path} is not a {SCHEMA} version {SCHEMA_VERSION} file (schema '
                         f'{data.get("schema")!r}, version {data.get("version")!r})')
    return {name: CameraCalibration.from_fields(c['width'], c['height'], c['k'],
                                                c['translation'], c['rotation_wxyz'])
            for name, c in data['cameras'].items()}
