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

# nuScenes' cameras run at 12 Hz; synthetic bags, the node's ground-truth matching and the
# benchmarks' publishers all use this one period.
CAMERA_RATE_HZ = 12.0
FRAME_PERIOD_NS = 83_333_333
HALF_FRAME_NS = FRAME_PERIOD_NS // 2  # a stamp matches a set within half a period


def camera_topic(name: str, compressed: bool = False) -> str:
    """
    Return the default topic of camera ``name``: ``/cam_front/image_raw`` (+ ``/compressed``).

    The ``/compressed`` suffix follows image_transport, so bags we write replay into stock
    subscribers too.
    """
    base = f'/{name.lower()}/image_raw'
    return base + '/compressed' if compressed else base


def camera_topics(compressed: bool = False) -> tuple[str, ...]:
    """Return the six default camera topics, in nuScenes order."""
    return tuple(camera_topic(name, compressed) for name in NUSCENES_CAMERAS)


def namespaced(topic: str, namespace: str = '') -> str:
    """
    Return ``topic`` under ``namespace``: '/car1' (or 'car1', 'car1/') gives /car1/cam_front/...

    No namespace leaves the topic as given. The node's ``camera_namespace`` parameter and
    ``drive-vlm run --camera-namespace`` both read their topics through this.
    """
    prefix = namespace.strip('/')
    return f'/{prefix}/{topic.lstrip("/")}' if prefix else topic
