"""
The six-camera rig in nuScenes layout: pinhole intrinsics, mounting extrinsics, capture timing.

Mounting positions, yaw angles and fields of view approximate nuScenes' calibration of its
Renault Zoe (1600 x 900 images): the front, side and back-side cameras have about 64-65 degrees
of horizontal field of view, the back camera about 89 degrees (focal 809 px vs ~1266 px). The
cameras fire in turn as the top lidar sweeps past them, so one set's six exposures spread over
~43 ms in the order CAM_FRONT_LEFT, CAM_FRONT, CAM_FRONT_RIGHT, CAM_BACK_RIGHT, CAM_BACK,
CAM_BACK_LEFT (scene-0061's first sample: -7.6, 0, +7.9, +15.4, +25.1, +35.0 ms around
CAM_FRONT).
"""

from __future__ import annotations

from dataclasses import dataclass
import math

import numpy as np

from .geometry import NEAR_M, quaternion_from_matrix
from ..cameras import NUSCENES_CAMERAS


@dataclass(frozen=True)
class CameraIntrinsics:
    """A distortion-free pinhole camera: focal lengths and principal point in pixels."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    @classmethod
    def from_hfov(cls, hfov_deg: float, width: int, height: int) -> CameraIntrinsics:
        """Build square-pixel intrinsics with the principal point at the image centre."""
        if not 1.0 <= hfov_deg < 179.0:
            raise ValueError(f'horizontal field of view {hfov_deg} deg: use 1 to 179 degrees')
        if width < 8 or height < 8:
            raise ValueError(f'image size {width} x {height}: use at least 8 x 8 pixels')
        f = width / 2.0 / math.tan(math.radians(hfov_deg) / 2.0)
        return cls(width, height, f, f, width / 2.0, height / 2.0)

    @property
    def hfov_deg(self) -> float:
        return math.degrees(2.0 * math.atan(self.width / 2.0 / self.fx))

    def matrix(self) -> np.ndarray:
        """Return the 3 x 3 intrinsic matrix K, as sensor_msgs/CameraInfo.k holds it."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class CameraExtrinsics:
    """
    Where a camera sits on the car: optical centre and viewing direction in the ego frame.

    ``yaw_deg`` turns the optical axis counter-clockwise from the ego x axis (left is positive),
    ``pitch_deg`` tilts it down.
    """

    translation: tuple[float, float, float]
    yaw_deg: float
    pitch_deg: float = 0.0

    def rotation(self) -> np.ndarray:
        """Return R with ``p_ego = R @ p_cam + t``; columns are the camera's x, y, z in ego."""
        yaw, pitch = math.radians(self.yaw_deg), math.radians(self.pitch_deg)
        forward = np.array([math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch),
                            -math.sin(pitch)])
        right = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
        down = np.cross(forward, right)
        return np.stack([right, down, forward], axis=1)

    def quaternion(self) -> tuple[float, float, float, float]:
        """Return the rotation as (w, x, y, z), like nuScenes' calibrated_sensor.rotation."""
        return quaternion_from_matrix(self.rotation())


@dataclass(frozen=True)
class Camera:
    """One named camera of the rig."""

    name: str
    intrinsics: CameraIntrinsics
    extrinsics: CameraExtrinsics

    @property
    def frame_id(self) -> str:
        """Return the TF frame of the camera's optical frame (``cam_front``)."""
        return self.name.lower()

    def ego_to_camera(self, points: np.ndarray) -> np.ndarray:
        """Transform N x 3 ego-frame points into the camera's optical frame."""
        rot = self.extrinsics.rotation()
        return (np.asarray(points, dtype=float) - np.asarray(self.extrinsics.translation)) @ rot

    def project(self, points_cam: np.ndarray) -> np.ndarray:
        """
        Project N x 3 optical-frame points to N x 2 pixel coordinates (u right, v down).

        Pixel (row i, column j) covers [j, j + 1) x [i, i + 1); its centre is (j + .5, i + .5).
        Points must lie in front of the near plane: clip them first (geometry.clip_*).
        """
        p = np.asarray(points_cam, dtype=float)
        if p.size and p[:, 2].min() < NEAR_M * 0.999:
            raise ValueError('point behind the near plane: clip with geometry.clip_* first')
        k = self.intrinsics
        return np.stack([k.fx * p[:, 0] / p[:, 2] + k.cx, k.fy * p[:, 1] / p[:, 2] + k.cy], axis=1)


# name: (translation in the ego frame [m], yaw [deg], horizontal field of view [deg])
NUSCENES_MOUNTS: dict[str, tuple[tuple[float, float, float], float, float]] = {
    'CAM_FRONT': ((1.70, 0.02, 1.51), 0.0, 64.6),
    'CAM_FRONT_LEFT': ((1.52, 0.49, 1.51), 55.0, 64.3),
    'CAM_FRONT_RIGHT': ((1.55, -0.49, 1.50), -55.0, 64.8),
    'CAM_BACK': ((0.03, 0.00, 1.58), 180.0, 89.4),
    'CAM_BACK_LEFT': ((1.04, 0.48, 1.59), 110.0, 65.0),
    'CAM_BACK_RIGHT': ((1.01, -0.48, 1.56), -110.0, 64.8),
}

# Exposure time of each camera after the first one of a set (CAM_FRONT_LEFT), in seconds.
NUSCENES_CAPTURE_OFFSETS_S: dict[str, float] = {
    'CAM_FRONT_LEFT': 0.0,
    'CAM_FRONT': 0.0076,
    'CAM_FRONT_RIGHT': 0.0155,
    'CAM_BACK_RIGHT': 0.0230,
    'CAM_BACK': 0.0327,
    'CAM_BACK_LEFT': 0.0426,
}

REFERENCE_CAMERA = 'CAM_FRONT'  # a set's stamp is its CAM_FRONT stamp, as nuScenes samples


def nuscenes_rig(width: int = 400, height: int = 225) -> tuple[Camera, ...]:
    """Return the six cameras in NUSCENES_CAMERAS order, rendering ``width`` x ``height``."""
    rig = []
    for name in NUSCENES_CAMERAS:
        translation, yaw_deg, hfov_deg = NUSCENES_MOUNTS[name]
        rig.append(Camera(name, CameraIntrinsics.from_hfov(hfov_deg, width, height),
                          CameraExtrinsics(translation, yaw_deg)))
    return tuple(rig)
