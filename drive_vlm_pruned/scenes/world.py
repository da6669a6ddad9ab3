"""
The driving world: a road of constant curvature, the ego car driving along it, and agents.

Positions on the road are Frenet coordinates ``(s, d)``: ``s`` is arc length along the road's
centre line (the divider between the two directions), ``d`` the signed offset to its left. The
map frame has the ego car at ``s = 0`` at time 0 heading along +x. Forward lanes lie right of
the divider (d < 0), oncoming lanes left of it. Every agent moves at a constant speed along its
lane or sidewalk, so any time's poses follow in closed form: a scene is a pure function of its
config, deterministic for a seed, and the future is known exactly (for GT trajectories and
agent boxes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
import math

import numpy as np

from .geometry import wrap_angle, yaw_matrix


class Label(IntEnum):
    """Foreground-mask values (uint8): one per class, 0 for everything else."""

    BACKGROUND = 0
    ROAD = 1
    VEHICLE = 2
    PEDESTRIAN = 3
    SIGN = 4
    BARRIER = 5


OBJECT_LABELS: tuple[str, ...] = ('vehicle', 'pedestrian', 'sign', 'barrier')
LABEL_OF: dict[str, Label] = {
    'vehicle': Label.VEHICLE, 'pedestrian': Label.PEDESTRIAN, 'sign': Label.SIGN,
    'barrier': Label.BARRIER,
}

MAX_CURVATURE = 0.05  # 1/m: 20 m radius, a tight urban bend; tighter roads would overlap views


@dataclass(frozen=True)
class SceneConfig:
    """
    Everything a scene is made of; equal configs give identical scenes.

    Densities are agents per 100 m of road (vehicles per lane). ``duration_s`` is how long the
    ego car must find a populated road ahead: agents are placed from 60 m behind its start to
    120 m beyond where it is at ``duration_s``.
    """

    seed: int = 0
    curvature: float = 0.0
    ego_speed: float = 8.0
    ego_accel: float = 0.0
    lane_width: float = 3.5
    lanes_forward: int = 2
    lanes_oncoming: int = 1
    ego_lane: int = 0
    sidewalk_width: float = 3.0
    vehicles_per_100m: float = 4.0
    pedestrians_per_100m: float = 8.0
    signs_per_100m: float = 2.0
    barriers_per_100m: float = 1.5
    duration_s: float = 10.0

    def __post_init__(self) -> None:
        if not abs(self.curvature) <= MAX_CURVATURE:
            raise ValueError(f'curvature {self.curvature} 1/m: use |curvature| <= '
                             f'{MAX_CURVATURE} (a radius of 20 m or more; 0 is straight)')
        if not 0.0 <= self.ego_speed <= 40.0:
            raise ValueError(f'ego speed {self.ego_speed} m/s: use 0 to 40 m/s')
        if self.lanes_forward < 1 or self.lanes_oncoming < 0:
            raise ValueError('a road needs lanes_forward >= 1 and lanes_oncoming >= 0')
        if not 0 <= self.ego_lane < self.lanes_forward:
            raise ValueError(f'ego_lane {self.ego_lane}: use 0 (next to the divider) to '
                             f'{self.lanes_forward - 1} (the rightmost forward lane)')
        if self.duration_s <= 0:
            raise ValueError(f'duration {self.duration_s} s: must be positive')
        for name in ('vehicles_per_100m', 'pedestrians_per_100m', 'signs_per_100m',
                     'barriers_per_100m'):
            if getattr(self, name) < 0:
                raise ValueError(f'{name} is negative: use 0 for none')


@dataclass(frozen=True)
class Road:
    """A constant-curvature road (curvature 0: straight) through the map origin along +x."""

    curvature: float
    lane_width: float
    lanes_forward: int
    lanes_oncoming: int
    sidewalk_width: float

    @property
    def right_edge(self) -> float:
        return -self.lanes_forward * self.lane_width

    @property
    def left_edge(self) -> float:
        return self.lanes_oncoming * self.lane_width

    def lane_center(self, lane: int) -> float:
        """Return ``d`` of forward lane ``lane`` (0 next to the divider), or oncoming -1, -2..."""
        if lane >= 0:
            return -(lane + 0.5) * self.lane_width
        return (-lane - 0.5) * self.lane_width

    def heading(self, s):
        """Return the road's direction at arc length ``s`` (radians)."""
        return self.curvature * np.asarray(s, dtype=float)

    def to_map(self, s, d) -> tuple[np.ndarray, np.ndarray]:
        """Return map (x, y) of Frenet points (s, d); arrays broadcast."""
        s, d = np.asarray(s, dtype=float), np.asarray(d, dtype=float)
        k = self.curvature
        theta = k * s
        if k == 0.0:
            cx, cy = s, np.zeros_like(s)
        else:
            cx, cy = np.sin(theta) / k, (1.0 - np.cos(theta)) / k
        return cx - d * np.sin(theta), cy + d * np.cos(theta)

    def to_frenet(self, x, y, s_hint: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """
        Return Frenet (s, d) of map points; arrays broadcast.

        On a curve the arc length is unwrapped around ``s_hint`` (the ego's ``s``): points more
        than half a turn away along the road map to the nearer branch, which is what a camera
        at ``s_hint`` sees.
        """
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        k = self.curvature
        if k == 0.0:
            return x, y
        r = 1.0 / k
        sign = 1.0 if k > 0 else -1.0
        dx, dy = x, y - r
        d = r - sign * np.hypot(dx, dy)
        theta = np.arctan2(dx * sign, -dy * sign)
        hint = k * s_hint
        theta = hint + wrap_angle(theta - hint)
        return theta * r, d

    def frenet_speed(self, speed: float, d: float) -> float:
        """Return ds/dt of a point moving at ``speed`` m/s along the parallel at offset ``d``."""
        return speed / (1.0 - self.curvature * d)


@dataclass(frozen=True)
class EgoPose:
    """The ego car's pose in the map frame: position of the ego origin and heading (radians)."""

    x: float
    y: float
    yaw: float
    speed: float = 0.0

    def to_ego(self, points) -> np.ndarray:
        """Transform N x 3 (or N x 2) map points into this ego frame."""
        p = np.array(points, dtype=float)
        p[:, 0] -= self.x
        p[:, 1] -= self.y
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        x, y = c * p[:, 0] + s * p[:, 1], -s * p[:, 0] + c * p[:, 1]
        p[:, 0], p[:, 1] = x, y
        return p

    def matrix(self) -> np.ndarray:
        """Return the 4 x 4 transform map <- ego."""
        m = np.eye(4)
        m[:3, :3] = yaw_matrix(self.yaw)
        m[0, 3], m[1, 3] = self.x, self.y
        return m


@dataclass(frozen=True)
class Object3D:
    """
    An object's 3-D box: centre (m), size (length, width, height; m) and heading (rad).

    The frame is the caller's (map or ego); ``track_id`` is stable over a scene's frames.
    """

    track_id: int
    label: str
    position: tuple[float, float, float]
    size: tuple[float, float, float]
    yaw: float


@dataclass(frozen=True)
class Part:
    """A coloured box of an agent's body, in the agent's frame (origin on the ground)."""

    center: tuple[float, float, float]
    size: tuple[float, float, float]
    color: tuple[int, int, int]


@dataclass(frozen=True)
class Agent:
    """
    A vehicle, pedestrian, sign or barrier moving at constant ``speed`` along the road.

    ``s0`` and ``d`` place it at time 0; ``yaw`` is its heading relative to the road (pi for
    oncoming traffic). ``parts`` draw it; ``size`` bounds them all.
    """

    track_id: int
    label: str
    s0: float
    d: float
    speed: float
    yaw: float
    size: tuple[float, float, float]
    parts: tuple[Part, ...] = field(repr=False)


@dataclass(frozen=True)
class Scene:
    """A road, the ego car's motion along it and the agents around it."""

    config: SceneConfig
    road: Road
    agents: tuple[Agent, ...]

    @property
    def ego_d(self) -> float:
        return self.road.lane_center(self.config.ego_lane)

    def ego_distance(self, t: float) -> float:
        """Return the distance (m) the ego car has driven by time ``t`` (it never reverses)."""
        v, a = self.config.ego_speed, self.config.ego_accel
        if a < 0 and t > v / -a:
            t = v / -a
        return v * t + 0.5 * a * t * t

    def ego_s(self, t: float) -> float:
        return self.ego_distance(t) / (1.0 - self.road.curvature * self.ego_d)

    def ego_pose(self, t: float) -> EgoPose:
        """Return the ego pose at time ``t`` seconds (the ego origin follows its lane centre)."""
        s = self.ego_s(t)
        x, y = self.road.to_map(s, self.ego_d)
        v, a = self.config.ego_speed, self.config.ego_accel
        return EgoPose(float(x), float(y), float(self.road.heading(s)), max(0.0, v + a * t))

    def agent_arrays(self, t: float) -> dict[str, np.ndarray]:
        """Return every agent's map pose at ``t``: arrays x, y, z (box centre), yaw, and sizes."""
        if not self.agents:
            empty = np.zeros(0)
            return {'x': empty, 'y': empty, 'z': empty, 'yaw': empty,
                    'size': np.zeros((0, 3))}
        s0 = np.array([a.s0 for a in self.agents])
        d = np.array([a.d for a in self.agents])
        speed = np.array([a.speed for a in self.agents])
        s = s0 + speed / (1.0 - self.road.curvature * d) * t
        x, y = self.road.to_map(s, d)
        size = np.array([a.size for a in self.agents])
        yaw = self.road.heading(s) + np.array([a.yaw for a in self.agents])
        return {'x': x, 'y': y, 'z': size[:, 2] / 2.0, 'yaw': yaw, 'size': size}

    def objects(self, t: float) -> tuple[Object3D, ...]:
        """Return every agent's 3-D box in the map frame at time ``t``."""
        arr = self.agent_arrays(t)
        return tuple(
            Object3D(a.track_id, a.label,
                     (float(arr['x'][i]), float(arr['y'][i]), float(arr['z'][i])),
                     a.size, float(wrap_angle(arr['yaw'][i])))
            for i, a in enumerate(self.agents)
        )


VEHICLE_COLORS = ((200, 200, 205), (40, 40, 45), (150, 25, 30), (30, 60, 140), (235, 235, 230),
                  (120, 125, 130), (25, 90, 60), (210, 160, 40))
CLOTHES = ((40, 50, 90), (150, 30, 40), (60, 60, 60), (200, 180, 60), (30, 110, 90),
           (230, 230, 230))
SKIN = ((235, 200, 170), (190, 140, 100), (120, 80, 55))
SIGN_COLORS = ((200, 30, 30), (30, 80, 190), (235, 235, 235), (240, 190, 20))
GLASS = (55, 65, 80)


def vehicle_parts(length: float, width: float, height: float,
                  color: tuple[int, int, int]) -> tuple[Part, ...]:
    """Draw a vehicle as a body box with a darker, narrower cabin on top."""
    body_h = 0.55 * height
    return (
        Part((0.0, 0.0, body_h / 2), (length, width, body_h), color),
        Part((-0.1 * length, 0.0, (body_h + height) / 2),
             (0.55 * length, 0.9 * width, height - body_h), GLASS),
    )


def pedestrian_parts(height: float, clothes, legs, skin) -> tuple[Part, ...]:
    """Draw a pedestrian as legs, torso and head, 0.6 m wide at the shoulders."""
    leg_h, torso_h = 0.47 * height, 0.38 * height
    return (
        Part((0.0, 0.0, leg_h / 2), (0.35, 0.45, leg_h), legs),
        Part((0.0, 0.0, leg_h + torso_h / 2), (0.4, 0.6, torso_h), clothes),
        Part((0.0, 0.0, (leg_h + torso_h + height) / 2), (0.3, 0.3, height - leg_h - torso_h),
             skin),
    )


def sign_parts(height: float, color) -> tuple[Part, ...]:
    """Draw a sign as a grey pole with a 0.7 m plate on top, facing along the road."""
    plate = 0.7
    return (
        Part((0.0, 0.0, (height - plate) / 2), (0.08, 0.08, height - plate), (110, 110, 115)),
        Part((0.0, 0.0, height - plate / 2), (0.06, plate, plate), color),
    )


def barrier_parts(length: float, height: float) -> tuple[Part, ...]:
    """Draw a barrier as an orange block with a white top band."""
    return (
        Part((0.0, 0.0, 0.35 * height), (length, 0.4, 0.7 * height), (225, 95, 30)),
        Part((0.0, 0.0, 0.85 * height), (length, 0.4, 0.3 * height), (240, 240, 240)),
    )


def _positions(rng: np.random.Generator, start: float, end: float, per_100m: float,
               min_gap: float) -> list[float]:
    """Place points along [start, end] with exponential gaps of mean 100/density, >= min_gap."""
    if per_100m <= 0:
        return []
    out, s = [], start + rng.uniform(0.0, 100.0 / per_100m)
    while s < end:
        out.append(float(s))
        s += min_gap + rng.exponential(100.0 / per_100m)
    return out


def ego_scene(config: SceneConfig) -> Scene:
    """Return the road and the ego's motion of ``config``, without agents."""
    road = Road(config.curvature, config.lane_width, config.lanes_forward,
                config.lanes_oncoming, config.sidewalk_width)
    return Scene(config, road, ())


def make_scene(config: SceneConfig) -> Scene:
    """
    Build the road and place agents around the ego's path; the seed fixes everything.

    Vehicles keep to lane centres. Those in the ego lane drive at the ego's initial speed and
    start far enough ahead of and behind it (more when ``ego_accel`` makes it gain or lose
    ground) that its GT path never runs into them within ``duration_s``; other forward lanes
    drive 3 m/s slower or faster, oncoming lanes at 6-12 m/s. Pedestrians walk (1.0-1.6 m/s)
    or stand on the sidewalks, signs stand at the kerb facing the traffic of their side, and
    short rows of barriers line the outer edge of the outer lanes.
    """
    rng = np.random.default_rng([config.seed, 0])
    scene = ego_scene(config)
    road = scene.road
    end = scene.ego_s(config.duration_s) + 120.0
    start = -60.0
    # Ego-lane vehicles move at the ego's initial speed; an accelerating (braking) ego gains on
    # those ahead (loses on those behind) by this much, so they start that much further away.
    drift = scene.ego_distance(config.duration_s) - config.ego_speed * config.duration_s
    clear_behind, clear_ahead = -16.0 + min(drift, 0.0), 15.0 + max(drift, 0.0)
    agents: list[Agent] = []

    def add(label, s0, d, speed, yaw, size, parts):
        agents.append(Agent(len(agents) + 1, label, s0, d, speed, yaw, size, parts))

    def add_vehicle(s0, d, speed, yaw):
        if rng.random() < 0.15:
            size = (float(rng.uniform(8.0, 11.5)), 2.5, float(rng.uniform(3.0, 3.6)))
        else:
            size = (float(rng.uniform(4.0, 4.9)), float(rng.uniform(1.75, 2.0)),
                    float(rng.uniform(1.45, 1.8)))
        color = VEHICLE_COLORS[int(rng.integers(len(VEHICLE_COLORS)))]
        add('vehicle', s0, d, speed, yaw, size, vehicle_parts(*size, color))

    for lane in range(config.lanes_forward):
        d = road.lane_center(lane)
        speed = config.ego_speed if lane == config.ego_lane else max(
            0.0, config.ego_speed + float(rng.choice([-3.0, 3.0])))
        for s0 in _positions(rng, start, end, config.vehicles_per_100m, 14.0):
            if lane == config.ego_lane and clear_behind < s0 < clear_ahead:
                continue  # the ego car's space: its body spans -1 to +3.5 m, buses +-5.75 m
            add_vehicle(s0, d, speed, 0.0)
    for lane in range(config.lanes_oncoming):
        d = road.lane_center(-lane - 1)
        speed = -float(rng.uniform(6.0, 12.0))
        # Oncoming traffic sweeps past: populate far enough ahead to last the whole scene.
        for s0 in _positions(rng, start, end - speed * config.duration_s,
                             config.vehicles_per_100m, 14.0):
            add_vehicle(s0, d, speed, math.pi)

    side_edges = (road.right_edge, road.left_edge)
    for s0 in _positions(rng, start, end, config.pedestrians_per_100m, 1.0):
        side = int(rng.integers(2))
        out = -1.0 if side == 0 else 1.0
        d = side_edges[side] + out * float(rng.uniform(0.6, config.sidewalk_width - 0.4))
        walking = rng.random() < 0.7
        speed = float(rng.uniform(1.0, 1.6)) * float(rng.choice([-1.0, 1.0])) if walking else 0.0
        if speed:
            yaw = 0.0 if speed > 0 else math.pi
        else:
            yaw = float(rng.uniform(-math.pi, math.pi))  # standing, facing anywhere
        height = float(rng.uniform(1.55, 1.9))
        parts = pedestrian_parts(height, CLOTHES[int(rng.integers(len(CLOTHES)))],
                                 CLOTHES[int(rng.integers(len(CLOTHES)))],
                                 SKIN[int(rng.integers(len(SKIN)))])
        add('pedestrian', s0, d, speed, yaw, (0.45, 0.6, height), parts)

    for s0 in _positions(rng, start, end, config.signs_per_100m, 5.0):
        side = int(rng.integers(2))
        out = -1.0 if side == 0 else 1.0
        height = float(rng.uniform(2.4, 3.0))
        color = SIGN_COLORS[int(rng.integers(len(SIGN_COLORS)))]
        add('sign', s0, side_edges[side] + out * 0.4, 0.0, 0.0 if side == 0 else math.pi,
            (0.1, 0.7, height), sign_parts(height, color))

    for s0 in _positions(rng, start, end, config.barriers_per_100m, 3.0):
        side = int(rng.integers(2))
        if side == 1 and config.lanes_oncoming == 0:
            side = 0
        inward = 1.0 if side == 0 else -1.0
        length = float(rng.uniform(1.5, 2.5))
        # A short row of barriers, as at roadworks, along the lane's outer edge.
        for k in range(int(rng.integers(1, 4))):
            add('barrier', s0 + k * (length + 0.3), side_edges[side] + inward * 0.3, 0.0, 0.0,
                (length, 0.4, 1.0), barrier_parts(length, 1.0))
    return Scene(config, road, tuple(agents))
