"""
Driving QA from scene ground truth: every question family and the rule that answers it.

docs/qa_rules.md states each rule and threshold for a reader to check; the constants below are
the ones it names. The flow: :func:`frame_facts` turns a rendered key frame (a
``scenes.FrameSet`` of its ``Scene``) into :class:`FrameFacts` (what each camera shows, with
pixel counts, plus the ego motion); the ``*_answer`` functions compute one family's answer from
facts; ``data/frame_qa.py`` picks the questions of a key frame (seeded) and returns them in
DriveLM-nuScenes shape, with the key objects and their c-tags.

Visibility is decided from the rendered image: an object counts in a camera when at least
``min_visible_px`` of its pixels are unoccluded there (``ViewObject.visible_px``, the pixels of
the label mask that show it). Objects with some pixels but fewer than that are *marginal*: a
question whose answer they could change is not asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import math

import numpy as np

from ..cameras import NUSCENES_CAMERAS
from ..models.prompts import PLANNING
from ..pipeline.trajectory import format_trajectory
from ..scenes import FrameSet, Scene

# --- visibility (docs/qa_rules.md, "Visibility") -------------------------------------------
REFERENCE_SIZE = (448, 252)     # image size the pixel thresholds are stated for
MIN_VISIBLE_PX_REF = 60         # an object counts in a camera from this many visible pixels
MARGINAL_PX_REF = 24            # from here up to the minimum an object is marginal
SMALL_BOX_H_FRAC = 0.12         # a counted object is small below 12% of the image height
IMPORTANT_RANGE_M = 40.0        # important objects lie within this distance of the ego

# --- geometry of the ego car and its corridor ------------------------------------------------
EGO_HALF_WIDTH_M = 0.925        # half of the nuScenes ego box width (1.85 m)
EGO_FRONT_M = 2.542             # front bumper: 0.5 m box offset + half of its 4.084 m length
CORRIDOR_MARGIN_M = 0.2         # the driving corridor is the ego's width plus this each side

# --- distance bands of the nearest object in the front view ---------------------------------
DISTANCE_BANDS: tuple[tuple[float, str], ...] = (
    (10.0, 'under 10 m'), (20.0, '10 to 20 m'), (40.0, '20 to 40 m'), (math.inf, 'over 40 m'),
)
BAND_MARGIN_M = 1.0             # not asked within this distance of a band edge
NEAREST_TIE_M = 1.0             # not asked when the second nearest is this close to the first

# --- behavior (steering from heading change, speed from displacement) -----------------------
STRAIGHT_MAX_DEG = 4.0          # |heading change| below this: going straight
SLIGHT_MAX_DEG = 15.0           # below this: slightly steering; from it on: steering
NOT_MOVING_MPS = 0.5            # mean future speed below this: not moving
SPEED_BANDS: tuple[tuple[float, str], ...] = (
    (4.0, 'driving slowly'), (8.0, 'driving with normal speed'), (12.0, 'driving fast'),
    (math.inf, 'driving very fast'),
)
STEERING_PHRASES = ('going straight', 'slightly steering to the left', 'steering to the left',
                    'slightly steering to the right', 'steering to the right')
SPEED_PHRASES = tuple(phrase for _, phrase in SPEED_BANDS)


def behavior_text(steering: str, speed: str) -> str:
    """Return DriveLM's behavior sentence, e.g. 'The ego vehicle is going straight. ...'."""
    return f'The ego vehicle is {steering}. The ego vehicle is {speed}.'


# DriveLM's 21 behavior options: 5 steerings x 4 speeds, plus going straight while not moving.
BEHAVIOR_OPTIONS: tuple[str, ...] = tuple(
    behavior_text(steer, speed) for steer in STEERING_PHRASES for speed in SPEED_PHRASES
) + (behavior_text('going straight', 'not moving'),)

# --- safe action ------------------------------------------------------------------------------
SAFE_ACTIONS = ('Remain stopped.', 'Slow down for the curve.',
                'Slow down to keep a safe distance.', 'Keep going at the same speed.')
STOPPED_MPS = 0.5               # current speed below this: remain stopped
MIN_TIME_GAP_S = 4.0            # a lead object closer than this many seconds: keep distance
MAX_LATERAL_ACCEL = 1.0         # v^2 * curvature above this (m/s^2): slow for the curve

KEY_OBJECTS_MAX = 4

PLURALS = {'vehicle': 'vehicles', 'pedestrian': 'pedestrians', 'sign': 'signs',
           'barrier': 'barriers'}
DIRECTIONS = {
    'CAM_FRONT': 'to the front', 'CAM_FRONT_LEFT': 'to the front left',
    'CAM_FRONT_RIGHT': 'to the front right', 'CAM_BACK': 'to the back',
    'CAM_BACK_LEFT': 'to the back left', 'CAM_BACK_RIGHT': 'to the back right',
}
CATEGORY_NAMES = {'vehicle': 'Vehicle', 'pedestrian': 'Pedestrian', 'sign': 'Sign',
                  'barrier': 'Barrier'}
# Colour names for descriptions: the nearest of these (RGB distance) names a part's colour.
COLOR_NAMES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ('white', (235, 235, 230)), ('silver', (200, 200, 205)), ('grey', (120, 125, 130)),
    ('black', (40, 40, 45)), ('red', (150, 25, 30)), ('blue', (30, 60, 140)),
    ('green', (25, 90, 60)), ('yellow', (210, 160, 40)), ('navy', (40, 50, 90)),
)
BUS_MIN_LENGTH_M = 7.0


def min_visible_px(width: int, height: int) -> int:
    """Return the visible-pixel minimum at ``width`` x ``height`` (scaled by image area)."""
    scale = width * height / (REFERENCE_SIZE[0] * REFERENCE_SIZE[1])
    return max(4, round(MIN_VISIBLE_PX_REF * scale))


def marginal_px(width: int, height: int) -> int:
    """Return the pixel count from which an uncounted object is marginal (scaled by area)."""
    scale = width * height / (REFERENCE_SIZE[0] * REFERENCE_SIZE[1])
    return max(2, round(MARGINAL_PX_REF * scale))


def color_name(rgb: Sequence[int]) -> str:
    """Name an RGB colour by the nearest entry of COLOR_NAMES."""
    r = np.asarray(rgb, dtype=float)
    return min(COLOR_NAMES, key=lambda item: float(np.sum((r - item[1]) ** 2)))[0]


@dataclass(frozen=True)
class SeenObject:
    """
    One object as one camera shows it, with its ground truth at the key frame's time.

    ``position`` is the box centre in the ego frame (x forward, y left; m); ``ahead_m`` and
    ``lateral_m`` are its arc length ahead of the ego and its offset left of the ego's lane
    centre along the road (Frenet); ``half_lateral_m`` is half its extent across the road.
    """

    track_id: int
    label: str
    camera: str
    box: tuple[float, float, float, float]
    visible_px: int
    position: tuple[float, float]
    ahead_m: float
    lateral_m: float
    half_length_m: float
    half_lateral_m: float
    moving: bool
    phrase: str          # 'red car', 'pedestrian in blue', 'yellow sign', 'barrier'

    @property
    def distance_m(self) -> float:
        return math.hypot(*self.position)

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return ((x0 + x1) / 2.0, (y0 + y1) / 2.0)

    @property
    def in_corridor(self) -> bool:
        """Whether its footprint overlaps the ego's driving corridor across the road."""
        return abs(self.lateral_m) - self.half_lateral_m < EGO_HALF_WIDTH_M + CORRIDOR_MARGIN_M


@dataclass(frozen=True)
class FrameFacts:
    """What a key frame shows (per camera, each object with a visible pixel) and the ego motion."""

    image_size: tuple[int, int]
    views: dict[str, tuple[SeenObject, ...]]
    speed_mps: float
    curvature: float
    history: tuple[tuple[float, float], ...]
    future: tuple[tuple[float, float], ...]

    @property
    def min_px(self) -> int:
        return min_visible_px(*self.image_size)

    @property
    def marginal_px(self) -> int:
        return marginal_px(*self.image_size)

    def counted(self, camera: str, label: str | None = None) -> list[SeenObject]:
        """Objects that count in ``camera`` (of class ``label``), nearest first."""
        return sorted((o for o in self.views[camera] if o.visible_px >= self.min_px
                       and (label is None or o.label == label)), key=lambda o: o.distance_m)

    def marginal(self, camera: str, label: str | None = None) -> list[SeenObject]:
        """Objects in ``camera`` with some pixels that do not count, nearest first."""
        return sorted((o for o in self.views[camera]
                       if self.marginal_px <= o.visible_px < self.min_px
                       and (label is None or o.label == label)), key=lambda o: o.distance_m)


def ego_history(scene: Scene, time_s: float, steps: int = 4, dt_s: float = 0.5
                ) -> tuple[tuple[float, float], ...]:
    """Return the ego positions at t-1.5, t-1.0, t-0.5 and t s in the ego frame at ``time_s``."""
    now = scene.ego_pose(time_s)
    past = [scene.ego_pose(time_s - k * dt_s) for k in range(steps - 1, -1, -1)]
    pts = now.to_ego(np.array([[p.x, p.y] for p in past]))
    return tuple((float(x), float(y)) for x, y in pts)


def _phrase(agent) -> str:
    if agent.label == 'vehicle':
        kind = 'bus' if agent.size[0] >= BUS_MIN_LENGTH_M else 'car'
        return f'{color_name(agent.parts[0].color)} {kind}'
    if agent.label == 'pedestrian':
        return f'pedestrian in {color_name(agent.parts[1].color)}'
    if agent.label == 'sign':
        return f'{color_name(agent.parts[-1].color)} sign'
    return agent.label


def frame_facts(scene: Scene, frames: FrameSet) -> FrameFacts:
    """Collect the facts of a rendered key frame: per-camera objects with their GT, ego motion."""
    t = frames.time_s
    pose = frames.ego_pose
    arrays = scene.agent_arrays(t)
    index = {a.track_id: i for i, a in enumerate(scene.agents)}
    road = scene.road
    ego_s, ego_d = scene.ego_s(t), scene.ego_d
    views = {}
    for view in frames.views:
        seen = []
        for vo in view.objects:
            if vo.visible_px <= 0:
                continue
            i = index[vo.object3d.track_id]
            agent = scene.agents[i]
            x, y, _ = pose.to_ego(np.array([[arrays['x'][i], arrays['y'][i], 0.0]]))[0]
            s_obj, d_obj = road.to_frenet(arrays['x'][i], arrays['y'][i], ego_s)
            length, width = agent.size[0], agent.size[1]
            c, s = abs(math.cos(agent.yaw)), abs(math.sin(agent.yaw))
            seen.append(SeenObject(
                track_id=agent.track_id, label=agent.label, camera=view.camera,
                box=vo.box, visible_px=vo.visible_px, position=(float(x), float(y)),
                ahead_m=float(s_obj) - ego_s, lateral_m=float(d_obj) - ego_d,
                half_length_m=(c * length + s * width) / 2.0,
                half_lateral_m=(s * length + c * width) / 2.0,
                moving=abs(agent.speed) > 0.1, phrase=_phrase(agent)))
        views[view.camera] = tuple(seen)
    k = frames.views[0].image.shape
    future = tuple((float(x), float(y)) for x, y in frames.future_trajectory)
    return FrameFacts(image_size=(int(k[1]), int(k[0])), views=views,
                      speed_mps=float(pose.speed), curvature=float(scene.road.curvature),
                      history=ego_history(scene, t), future=future)


# --- rules, one family each ------------------------------------------------------------------

def yes_no(value: bool) -> str:
    return 'Yes.' if value else 'No.'


def exists_answer(facts: FrameFacts, camera: str, label: str) -> str:
    """'Yes.' when at least one ``label`` object counts in ``camera``, else 'No.'."""
    return yes_no(bool(facts.counted(camera, label)))


def count_answer(facts: FrameFacts, camera: str, label: str) -> str:
    """Return how many ``label`` objects count in ``camera``, as digits ('0', '3')."""
    return str(len(facts.counted(camera, label)))


def pair_is_clear(facts: FrameFacts, camera: str, label: str) -> bool:
    """Whether no marginal ``label`` object in ``camera`` could change its exists/count answer."""
    return not facts.marginal(camera, label)


def pair_is_small(facts: FrameFacts, camera: str, label: str) -> bool:
    """Whether every counted ``label`` object in ``camera`` is small (box under 12% of height)."""
    counted = facts.counted(camera, label)
    limit = SMALL_BOX_H_FRAC * facts.image_size[1]
    return bool(counted) and all(o.box[3] - o.box[1] < limit for o in counted)


def distance_band(distance_m: float) -> str:
    for upper, name in DISTANCE_BANDS:
        if distance_m < upper:
            return name
    return DISTANCE_BANDS[-1][1]


def nearest_ahead_answer(facts: FrameFacts) -> str | None:
    """
    Name the nearest object that counts in the front view and its distance band.

    'pedestrian, 10 to 20 m.' (class, band of the ground distance from the ego origin to the box
    centre), 'None.' when nothing counts there; None (not asked) when the answer is ambiguous:
    within BAND_MARGIN_M of a band edge, a second object within NEAREST_TIE_M, or a marginal
    object nearer than the nearest counted one.
    """
    counted = facts.counted('CAM_FRONT')
    marginal = facts.marginal('CAM_FRONT')
    if not counted:
        return None if marginal else 'None.'
    first = counted[0]
    if marginal and marginal[0].distance_m < first.distance_m + NEAREST_TIE_M:
        return None
    if len(counted) > 1 and counted[1].distance_m - first.distance_m < NEAREST_TIE_M:
        return None
    edges = [upper for upper, _ in DISTANCE_BANDS if math.isfinite(upper)]
    if any(abs(first.distance_m - e) < BAND_MARGIN_M for e in edges):
        return None
    return f'{first.label}, {distance_band(first.distance_m)}.'


def in_moving_direction(obj: SeenObject) -> bool:
    """Whether ``obj`` is ahead of the ego (along the road) and overlaps its corridor."""
    return obj.ahead_m > 0.0 and obj.in_corridor


def lead_object(facts: FrameFacts) -> SeenObject | None:
    """Return the nearest object ahead in the ego's corridor that counts in the front view."""
    ahead = [o for o in facts.counted('CAM_FRONT') if in_moving_direction(o)]
    return min(ahead, key=lambda o: o.ahead_m) if ahead else None


def lead_gap_m(obj: SeenObject) -> float:
    """Return the free road between the ego's front bumper and the object's rear (m)."""
    return obj.ahead_m - obj.half_length_m - EGO_FRONT_M


def safe_action_answer(facts: FrameFacts) -> str:
    """
    Return the safe action, the first rule that applies.

    1 current speed < STOPPED_MPS: remain stopped; 2 speed^2 x |curvature| > MAX_LATERAL_ACCEL:
    slow down for the curve; 3 a lead object with a time gap (gap / speed) < MIN_TIME_GAP_S:
    keep a safe distance; 4 else keep going at the same speed.
    """
    v = facts.speed_mps
    if v < STOPPED_MPS:
        return SAFE_ACTIONS[0]
    if v * v * abs(facts.curvature) > MAX_LATERAL_ACCEL:
        return SAFE_ACTIONS[1]
    lead = lead_object(facts)
    if lead is not None and lead_gap_m(lead) / v < MIN_TIME_GAP_S:
        return SAFE_ACTIONS[2]
    return SAFE_ACTIONS[3]


def heading_change_deg(future: Sequence[Sequence[float]]) -> float:
    """Heading of the last GT future segment (step 5 -> 6), degrees left of the current one."""
    (x5, y5), (x6, y6) = future[-2], future[-1]
    if math.hypot(x6 - x5, y6 - y5) < 1e-6:
        return 0.0
    return math.degrees(math.atan2(y6 - y5, x6 - x5))


def mean_speed_mps(future: Sequence[Sequence[float]], dt_s: float = 0.5) -> float:
    """Path length of the GT future (origin, then the 6 waypoints) over its 3 s."""
    pts = np.vstack([[0.0, 0.0], np.asarray(future, dtype=float)])
    return float(np.linalg.norm(np.diff(pts, axis=0), axis=1).sum() / (dt_s * len(future)))


def behavior_answer(future: Sequence[Sequence[float]]) -> str:
    """Return DriveLM's behavior sentence for a GT future (steering and speed rules)."""
    speed = mean_speed_mps(future)
    if speed < NOT_MOVING_MPS:
        return behavior_text('going straight', 'not moving')
    turn = heading_change_deg(future)
    side = 'left' if turn > 0 else 'right'
    if abs(turn) < STRAIGHT_MAX_DEG:
        steering = 'going straight'
    elif abs(turn) < SLIGHT_MAX_DEG:
        steering = f'slightly steering to the {side}'
    else:
        steering = f'steering to the {side}'
    pace = next(name for upper, name in SPEED_BANDS if speed < upper)
    return behavior_text(steering, pace)


def behavior_choices(answer: str, rng: np.random.Generator) -> tuple[tuple[str, ...], str]:
    """Return 4 options (the answer, 3 other BEHAVIOR_OPTIONS) and the answer's letter."""
    others = [o for o in BEHAVIOR_OPTIONS if o != answer]
    picks = [others[i] for i in rng.choice(len(others), size=3, replace=False)]
    slot = int(rng.integers(4))
    options = picks[:slot] + [answer] + picks[slot:]
    return tuple(options), 'ABCD'[slot]


def _num(value: float) -> str:
    return f'{round(value, 2) + 0.0:.2f}'  # + 0.0 turns -0.0 into 0.0: no '-0.00'


def history_text(history: Sequence[Sequence[float]]) -> str:
    """Write the ego history as '(t-1.5s) [x, y], ..., (t-0.0s) [0.00, 0.00]'."""
    n = len(history)
    return ', '.join(f'(t-{(n - 1 - k) * 0.5:.1f}s) [{_num(x)}, {_num(y)}]'
                     for k, (x, y) in enumerate(history))


def history_sentence(history: Sequence[Sequence[float]]) -> str:
    """Return the ego-history sentence that opens the planning, safe-action, behavior Qs."""
    return ("The ego vehicle's positions over the last 1.5 seconds, in metres in its current "
            f'frame (x forward, y left): {history_text(history)}.')


def planning_question(history: Sequence[Sequence[float]]) -> str:
    """Return the Impromptu-style planning question: the ego history, then the PLANNING prompt."""
    return f'{history_sentence(history)} {PLANNING}'


def planning_answer(future: Sequence[Sequence[float]]) -> str:
    """Return the 6 GT waypoints as the PLANNING prompt asks: '[x1,y1],...,[x6,y6]', 1 decimal."""
    return format_trajectory(tuple((float(x), float(y)) for x, y in future))


def ctag(index: int, obj: SeenObject) -> str:
    """Return the c-tag ``<cN,CAM,x,y>`` of ``obj``: its box centre, 1 decimal."""
    x, y = obj.center
    return f'<c{index},{obj.camera},{x:.1f},{y:.1f}>'


def best_views(facts: FrameFacts) -> dict[int, SeenObject]:
    """Each counted object's view in the camera that shows most of it (ties: nuScenes order)."""
    best: dict[int, SeenObject] = {}
    for camera in NUSCENES_CAMERAS:
        for obj in facts.counted(camera):
            if obj.track_id not in best or obj.visible_px > best[obj.track_id].visible_px:
                best[obj.track_id] = obj
    return best


def key_objects(facts: FrameFacts) -> list[SeenObject]:
    """
    Return the important objects, numbered c1.. in this order (nearest first).

    The KEY_OBJECTS_MAX nearest counted objects within IMPORTANT_RANGE_M, each in the camera
    that shows most of it; the lead object (nearest ahead in the corridor) is always one of
    them, replacing the farthest if needed.
    """
    best = best_views(facts)
    near = sorted((o for o in best.values() if o.distance_m <= IMPORTANT_RANGE_M),
                  key=lambda o: (o.distance_m, o.track_id))[:KEY_OBJECTS_MAX]
    lead = lead_object(facts)
    if lead is not None and all(o.track_id != lead.track_id for o in near):
        near = near[:KEY_OBJECTS_MAX - 1] + [best[lead.track_id]]
    return sorted(near, key=lambda o: (o.distance_m, o.track_id))


def important_objects_answer(objects: Sequence[SeenObject]) -> str:
    """Answer DriveLM-style: 'There is a red car to the front of the ego vehicle, ... The IDs'."""
    if not objects:
        return 'There are no important objects in the current scene.'
    parts = [f'a {o.phrase} {DIRECTIONS[o.camera]} of the ego vehicle' for o in objects]
    tags = [ctag(i + 1, o) for i, o in enumerate(objects)]
    if len(objects) == 1:
        return f'There is {parts[0]}. The ID of this object is {tags[0]}.'
    return (f'There is {", ".join(parts[:-1])} and {parts[-1]}. The IDs of these objects are '
            f'{", ".join(tags[:-1])} and {tags[-1]}.')
