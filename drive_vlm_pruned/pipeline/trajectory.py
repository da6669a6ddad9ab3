"""
Parse a planned ego trajectory out of model text.

Format: six ``[x, y]`` waypoints, metres in the ego frame (x forward, y left), one every 0.5 s,
optionally inside ``<PLANNING>...</PLANNING>``. The parser takes Impromptu-VLA's
``[x1, y1], [x2, y2], ...`` and the compact ``[x1,y1],[x2,y2],...`` (one decimal) that the
PLANNING prompt asks for and ``format_trajectory`` writes.
The parser never invents a trajectory: anything else is "no trajectory" with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
import re

WAYPOINTS = 6
STEP_S = 0.5

_PAIR = re.compile(r'\[\s*([-+]?\d+(?:\.\d+)?)\s*,\s*([-+]?\d+(?:\.\d+)?)\s*\]')
_PLANNING = re.compile(r'<PLANNING>(.*?)(?:</PLANNING>|$)', re.DOTALL)


@dataclass(frozen=True)
class TrajectoryParse:
    """Either ``points`` (6 (x, y) waypoints at 0.5 s) or ``reason`` says why there are none."""

    points: tuple[tuple[float, float], ...] | None
    reason: str = ''

    @property
    def ok(self) -> bool:
        return self.points is not None


def parse_trajectory(text: str, waypoints: int = WAYPOINTS) -> TrajectoryParse:
    """Take the first ``waypoints`` ``[x, y]`` pairs of the planning block (or whole text)."""
    block = _PLANNING.search(text)
    body = block.group(1) if block else text
    pairs = _PAIR.findall(body)
    if not pairs:
        return TrajectoryParse(None, 'no [x, y] waypoints in the answer')
    if len(pairs) < waypoints:
        return TrajectoryParse(
            None, f'only {len(pairs)} of {waypoints} [x, y] waypoints in the answer'
        )
    points = tuple((float(x), float(y)) for x, y in pairs[:waypoints])
    if not all(math.isfinite(c) for p in points for c in p):
        return TrajectoryParse(None, 'a waypoint is not a finite number')
    return TrajectoryParse(points)


def format_trajectory(points: tuple[tuple[float, float], ...]) -> str:
    """Write waypoints the way the PLANNING prompt asks for them: one decimal, no spaces."""
    return ','.join(f'[{_one_decimal(x)},{_one_decimal(y)}]' for x, y in points)


def _one_decimal(value: float) -> str:
    # + 0.0 turns a rounded -0.0 into 0.0, so a waypoint never reads '-0.0'.
    return f'{round(value, 1) + 0.0:.1f}'
