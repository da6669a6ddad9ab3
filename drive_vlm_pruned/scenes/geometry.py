"""
Rigid transforms, quaternions and near-plane clipping for the scene renderer (numpy only).

Frames follow ROS REP-103/nuScenes: the ego frame has x forward, y left, z up with its origin on
the ground; camera (optical) frames have x right, y down, z along the optical axis. Quaternions
are (w, x, y, z), as in nuScenes' tables.
"""

from __future__ import annotations

import math

import numpy as np

NEAR_M = 0.1  # near clipping plane: points closer than this to the camera are not projected


def yaw_matrix(yaw: float) -> np.ndarray:
    """Return the 3 x 3 rotation about z by ``yaw`` radians (counter-clockwise seen from above)."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def quaternion_from_matrix(rotation: np.ndarray) -> tuple[float, float, float, float]:
    """Return the unit quaternion (w, x, y, z) of a 3 x 3 rotation matrix, with w >= 0."""
    m = np.asarray(rotation, dtype=float)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = (0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s)
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = ((m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s)
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = ((m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s)
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = ((m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s)
    norm = math.sqrt(sum(c * c for c in q))
    sign = -1.0 if q[0] < 0 else 1.0
    w, x, y, z = (sign * c / norm for c in q)
    return (w, x, y, z)


def quaternion_to_matrix(quaternion) -> np.ndarray:
    """Return the 3 x 3 rotation of a quaternion (w, x, y, z); it need not be normalised."""
    w, x, y, z = (float(c) for c in quaternion)
    n = w * w + x * x + y * y + z * z
    if n == 0.0:
        raise ValueError('quaternion (0, 0, 0, 0) is not a rotation: give (w, x, y, z) != 0')
    s = 2.0 / n
    return np.array([
        [1 - s * (y * y + z * z), s * (x * y - w * z), s * (x * z + w * y)],
        [s * (x * y + w * z), 1 - s * (x * x + z * z), s * (y * z - w * x)],
        [s * (x * z - w * y), s * (y * z + w * x), 1 - s * (x * x + y * y)],
    ])


def yaw_of_quaternion(quaternion) -> float:
    """Return the heading (rotation about z, radians) of a quaternion (w, x, y, z)."""
    w, x, y, z = (float(c) for c in quaternion)
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def wrap_angle(angle):
    """Wrap radians into [-pi, pi) (scalars or arrays)."""
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi


CORNER_SIGNS = np.array([[(i & 1) * 2 - 1, (i >> 1 & 1) * 2 - 1, (i >> 2 & 1) * 2 - 1]
                         for i in range(8)], dtype=float)


def box_corners(center, size, yaw: float) -> np.ndarray:
    """
    Return the 8 corners (8 x 3) of a box with ``size`` (length, width, height) about ``center``.

    Length runs along the box's heading ``yaw`` (about z). Corner ``i`` has bit 0 = front,
    bit 1 = left, bit 2 = top, so faces are easy to index (see BOX_FACES).
    """
    local = CORNER_SIGNS * (np.asarray(size, dtype=float) / 2.0)
    if yaw != 0.0:
        local = local @ yaw_matrix(yaw).T
    return local + np.asarray(center, dtype=float)


# Faces of box_corners as corner indices, counter-clockwise seen from outside, with the outward
# normal in the box's own frame.
BOX_FACES: tuple[tuple[tuple[int, int, int, int], tuple[float, float, float]], ...] = (
    ((1, 3, 7, 5), (1.0, 0.0, 0.0)),    # front
    ((0, 4, 6, 2), (-1.0, 0.0, 0.0)),   # back
    ((2, 6, 7, 3), (0.0, 1.0, 0.0)),    # left
    ((0, 1, 5, 4), (0.0, -1.0, 0.0)),   # right
    ((4, 5, 7, 6), (0.0, 0.0, 1.0)),    # top
    ((0, 2, 3, 1), (0.0, 0.0, -1.0)),   # bottom
)

BOX_EDGES: tuple[tuple[int, int], ...] = tuple(
    (a, a | bit) for bit in (1, 2, 4) for a in range(8) if not a & bit
)


def clip_polygon_near(points: np.ndarray, near: float = NEAR_M) -> np.ndarray:
    """
    Clip a convex polygon (N x 3, camera frame) to the half-space z >= ``near``.

    Sutherland-Hodgman against one plane: vertices behind the camera are replaced by the
    points where the edges cross the near plane, so nothing behind the camera is projected
    (a perspective divide by z <= 0 would mirror it into the image).
    """
    out = []
    n = len(points)
    for i in range(n):
        a, b = points[i], points[(i + 1) % n]
        a_in, b_in = a[2] >= near, b[2] >= near
        if a_in:
            out.append(a)
        if a_in != b_in:
            t = (near - a[2]) / (b[2] - a[2])
            out.append(a + t * (b - a))
    return np.array(out).reshape(-1, 3)


def clip_segments_near(a: np.ndarray, b: np.ndarray, near: float = NEAR_M) -> np.ndarray:
    """
    Return the end points (K x 3) of segments ``a[i]-b[i]`` (camera frame) that lie at z >= near.

    Segments wholly behind the near plane contribute nothing; crossing ones are cut at it.
    """
    a_in, b_in = a[:, 2] >= near, b[:, 2] >= near
    pieces = [a[a_in], b[b_in]]
    cross = a_in != b_in
    if cross.any():
        ac, bc = a[cross], b[cross]
        t = (near - ac[:, 2]) / (bc[:, 2] - ac[:, 2])
        pieces.append(ac + t[:, None] * (bc - ac))
    return np.concatenate(pieces, axis=0)
