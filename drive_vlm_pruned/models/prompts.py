"""Questions and six-view prompt text (camera order and names from nuScenes)."""

from __future__ import annotations

from ..cameras import NUSCENES_CAMERAS

VIEW_WORDS = {
    'CAM_FRONT': 'front view',
    'CAM_FRONT_LEFT': 'front left view',
    'CAM_FRONT_RIGHT': 'front right view',
    'CAM_BACK': 'back view',
    'CAM_BACK_LEFT': 'back left view',
    'CAM_BACK_RIGHT': 'back right view',
}

DRIVELM_QA = 'What are the important objects in the current scene? Describe their positions.'

PLANNING = (
    '<PLANNING>Predicted future movement details for the next 3 seconds (sampled at 0.5-second '
    'intervals), including BEV location in x and y directions (in meters). Positive x means '
    'forward direction while positive y means leftwards. The output is formatted as [x, y]: '
    '[x1, y1], [x2, y2], [x3, y3], [x4, y4], [x5, y5], [x6, y6]</PLANNING>'
)


def six_view_text(names: tuple[str, ...] = NUSCENES_CAMERAS) -> tuple[str, ...]:
    """
    Split the DriveMM six-view preamble around its image slots.

    Returns V + 1 text pieces; ``pieces[0] + <view 0> + pieces[1] + ... + <view V-1> + pieces[V]``
    reads "1: <image> 2: <image> ... These six images are the front view, ... of the ego
    vehicle." The caller puts each view's image tokens in the slots.
    """
    count = len(names)
    words = [VIEW_WORDS.get(n, n.lower()) for n in names]
    listing = ', '.join(words[:-1]) + f' and {words[-1]}' if count > 1 else words[0]
    pieces = ['1: '] + [f' {i + 1}: ' for i in range(1, count)]
    tail = f'. These {_number(count)} images are the {listing} of the ego vehicle.\n'
    return (*pieces, tail)


def _number(n: int) -> str:
    words = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight']
    return words[n] if n < len(words) else str(n)
