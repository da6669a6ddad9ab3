"""
``drive-vlm run``: the offline path over a bag, with the node's synchronizer and frame path.

Messages are read in log-time order (the order a replay publishes them), paired by the same
ApproximateTimeSynchronizer the node uses, decoded by the same assembly, and run through the
same Pipeline. Every set gives one JSON line (a result, or the fault that skipped it), written
and flushed at once, so a run that stops early keeps what it did. Where the bag carries ground
truth (ground_truth.json), each trajectory is scored (eval/planning.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
import json
from pathlib import Path

import numpy as np

from .reading import BagReader
from .topics import GroundTruth, read_ground_truth
from ..cameras import camera_topic, NUSCENES_CAMERAS
from ..eval.planning import HORIZONS_S, score_trajectory
from ..frames.approximate_sync import ApproximateTimeSynchronizer, DEFAULT_SLOP_S, SyncedSet
from ..frames.assembly import assemble, FrameError
from ..models.load import load_adapter
from ..models.loading import LoadSpec
from ..models.prompts import PLANNING
from ..pipeline.pipeline import Pipeline, Result, RuntimeSettings

HALF_FRAME_NS = 41_666_666  # a set's stamp matches a GT record within half a 12 Hz period


@dataclass(frozen=True)
class RunOptions:
    """What ``drive-vlm run`` was asked for (the CLI flags)."""

    model: str
    bag: str
    out: str
    settings: RuntimeSettings = RuntimeSettings(question=PLANNING)
    load: LoadSpec | None = None
    slop_s: float = DEFAULT_SLOP_S
    limit: int = 0  # stop after this many sets (0: all)
    camera_namespace: str = ''  # as the node's parameter: '/car1' reads /car1/cam_front/...
    progress: bool = True


@dataclass
class RunSummary:
    """Totals over a run, for the table printed at the end."""

    frames: int = 0
    skipped: Counter = field(default_factory=Counter)
    unpaired_messages: int = 0
    trajectories: int = 0
    scored: int = 0
    l2: dict[str, list[float]] = field(default_factory=dict)
    collision: dict[str, list[float]] = field(default_factory=dict)
    timings_ms: dict[str, list[float]] = field(default_factory=dict)
    tokens_kept: list[int] = field(default_factory=list)
    damage: str = ''

    def add(self, result: Result, score) -> None:
        self.frames += 1
        self.trajectories += int(result.trajectory.ok)
        self.tokens_kept.append(sum(result.tokens_after))
        for stage, ms in result.timings_ms.items():
            self.timings_ms.setdefault(stage, []).append(ms)
        if score is not None:
            self.scored += 1
            for key, value in score.l2.items():
                if value is not None:
                    self.l2.setdefault(key, []).append(value)
            for key, value in score.collision.items():
                if value is not None:
                    self.collision.setdefault(key, []).append(value)

    def table(self) -> str:
        """Return a markdown summary table."""
        rows = [('frames run', str(self.frames)),
                ('frames skipped', ', '.join(f'{k} {n}' for k, n in self.skipped.items())
                 or '0'),
                ('camera messages never paired', str(self.unpaired_messages)),
                ('trajectories parsed', f'{self.trajectories} of {self.frames}'),
                ('visual tokens kept (mean per frame)', _mean(self.tokens_kept, '.0f'))]
        rows += [(f'{stage} ms (median)', _median(v)) for stage, v in self.timings_ms.items()]
        for t in HORIZONS_S:
            rows.append((f'L2 {t} s (m, {len(self.l2.get(f"{t}s", []))} scored)',
                         _mean(self.l2.get(f'{t}s', []), '.3f')))
        for t in HORIZONS_S:
            rows.append((f'collision {t} s (%)', _mean(
                [100 * c for c in self.collision.get(f'{t}s', [])], '.2f')))
        if self.damage:
            rows.append(('bag damage', self.damage))
        width = max(len(k) for k, _ in rows)
        lines = [f'| {"metric".ljust(width)} | value |', f'|{"-" * (width + 2)}|-------|']
        return '\n'.join(lines + [f'| {k.ljust(width)} | {v} |' for k, v in rows])


def _mean(values, fmt: str) -> str:
    return format(float(np.mean(values)), fmt) if values else 'n/a'


def _median(values) -> str:
    return f'{float(np.median(values)):.1f}' if values else 'n/a'


def camera_streams(namespace: str = '') -> dict[str, int]:
    """Map every camera topic, raw and compressed, to its stream index in nuScenes order."""
    prefix = ('/' + namespace.strip('/')) if namespace.strip('/') else ''
    return {prefix + camera_topic(name, c): i for i, name in enumerate(NUSCENES_CAMERAS)
            for c in (False, True)}


def run_bag(options: RunOptions, log: Callable[[str], None] = print) -> RunSummary:
    """Run every synchronized set of ``options.bag``; write JSON lines to ``options.out``."""
    streams = camera_streams(options.camera_namespace)
    reader = BagReader(options.bag, list(streams))
    reader.check_topics()
    truth = _ground_truth(options.bag, log)
    spec = options.load or LoadSpec(options.model)
    pipeline = Pipeline(load_adapter(spec, log))
    options.settings.validate(pipeline.shape.layers)
    sync: ApproximateTimeSynchronizer = ApproximateTimeSynchronizer(
        len(NUSCENES_CAMERAS), options.slop_s)
    summary = RunSummary()
    bar = _progress(options, truth)
    Path(options.out).parent.mkdir(parents=True, exist_ok=True)
    with open(options.out, 'w') as out:
        for m in reader.messages():
            stamp = m.msg.header.stamp.sec * 1_000_000_000 + m.msg.header.stamp.nanosec
            synced = sync.add(streams[m.topic], stamp, m.msg)
            if synced is None:
                continue
            line = _run_set(pipeline, options.settings, synced, truth, summary)
            out.write(json.dumps(line) + '\n')
            out.flush()
            bar.update(1)
            if options.limit and summary.frames + sum(summary.skipped.values()) >= options.limit:
                break
    bar.close()
    summary.unpaired_messages = sum(sync.evicted) + sync.pending()
    if reader.damage is not None:
        summary.damage = reader.damage.describe(options.bag)
        log(summary.damage)
    return summary


def _run_set(pipeline: Pipeline, settings: RuntimeSettings, synced: SyncedSet,
             truth: GroundTruth | None, summary: RunSummary) -> dict:
    try:
        frame = assemble(synced, NUSCENES_CAMERAS, settings.question)
    except FrameError as err:
        summary.skipped[err.kind] += 1
        return {'stamp_ns': synced.reference_stamp_ns, 'skipped': err.kind,
                'camera': err.camera, 'error': str(err)}
    try:
        result = pipeline.run(frame, settings)
    except Exception as err:  # noqa: B902 - like the node: skip the frame, count it, go on
        summary.skipped['inference_error'] += 1
        return {'stamp_ns': synced.reference_stamp_ns, 'skipped': 'inference_error',
                'camera': None, 'error': f'{type(err).__name__}: {err}'}
    line = result.summary()
    line['camera_stamps_ns'] = list(synced.stamps_ns)
    record = truth.frame_at(result.stamp_ns, HALF_FRAME_NS) if truth else None
    score = None
    if record is not None:
        line['gt_stamp_ns'] = record.stamp_ns
        line['gt_trajectory'] = [list(p) for p in record.future_trajectory]
        if result.trajectory.ok:
            score = score_trajectory(result.trajectory.points, record)
            line['score'] = score.as_json()
    summary.add(result, score)
    return line


def _ground_truth(bag: str, log: Callable[[str], None]) -> GroundTruth | None:
    try:
        return read_ground_truth(bag)
    except FileNotFoundError as err:
        log(f'{err}; trajectories will not be scored')
        return None


def _progress(options: RunOptions, truth: GroundTruth | None):
    from tqdm import tqdm

    total = len(truth.frames) if truth else None
    if options.limit:
        total = min(total or options.limit, options.limit)
    return tqdm(total=total, unit='set', desc='run', disable=not options.progress)
