"""
nuScenes open-loop planning metrics: L2 and collision at 1 / 2 / 3 s (models.md, Scoring).

- L2 at T s: mean over the first 2T waypoints (0.5 s apart) of the per-step Euclidean error,
  the cumulative convention (ST-P3 / UniAD / VAD); steps past a scene's end are masked out.
- Collision at T s: the ego box (4.084 m x 1.85 m, centre 0.5 m ahead of the waypoint, heading
  along the path) is tested per step against every GT agent box at that step (oriented
  rectangles, separating-axis test); steps where the GT trajectory itself collides are skipped;
  the same cumulative mean over the first 2T steps.

Both ``drive-vlm run`` (a bag's FrameTruth) and ``drive-vlm eval`` (a DriveLM frame's ``gt``,
through :meth:`PlanningTruth.from_step_boxes`) score with these functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import math

import numpy as np

EGO_LENGTH, EGO_WIDTH, EGO_FORWARD_SHIFT = 4.084, 1.85, 0.5
HORIZONS_S = (1, 2, 3)
STEP_S = 0.5


@dataclass(frozen=True)
class PlanningScore:
    """Per-frame scores; None where no step of that horizon could be scored."""

    l2: dict[str, float | None]
    collision: dict[str, float | None]

    def as_json(self) -> dict:
        return {'l2': self.l2, 'collision': self.collision}


@dataclass(frozen=True)
class AgentTrack:
    """An agent's box size (length, width, ...) and its (x, y, yaw) per future step, or None."""

    size: tuple[float, ...]
    boxes: tuple[tuple[float, float, float] | None, ...]


@dataclass(frozen=True)
class PlanningTruth:
    """
    What scoring needs of a frame: the GT path, which steps exist, and the agents' boxes.

    bag/topics.FrameTruth has the same three fields, so either can be scored.
    """

    future_trajectory: tuple[tuple[float, float], ...]
    future_valid: tuple[bool, ...]
    future_objects: tuple[AgentTrack, ...] = ()

    @classmethod
    def from_step_boxes(cls, trajectory: Sequence[Sequence[float]],
                        step_boxes: Sequence[Sequence[tuple[float, float, float, float, float]]]
                        ) -> PlanningTruth:
        """
        Build from per-step box lists ``(x, y, yaw, length, width)``, without track identities.

        Each box becomes a track present at its own step only: collision is tested per step, so
        identity across steps does not matter.
        """
        steps = len(trajectory)
        tracks = []
        for k, boxes in enumerate(step_boxes[:steps]):
            for x, y, yaw, length, width in boxes:
                slots: list = [None] * steps
                slots[k] = (x, y, yaw)
                tracks.append(AgentTrack((length, width), tuple(slots)))
        return cls(tuple((float(x), float(y)) for x, y in trajectory), (True,) * steps,
                   tuple(tracks))


def headings(points: np.ndarray) -> np.ndarray:
    """Yaw of each waypoint: the direction from the previous one (the first from the origin)."""
    prev = np.vstack([np.zeros((1, 2)), points[:-1]])
    d = points - prev
    yaw = np.arctan2(d[:, 1], d[:, 0])
    still = np.hypot(d[:, 0], d[:, 1]) < 1e-6
    for i in np.flatnonzero(still):  # standing still keeps the previous heading
        yaw[i] = yaw[i - 1] if i > 0 else 0.0
    return yaw


def box_corners(x: float, y: float, yaw: float, length: float, width: float) -> np.ndarray:
    """Return the 4 x 2 corners of an oriented rectangle centred at (x, y)."""
    c, s = math.cos(yaw), math.sin(yaw)
    half = np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]]) * [length / 2, width / 2]
    return half @ np.array([[c, s], [-s, c]]) + [x, y]


def rectangles_overlap(a: np.ndarray, b: np.ndarray) -> bool:
    """Separating-axis test for two convex quadrilaterals given by their corners."""
    for poly in (a, b):
        edges = np.roll(poly, -1, axis=0) - poly
        for nx, ny in np.stack([-edges[:, 1], edges[:, 0]], axis=1):
            pa, pb = a @ [nx, ny], b @ [nx, ny]
            if pa.max() < pb.min() or pb.max() < pa.min():
                return False
    return True


def ego_boxes(points: np.ndarray) -> list[np.ndarray]:
    yaw = headings(points)
    centres = points + EGO_FORWARD_SHIFT * np.stack([np.cos(yaw), np.sin(yaw)], axis=1)
    return [box_corners(cx, cy, t, EGO_LENGTH, EGO_WIDTH) for (cx, cy), t in zip(centres, yaw)]


def collisions(points: np.ndarray, agents: Sequence) -> np.ndarray:
    """Return per step whether the ego box at that waypoint overlaps any agent's box."""
    hit = np.zeros(len(points), bool)
    for k, ego in enumerate(ego_boxes(points)):
        for agent in agents:
            box = agent.boxes[k] if k < len(agent.boxes) else None
            if box is not None and rectangles_overlap(
                    ego, box_corners(box[0], box[1], box[2], agent.size[0], agent.size[1])):
                hit[k] = True
                break
    return hit


def score_trajectory(predicted: Sequence[Sequence[float]], truth,
                     horizons: Sequence[int] = HORIZONS_S) -> PlanningScore:
    """Score 6 predicted waypoints against a PlanningTruth or a bag's FrameTruth."""
    pred = np.asarray(predicted, dtype=np.float64)[:, :2]
    gt = np.asarray(truth.future_trajectory, dtype=np.float64)
    steps = min(len(pred), len(gt))
    pred, gt = pred[:steps], gt[:steps]
    valid = np.asarray(truth.future_valid[:steps], bool)
    err = np.hypot(*(pred - gt).T)
    agents = truth.future_objects or ()
    pred_hit = collisions(pred, agents)
    gt_hit = collisions(gt, agents)
    l2, coll = {}, {}
    for t in horizons:
        n = int(round(t / STEP_S))
        mask = valid[:n]
        l2[f'{t}s'] = float(err[:n][mask].mean()) if mask.any() else None
        scored = mask & ~gt_hit[:n]
        coll[f'{t}s'] = float(pred_hit[:n][scored].mean()) if scored.any() else None
    return PlanningScore(l2, coll)
