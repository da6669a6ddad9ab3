"""Pipeline results as ROS messages, every one stamped with the INPUT set's stamp."""

from __future__ import annotations

from collections.abc import Sequence
import json
import math

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Path
import numpy as np
from sensor_msgs.msg import Image
from std_msgs.msg import Header, String

from ..frames.stamps import stamp_fields
from ..pipeline.pipeline import Result


def stamp_msg(stamp_ns: int) -> Time:
    return Time(**stamp_fields(stamp_ns))


def result_json(result: Result, latency_ms: float, camera_stamps_ns: Sequence[int | None]) -> str:
    """Return the ~/result payload: Result.summary() plus stamps and end-to-end latency."""
    out = result.summary()
    out['stamp'] = stamp_fields(result.stamp_ns)
    out['camera_stamps_ns'] = list(camera_stamps_ns)
    out['latency_ms'] = latency_ms
    return json.dumps(out)


def trajectory_path(result: Result, frame_id: str) -> Path:
    """
    Return the planned waypoints as a Path in the ego frame (x forward, y left).

    Each pose faces along the path (yaw from the previous waypoint, the first from the ego
    origin). No parsed trajectory gives an empty Path with the same stamp, so a consumer
    still sees one Path per answered frame; ~/result says why it is empty.
    """
    header = Header(stamp=stamp_msg(result.stamp_ns), frame_id=frame_id)
    path = Path(header=header)
    if not result.trajectory.ok:
        return path
    prev = (0.0, 0.0)
    for x, y in result.trajectory.points:
        pose = PoseStamped(header=header)
        pose.pose.position.x, pose.pose.position.y = float(x), float(y)
        yaw = math.atan2(y - prev[1], x - prev[0]) if (x, y) != prev else 0.0
        pose.pose.orientation.z, pose.pose.orientation.w = math.sin(yaw / 2), math.cos(yaw / 2)
        path.poses.append(pose)
        prev = (x, y)
    return path


def string_msg(text: str) -> String:
    return String(data=text)


def rgb_image(rgb: np.ndarray, stamp_ns: int, frame_id: str) -> Image:
    h, w = rgb.shape[:2]
    return Image(header=Header(stamp=stamp_msg(stamp_ns), frame_id=frame_id), height=h, width=w,
                 encoding='rgb8', is_bigendian=0, step=3 * w,
                 data=np.ascontiguousarray(rgb).tobytes())


def diagnostic_status(name: str, level: bytes, message: str, values: dict) -> DiagnosticStatus:
    return DiagnosticStatus(
        level=level, name=name, message=message, hardware_id='drive_vlm',
        values=[KeyValue(key=k, value=str(v)) for k, v in values.items()],
    )
