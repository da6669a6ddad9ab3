"""
Procedural six-camera driving scenes with ground truth (numpy only).

A :class:`SceneConfig` (seeded) gives a :class:`Scene`: a straight or curving road with lanes,
the ego car driving along it, and vehicles, pedestrians, signs and barriers around it. Rendering
a frame set gives, per camera of the nuScenes-layout rig, an RGB image, a foreground-class mask
(:class:`Label`) and the objects in view with 2-D boxes, plus the ego pose and the GT future
trajectory (6 waypoints at 0.5 s in the ego frame)::

    scene = make_scene(SceneConfig(seed=3, curvature=0.01, duration_s=5.0))
    frames = render_frame_set(scene, nuscenes_rig(400, 225), index=0)
    frames.view('CAM_FRONT').image, frames.future_trajectory
"""

from .frames import (
    FrameSet,
    future_objects,
    future_trajectory,
    FutureObject,
    nominal_capture_times,
    render_frame_set,
)
from .render import render_view, ViewObject, ViewRender
from .rig import (
    Camera,
    CameraExtrinsics,
    CameraIntrinsics,
    NUSCENES_CAPTURE_OFFSETS_S,
    nuscenes_rig,
    REFERENCE_CAMERA,
)
from .world import (
    Agent,
    EgoPose,
    Label,
    make_scene,
    Object3D,
    OBJECT_LABELS,
    Road,
    Scene,
    SceneConfig,
)

__all__ = [
    'Agent', 'Camera', 'CameraExtrinsics', 'CameraIntrinsics', 'EgoPose', 'FrameSet',
    'FutureObject', 'Label', 'NUSCENES_CAPTURE_OFFSETS_S', 'OBJECT_LABELS', 'Object3D',
    'REFERENCE_CAMERA', 'Road', 'Scene', 'SceneConfig', 'ViewObject', 'ViewRender',
    'future_objects', 'future_trajectory', 'make_scene', 'nominal_capture_times',
    'nuscenes_rig', 'render_frame_set', 'render_view',
]
