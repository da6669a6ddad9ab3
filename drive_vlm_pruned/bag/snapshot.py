"""
``drive-vlm bag snapshot``: one set of a recording, drawn as the shipped Foxglove layout shows it.

config/foxglove_layout.json lays out six camera panels, the CAM_FRONT plan overlay, a 3-D
panel with the planned and true paths, a plot of prefill ms and kept tokens, the answer log and
the diagnostics. Where Foxglove cannot run (here: no display, no network), this renders the same
panels from the recorded file with matplotlib, reading it back with the package's BagReader.
"""

from __future__ import annotations

from collections import defaultdict
import io
from pathlib import Path

import numpy as np

from .reading import BagReader
from .recording import (
    ANSWER_TOPIC,
    overlay_topic,
    PREFILL_TOPIC,
    TOKENS_TOPIC,
    TRAJECTORY_TOPIC,
)
from .topics import GT_TRAJECTORY_TOPIC
from ..cameras import camera_topic
from ..frames.mosaic import MOSAIC_LAYOUT

PLAN_COLOUR, TRUTH_COLOUR = '#00c8c8', '#e000e0'


def _decode(msg) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(bytes(msg.data))).convert('RGB'))


def _xy(path_msg) -> np.ndarray:
    return np.array([[p.pose.position.x, p.pose.position.y] for p in path_msg.poses]
                    ).reshape(-1, 2)


def read_recording(path: str | Path) -> dict[str, list[tuple[int, object]]]:
    """Return every topic's (log time, message) list, in log-time order."""
    topics: dict[str, list[tuple[int, object]]] = defaultdict(list)
    for m in BagReader(path).messages():
        topics[m.topic].append((m.log_time_ns, m.msg))
    if not topics.get(ANSWER_TOPIC):
        raise ValueError(f'{path} holds no {ANSWER_TOPIC}: record one with drive-vlm run '
                         "--record or the node's record_path")
    return topics


def _at(messages: list[tuple[int, object]], stamp_ns: int, within_ns: int = 60_000_000):
    best = min(messages, key=lambda tm: abs(tm[0] - stamp_ns), default=None)
    return best[1] if best is not None and abs(best[0] - stamp_ns) <= within_ns else None


def render_snapshot(recording: str | Path, out: str | Path, index: int = -1) -> Path:
    """Draw answered set ``index`` of ``recording`` as the Foxglove layout does; return ``out``."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    topics = read_recording(recording)
    answers = topics[ANSWER_TOPIC]
    stamp = answers[index][0]
    fig = plt.figure(figsize=(18, 8.5))
    grid = fig.add_gridspec(4, 6, height_ratios=[1, 1, 1.3, 0.55])
    for name, (row, col) in MOSAIC_LAYOUT.items():
        ax = fig.add_subplot(grid[row, 2 * col:2 * col + 2])
        msg = _at(topics.get(camera_topic(name, compressed=True), []), stamp)
        if msg is not None:
            ax.imshow(_decode(msg))
        ax.set_title(name, fontsize=9)
        ax.axis('off')
    ax = fig.add_subplot(grid[2, 0:3])
    overlay = _at(topics.get(overlay_topic('CAM_FRONT'), []), stamp)
    if overlay is not None:
        ax.imshow(_decode(overlay))
    ax.set_title('CAM_FRONT: kept tokens (yellow), plan (cyan), ground truth (magenta)',
                 fontsize=9)
    ax.axis('off')
    _top_down(fig.add_subplot(grid[2, 3:4]), topics, stamp)
    _plot(fig.add_subplot(grid[2, 4:6]), topics, stamp)
    _answers(fig.add_subplot(grid[3, :]), answers, stamp)
    fig.suptitle(f'{Path(recording).name}: set {index % len(answers) + 1} of {len(answers)}, '
                 f'stamp {stamp / 1e9:.3f} s', fontsize=11)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def _top_down(ax, topics, stamp: int) -> None:
    """Draw the 3-D panel seen from above: base_link, x forward (up), y left (left)."""
    for topic, colour, label in ((GT_TRAJECTORY_TOPIC, TRUTH_COLOUR, 'ground truth'),
                                 (TRAJECTORY_TOPIC, PLAN_COLOUR, 'plan')):
        msg = _at(topics.get(topic, []), stamp, 0)
        xy = _xy(msg) if msg is not None else np.zeros((0, 2))
        if len(xy):
            ax.plot(-xy[:, 1], xy[:, 0], 'o-', color=colour, label=label)
    ax.plot([0], [0], 's', color='k', label='ego')
    ax.set_xlim(-8, 8)
    ax.set_ylim(-2, 25)
    ax.set_xlabel('-y (m, right)')
    ax.set_ylabel('x (m, forward)')
    ax.set_title('3-D panel, top view (base_link)', fontsize=9)
    ax.legend(fontsize=7, loc='lower right')


def _plot(ax, topics, stamp: int) -> None:
    prefill = topics.get(PREFILL_TOPIC, [])
    t0 = topics[ANSWER_TOPIC][0][0]
    ax.plot([(t - t0) / 1e9 for t, _ in prefill], [m.data for _, m in prefill], '.-',
            label='prefill ms')
    ax.set_xlabel('s')
    ax.set_ylabel('prefill ms')
    twin = ax.twinx()
    tokens = topics.get(TOKENS_TOPIC, [])
    twin.plot([(t - t0) / 1e9 for t, _ in tokens], [m.data for _, m in tokens], '.-',
              color='tab:orange', label='visual tokens kept')
    twin.set_ylabel('visual tokens kept')
    ax.axvline((stamp - t0) / 1e9, color='grey', lw=0.8)
    ax.set_title('prefill ms (blue) and visual tokens kept (orange)', fontsize=9)


def _answers(ax, answers, stamp: int) -> None:
    shown = [(t, m.data) for t, m in answers if t <= stamp][-6:]
    text = '\n'.join(f'{t / 1e9:9.3f} s  {a[:150]!r}' for t, a in shown)
    ax.text(0.0, 1.0, 'answer log (/drive_vlm/answer)\n' + text, va='top', family='monospace',
            fontsize=8, transform=ax.transAxes)
    ax.axis('off')
