"""
Render one camera's view of a scene: RGB image, foreground-class mask and per-object 2-D boxes.

The ground is ray-cast per pixel (vectorised): every pixel's ray through its centre meets the
ground plane z = 0 of the ego frame, and the hit point's Frenet coordinates on the road decide
asphalt, lane paint, sidewalk or grass; rays that point up see the sky. Agents are boxes drawn
face by face: back faces are culled, the rest clipped to the near plane (so nothing behind the
camera mirrors into the image), projected with the pinhole model, filled where a pixel centre
lies inside the projected polygon, and depth-tested per pixel against a z-buffer (the depth of
the face's plane along the pixel's ray), so occlusion is exact for non-intersecting boxes.
An object's 2-D box is its whole 3-D bounding box projected (after near-plane clipping) and
clipped to the image, like nuScenes' 2-D boxes; ``visible_px`` counts its unoccluded pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
import math

import numpy as np

from .geometry import (
    box_corners,
    BOX_EDGES,
    BOX_FACES,
    clip_polygon_near,
    clip_segments_near,
    NEAR_M,
    yaw_matrix,
)
from .rig import Camera
from .world import EgoPose, Label, LABEL_OF, Object3D, Scene

MAX_RANGE_M = 120.0     # agents further than this from the ego car are not drawn
FOG_M = 220.0           # haze: colours fade to the horizon colour as 1 - exp(-distance / FOG_M)
SKY_TOP = np.array([70.0, 125.0, 205.0])
HAZE = np.array([200.0, 212.0, 225.0])
ASPHALT = np.array([82.0, 82.0, 88.0])
PAINT = np.array([232.0, 232.0, 222.0])
DIVIDER = np.array([225.0, 185.0, 45.0])
SIDEWALK = np.array([168.0, 162.0, 152.0])
GRASS = np.array([78.0, 118.0, 52.0])
SUN = np.array([0.35, 0.45, 0.82]) / np.linalg.norm([0.35, 0.45, 0.82])
PAINT_HALF_WIDTH_M = 0.075
DASH_PERIOD_M, DASH_LENGTH_M = 12.0, 4.0


@dataclass(frozen=True)
class ViewObject:
    """
    An object seen by one camera.

    ``object`` is the 3-D box in the ego frame at this view's capture time; ``box`` is
    (x0, y0, x1, y1) in pixels (continuous coordinates, pixel (i, j) spans [j, j+1) x [i, i+1));
    ``visible_px`` counts mask pixels that show this object (0: fully occluded).
    """

    object3d: Object3D
    box: tuple[float, float, float, float]
    visible_px: int


@dataclass(frozen=True)
class ViewRender:
    """
    One camera's image (H x W x 3 RGB uint8), label mask (H x W uint8) and objects.

    ``object_depth`` is each pixel's optical-axis depth (m) where an object covers it, inf
    elsewhere (the renderer's z-buffer; the ground's depth follows from the camera's rays).
    """

    camera: str
    time_s: float
    ego_pose: EgoPose
    image: np.ndarray
    mask: np.ndarray
    objects: tuple[ViewObject, ...]
    object_depth: np.ndarray | None = None


@lru_cache(maxsize=64)
def camera_rays(camera: Camera) -> np.ndarray:
    """Return each pixel centre's ray direction in the ego frame (H x W x 3, unnormalised)."""
    k = camera.intrinsics
    u = (np.arange(k.width) + 0.5 - k.cx) / k.fx
    v = (np.arange(k.height) + 0.5 - k.cy) / k.fy
    rays_cam = np.stack(np.broadcast_arrays(u[None, :], v[:, None], np.ones((1, 1))), axis=-1)
    rays = rays_cam @ camera.extrinsics.rotation().T
    rays.setflags(write=False)
    return rays


# Ground surface classes, in drawing priority (a later one wins).
GRASS_ID, SIDEWALK_ID, ASPHALT_ID, PAINT_ID, DIVIDER_ID = range(5)
GROUND_COLORS = np.stack([GRASS, SIDEWALK, ASPHALT, PAINT, DIVIDER])


@dataclass(frozen=True)
class GroundGeometry:
    """
    What a camera's view of the ground and sky is, independent of the ego pose.

    The ground plane is fixed in the ego frame, so where each pixel's ray meets it, how far
    that is (haze) and the sky are computed once per camera; a frame only maps the hit points
    onto the road. ``palette[c, n]`` is surface class ``c`` seen at ground pixel ``n``, hazed.
    """

    index: np.ndarray
    x: np.ndarray
    y: np.ndarray
    palette: np.ndarray
    sky: np.ndarray


@lru_cache(maxsize=64)
def ground_geometry(camera: Camera) -> GroundGeometry:
    """Ray-cast every pixel centre of ``camera`` onto the ground plane z = 0 (ego frame)."""
    rays = camera_rays(camera).reshape(-1, 3)
    origin = np.asarray(camera.extrinsics.translation)
    norm = np.linalg.norm(rays, axis=1)
    dz = rays[:, 2]
    with np.errstate(divide='ignore'):
        t = np.where(dz < -1e-9, -origin[2] / dz, np.inf)
    distance = t * norm
    hit = distance < 2000.0
    index = np.nonzero(hit)[0]
    f = (1.0 - np.exp(-distance[index] / FOG_M))[None, :, None]
    palette = GROUND_COLORS[:, None, :] * (1.0 - f) + HAZE * f
    elevation = np.clip(dz / norm * 2.5, 0.0, 1.0)[:, None]
    sky = HAZE * (1.0 - elevation) + SKY_TOP * elevation
    k = camera.intrinsics
    return GroundGeometry(
        index, origin[0] + t[index] * rays[index, 0], origin[1] + t[index] * rays[index, 1],
        np.rint(palette).astype(np.uint8),
        np.rint(sky).astype(np.uint8).reshape(k.height, k.width, 3),
    )


def render_ground(scene: Scene, camera: Camera, pose: EgoPose, ego_s: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Draw sky and ground for ``pose``: return the RGB uint8 image and the label mask."""
    geo = ground_geometry(camera)
    c, s = math.cos(pose.yaw), math.sin(pose.yaw)
    road = scene.road
    s_road, d = road.to_frenet(pose.x + c * geo.x - s * geo.y, pose.y + s * geo.x + c * geo.y,
                               ego_s)
    on_road = (d >= road.right_edge) & (d <= road.left_edge)
    w = road.lane_width
    nearest = np.round(d / w)
    inner = ((nearest <= -1) & (nearest >= -(road.lanes_forward - 1))) | (
        (nearest >= 1) & (nearest <= road.lanes_oncoming - 1))
    paint = inner & (np.abs(d - nearest * w) < PAINT_HALF_WIDTH_M) & (
        (s_road % DASH_PERIOD_M) < DASH_LENGTH_M)
    paint |= np.abs(d - road.right_edge - 0.25) < PAINT_HALF_WIDTH_M
    paint |= np.abs(d - road.left_edge + 0.25) < PAINT_HALF_WIDTH_M
    surface = np.full(len(d), GRASS_ID, dtype=np.intp)
    surface[(d >= road.right_edge - road.sidewalk_width)
            & (d <= road.left_edge + road.sidewalk_width)] = SIDEWALK_ID
    surface[on_road] = ASPHALT_ID
    surface[paint] = PAINT_ID
    if road.lanes_oncoming > 0:
        surface[np.abs(d) < PAINT_HALF_WIDTH_M] = DIVIDER_ID
    image = geo.sky.copy()
    image.reshape(-1, 3)[geo.index] = geo.palette[surface, np.arange(len(d))]
    mask = np.zeros(image.shape[:2], dtype=np.uint8)
    mask.reshape(-1)[geo.index[on_road]] = Label.ROAD
    return image, mask


def projected_box(camera: Camera, corners_cam: np.ndarray
                  ) -> tuple[float, float, float, float] | None:
    """Return the image-clipped 2-D box of a 3-D box's 8 corners (camera frame), or None."""
    a = corners_cam[[e[0] for e in BOX_EDGES]]
    b = corners_cam[[e[1] for e in BOX_EDGES]]
    points = clip_segments_near(a, b)
    if len(points) == 0:
        return None
    uv = camera.project(points)
    k = camera.intrinsics
    x0, y0 = max(float(uv[:, 0].min()), 0.0), max(float(uv[:, 1].min()), 0.0)
    x1 = min(float(uv[:, 0].max()), float(k.width))
    y1 = min(float(uv[:, 1].max()), float(k.height))
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0, y0, x1, y1)


@dataclass
class _Canvas:
    image: np.ndarray
    mask: np.ndarray
    ids: np.ndarray
    zbuf: np.ndarray


def _fill_polygon(camera: Camera, canvas: _Canvas, poly_cam: np.ndarray, normal_cam: np.ndarray,
                  color: np.ndarray, label: int, ident: int) -> None:
    """Fill a convex polygon (camera frame, in front of the near plane) with a depth test."""
    k = camera.intrinsics
    u = k.fx * poly_cam[:, 0] / poly_cam[:, 2] + k.cx
    v = k.fy * poly_cam[:, 1] / poly_cam[:, 2] + k.cy
    j0 = max(math.ceil(float(u.min()) - 0.5), 0)
    j1 = min(math.floor(float(u.max()) - 0.5), k.width - 1)
    i0 = max(math.ceil(float(v.min()) - 0.5), 0)
    i1 = min(math.floor(float(v.max()) - 0.5), k.height - 1)
    if j1 < j0 or i1 < i0:
        return
    ul, vl = u.tolist(), v.tolist()
    n = len(ul)
    area = sum(ul[a] * vl[(a + 1) % n] - ul[(a + 1) % n] * vl[a] for a in range(n))
    if abs(area) < 1e-9:
        return
    orient = 1.0 if area > 0 else -1.0
    us = np.arange(j0, j1 + 1)[None, :] + 0.5
    vs = np.arange(i0, i1 + 1)[:, None] + 0.5
    inside = np.ones((i1 - i0 + 1, j1 - j0 + 1), dtype=bool)
    for a in range(n):
        ax, ay = ul[a], vl[a]
        bx, by = ul[(a + 1) % n], vl[(a + 1) % n]
        inside &= orient * ((bx - ax) * (vs - ay) - (by - ay) * (us - ax)) >= 0
    # Depth of the face's plane along each pixel's ray (z of the hit point, camera frame).
    plane = float(np.dot(normal_cam, poly_cam[0]))
    with np.errstate(divide='ignore', invalid='ignore'):
        depth = plane / (normal_cam[0] * (us - k.cx) / k.fx + normal_cam[1] * (vs - k.cy) / k.fy
                         + normal_cam[2])
    zb = canvas.zbuf[i0:i1 + 1, j0:j1 + 1]
    draw = inside & (depth < zb) & (depth > 0)
    zb[draw] = depth[draw]
    canvas.image[i0:i1 + 1, j0:j1 + 1][draw] = color
    canvas.mask[i0:i1 + 1, j0:j1 + 1][draw] = label
    canvas.ids[i0:i1 + 1, j0:j1 + 1][draw] = ident


def _candidates(camera: Camera, pose: EgoPose, arrays: dict) -> np.ndarray:
    """Return indices of agents within range whose bounding sphere meets the view frustum."""
    if len(arrays['x']) == 0:
        return np.zeros(0, dtype=int)
    centers = pose.to_ego(np.stack([arrays['x'], arrays['y'], arrays['z']], axis=1))
    radius = np.linalg.norm(arrays['size'], axis=1) / 2.0
    near = np.hypot(centers[:, 0], centers[:, 1]) < MAX_RANGE_M + radius
    p = camera.ego_to_camera(centers)
    k = camera.intrinsics
    ok = near & (p[:, 2] > -radius)
    # Sphere vs the four side planes of the frustum (signed distance <= radius).
    for nx, ny, tan in ((1.0, 0.0, (k.width - k.cx) / k.fx), (-1.0, 0.0, k.cx / k.fx),
                        (0.0, 1.0, (k.height - k.cy) / k.fy), (0.0, -1.0, k.cy / k.fy)):
        dist = (nx * p[:, 0] + ny * p[:, 1] - tan * p[:, 2]) / math.sqrt(1.0 + tan * tan)
        ok &= dist <= radius
    idx = np.nonzero(ok)[0]
    return idx[np.argsort(p[idx, 2])]


FACE_INDEX = np.array([face for face, _ in BOX_FACES])
FACE_NORMALS = np.array([normal for _, normal in BOX_FACES])


def render_view(scene: Scene, camera: Camera, time_s: float) -> ViewRender:
    """Render ``camera`` at scene time ``time_s``: image, label mask and the objects it sees."""
    pose = scene.ego_pose(time_s)
    image, mask = render_ground(scene, camera, pose, scene.ego_s(time_s))
    k = camera.intrinsics
    canvas = _Canvas(image, mask, np.full((k.height, k.width), -1, dtype=np.int32),
                     np.full((k.height, k.width), np.inf))
    arrays = scene.agent_arrays(time_s)
    rot = camera.extrinsics.rotation()
    cam_t = np.asarray(camera.extrinsics.translation)
    found: list[tuple[int, Object3D, tuple[float, float, float, float]]] = []
    for i in _candidates(camera, pose, arrays):
        agent = scene.agents[i]
        center_ego = pose.to_ego(np.array([[arrays['x'][i], arrays['y'][i], arrays['z'][i]]]))[0]
        yaw_ego = float(arrays['yaw'][i]) - pose.yaw
        box = projected_box(camera, (box_corners(center_ego, agent.size, yaw_ego) - cam_t) @ rot)
        if box is None:
            continue
        found.append((i, Object3D(agent.track_id, agent.label, tuple(float(c) for c in center_ego),
                                  agent.size, math.atan2(math.sin(yaw_ego), math.cos(yaw_ego))),
                      box))
        # Local (agent-frame) vectors to the camera frame, and the agent's ground origin there.
        to_cam = yaw_matrix(yaw_ego).T @ rot
        origin_cam = (center_ego - np.array([0.0, 0.0, agent.size[2] / 2.0]) - cam_t) @ rot
        normals_cam = FACE_NORMALS @ to_cam
        # Lambert shading under a sun fixed in the map frame, then haze by distance.
        light = 0.5 + 0.5 * np.clip(FACE_NORMALS @ yaw_matrix(float(arrays['yaw'][i])).T @ SUN,
                                    0.0, None)
        haze = 1.0 - math.exp(-float(np.hypot(center_ego[0], center_ego[1])) / FOG_M)
        label = int(LABEL_OF[agent.label])
        for part in agent.parts:
            corners = box_corners(part.center, part.size, 0.0) @ to_cam + origin_cam
            facing = np.einsum('ij,ij->i', normals_cam, corners[FACE_INDEX].mean(axis=1)) < 0
            shades = np.rint(np.asarray(part.color) * light[:, None] * (1.0 - haze)
                             + HAZE * haze).astype(np.uint8)
            for f in np.nonzero(facing)[0]:
                poly = corners[FACE_INDEX[f]]
                if poly[:, 2].min() < NEAR_M:
                    poly = clip_polygon_near(poly)
                    if len(poly) < 3:
                        continue
                _fill_polygon(camera, canvas, poly, normals_cam[f], shades[f], label, i)
    counts = np.bincount(canvas.ids[canvas.ids >= 0].ravel(), minlength=len(scene.agents))
    objects = tuple(ViewObject(obj, box, int(counts[i])) for i, obj, box in found)
    return ViewRender(camera.name, time_s, pose, canvas.image, canvas.mask, objects,
                      canvas.zbuf)
