"""The nuScenes surround-view camera layout, the order every part of the package uses."""

from __future__ import annotations

NUSCENES_CAMERAS: tuple[str, ...] = (
    'CAM_FRONT',
    'CAM_FRONT_LEFT',
    'CAM_FRONT_RIGHT',
    'CAM_BACK',
    'CAM_BACK_LEFT',
    'CAM_BACK_RIGHT',
)
