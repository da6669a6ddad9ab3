"""
Six-view frame sets with ground truth: images, masks, objects, ego pose, future trajectory.

The GT future trajectory follows the nuScenes planning rule (shared docs/models.md, Scoring): the
ego positions 0.5, 1.0, ... 3.0 s after the set's reference time (its CAM_FRONT exposure), in the
ego frame at that time (x forward, y left). The generator knows the motion in closed form, so
every step is valid; nuScenes masks steps past a scene's end instead. Future agent boxes, for
the collision metric, are those of agents within ``FUTURE_RADIUS_M`` at the reference time,
moved along their own constant-speed paths, in the same reference ego frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
import math

import numpy as np

from .render import render_view, ViewRender
from .rig import Camera, NUSCENES_CAPTURE_OFFSETS_S, REFERENCE_CAMERA
from .world import EgoPose, Scene
from ..cameras import CAMERA_RATE_HZ

FUTURE_STEPS = 6
FUTURE_DT_S = 0.5
FUTURE_RADIUS_M = 50.0


@dataclass(frozen=True)
class FutureObject:
    """
    An agent's box at each future step: ``boxes[k]`` = (x, y, yaw) at step k + 1.

    Coordinates are in the ego frame at the reference time; ``size`` is (length, width, height).
    """

    track_id: int
    label: str
    size: tuple[float, float, float]
    boxes: tuple[tuple[float, float, float], ...]


@dataclass(frozen=True)
class FrameSet:
    """
    One capture of all cameras: a view per camera (each at its own exposure time) and the GT.

    ``time_s`` is the reference (CAM_FRONT) exposure time; ``ego_pose`` the ego pose then.
    ``future_trajectory`` is FUTURE_STEPS x 2 (x forward, y left; metres).
    """

    index: int
    time_s: float
    views: tuple[ViewRender, ...]
    ego_pose: EgoPose
    future_trajectory: np.ndarray
    future_objects: tuple[FutureObject, ...]

    def view(self, camera: str) -> ViewRender:
        for v in self.views:
            if v.camera == camera:
                return v
        raise KeyError(f'no view {camera!r}; views: {", ".join(v.camera for v in self.views)}')


def future_trajectory(scene: Scene, time_s: float, steps: int = FUTURE_STEPS,
                      dt_s: float = FUTURE_DT_S) -> np.ndarray:
    """Return the ego's positions at ``time_s + k * dt_s`` (k = 1..steps) in its frame then."""
    now = scene.ego_pose(time_s)
    future = [scene.ego_pose(time_s + k * dt_s) for k in range(1, steps + 1)]
    return now.to_ego(np.array([[p.x, p.y] for p in future]))


def future_objects(scene: Scene, time_s: float, steps: int = FUTURE_STEPS,
                   dt_s: float = FUTURE_DT_S, radius_m: float = FUTURE_RADIUS_M
                   ) -> tuple[FutureObject, ...]:
    """Return the boxes of agents near the ego at ``time_s`` over the next ``steps`` steps."""
    now = scene.ego_pose(time_s)
    arrays = scene.agent_arrays(time_s)
    if len(arrays['x']) == 0:
        return ()
    near = np.hypot(arrays['x'] - now.x, arrays['y'] - now.y) <= radius_m
    idx = np.nonzero(near)[0]
    later = [scene.agent_arrays(time_s + k * dt_s) for k in range(1, steps + 1)]
    out = []
    for i in idx:
        boxes = []
        for arr in later:
            x, y, _ = now.to_ego(np.array([[arr['x'][i], arr['y'][i], 0.0]]))[0]
            yaw = float(arr['yaw'][i]) - now.yaw
            boxes.append((float(x), float(y), math.atan2(math.sin(yaw), math.cos(yaw))))
        agent = scene.agents[i]
        out.append(FutureObject(agent.track_id, agent.label, agent.size, tuple(boxes)))
    return tuple(out)


def nominal_capture_times(index: int, rate_hz: float = CAMERA_RATE_HZ,
                          offsets_s: Mapping[str, float] = NUSCENES_CAPTURE_OFFSETS_S
                          ) -> dict[str, float]:
    """Return each camera's exposure time of frame set ``index`` (nuScenes firing order)."""
    start = index / rate_hz
    return {name: start + off for name, off in offsets_s.items()}


def render_frame_set(scene: Scene, rig: Sequence[Camera], index: int,
                     capture_times_s: Mapping[str, float] | None = None) -> FrameSet:
    """
    Render every camera of ``rig`` at its exposure time and compute the set's GT.

    ``capture_times_s`` maps camera names to scene times (default: nominal_capture_times);
    the reference time is CAM_FRONT's (or the first camera's if the rig has no CAM_FRONT).
    """
    times = dict(capture_times_s or nominal_capture_times(index))
    missing = [cam.name for cam in rig if cam.name not in times]
    if missing:
        raise ValueError(f'no capture time for {", ".join(missing)}: give one per rig camera')
    ref_name = REFERENCE_CAMERA if REFERENCE_CAMERA in times else rig[0].name
    ref = times[ref_name]
    views = tuple(render_view(scene, cam, times[cam.name]) for cam in rig)
    return FrameSet(index, ref, views, scene.ego_pose(ref), future_trajectory(scene, ref),
                    future_objects(scene, ref))
