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
from .recording import camera_inputs, Diagnostics, RecordedSet, Recorder, view_overlays
from .rig_calibration import bag_calibration, first_camera_infos
from .topics import camera_info_topic, FrameTruth, GroundTruth, read_ground_truth, TF_STATIC_TOPIC
from ..cameras import camera_topic, HALF_FRAME_NS, namespaced, NUSCENES_CAMERAS
from ..eval.planning import HORIZONS_S, score_trajectory
from ..frames.approximate_sync import ApproximateTimeSynchronizer, DEFAULT_SLOP_S, SyncedSet
from ..frames.assembly import assemble, FrameError
from ..frames.stamps import header_stamp_ns, stamp_fields
from ..models.adapters import load_adapter
from ..models.loading import LoadSpec
from ..models.prompts import PLANNING
from ..pipeline.pipeline import Pipeline, Result, RuntimeSettings


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
    record: str = ''  # FILE.mcap: record inputs and outputs (bag/recording.py); '' = none
    record_views: tuple[str, ...] = ('CAM_FRONT',)  # the views whose plan overlay is recorded


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
    recording: str = ''

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
        if self.recording:
            rows.append(('recording', self.recording))
        width = max(len(k) for k, _ in rows)
        lines = [f'| {"metric".ljust(width)} | value |', f'|{"-" * (width + 2)}|-------|']
        return '\n'.join(lines + [f'| {k.ljust(width)} | {v} |' for k, v in rows])


def _mean(values, fmt: str) -> str:
    return format(float(np.mean(values)), fmt) if values else 'n/a'


def _median(values) -> str:
    return f'{float(np.median(values)):.1f}' if values else 'n/a'


def camera_streams(namespace: str = '') -> dict[str, int]:
    """Map every camera topic, raw and compressed, to its stream index in nuScenes order."""
    return {namespaced(camera_topic(name, c), namespace): i
            for i, name in enumerate(NUSCENES_CAMERAS) for c in (False, True)}


def run_bag(options: RunOptions, log: Callable[[str], None] = print) -> RunSummary:
    """Run every synchronized set of ``options.bag``; write JSON lines to ``options.out``."""
    streams = camera_streams(options.camera_namespace)
    reader = BagReader(options.bag, list(streams) + list(_info_topics(options)))
    reader.check_topics()
    truth = _ground_truth(options.bag, log)
    recording = _Recording.start(options) if options.record else None  # fails before the load
    spec = options.load or LoadSpec(options.model)
    pipeline = Pipeline(load_adapter(spec, log))
    options.settings.validate(pipeline.shape.layers)
    sync: ApproximateTimeSynchronizer = ApproximateTimeSynchronizer(
        len(NUSCENES_CAMERAS), options.slop_s)
    summary = RunSummary()
    bar = _progress(options, truth)
    Path(options.out).parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(options.out, 'w') as out:
            for m in reader.messages():
                if m.topic not in streams:
                    recording.keep_info(m)
                    continue
                synced = sync.add(streams[m.topic], header_stamp_ns(m.msg), m.msg)
                if synced is None:
                    continue
                line, ran = _run_set(pipeline, options.settings, synced, truth, summary)
                out.write(json.dumps(line) + '\n')
                out.flush()
                if recording is not None and ran is not None:
                    recording.record(synced, line, *ran, summary)
                bar.update(1)
                if options.limit and _sets(summary) >= options.limit:
                    break
    finally:
        bar.close()
        if recording is not None:
            summary.recording = recording.close()
            log(summary.recording)
    summary.unpaired_messages = sum(sync.evicted) + sync.pending()
    if reader.damage is not None:
        summary.damage = reader.damage.describe(options.bag)
        log(summary.damage)
    return summary


def _sets(summary: RunSummary) -> int:
    return summary.frames + sum(summary.skipped.values())


def _info_topics(options: RunOptions) -> dict[str, str]:
    """Return the CameraInfo topics a recording copies (topic -> camera); none without one."""
    if not options.record:
        return {}
    return {namespaced(camera_info_topic(name), options.camera_namespace): name
            for name in NUSCENES_CAMERAS}


@dataclass
class _Recording:
    """``run --record``: the recorder, the bag's calibration, each camera's last CameraInfo."""

    recorder: Recorder
    options: RunOptions
    calibration: dict
    infos: dict[str, bytes]

    @classmethod
    def start(cls, options: RunOptions) -> _Recording:
        calibration = bag_calibration(options.bag)
        recorder = Recorder(options.record, calibration)
        # A set completes on its last image, before that camera's CameraInfo of the same
        # stamp is read: start from each camera's first one, so every set has all six.
        store = recorder.ts
        infos = {c: store.serialize_cdr(m, 'sensor_msgs/msg/CameraInfo')
                 for c, m in first_camera_infos(options.bag).items() if c != TF_STATIC_TOPIC}
        return cls(recorder, options, calibration, infos)

    def keep_info(self, m) -> None:
        camera = _info_topics(self.options).get(m.topic)
        if camera is not None:
            self.infos[camera] = self.recorder.ts.serialize_cdr(m.msg, m.msgtype)

    def record(self, synced: SyncedSet, line: dict, frame, result: Result,
               record: FrameTruth | None, summary: RunSummary) -> None:
        truth_xy = None
        if record is not None:
            truth_xy = [p for p, ok in zip(record.future_trajectory, record.future_valid) if ok]
        overlays = view_overlays(frame, result, self.calibration, self.options.record_views,
                                 truth_xy)
        cameras = camera_inputs(NUSCENES_CAMERAS, synced.messages, frame.images, frame.names,
                                self.infos)
        stamped = dict(line, stamp=stamp_fields(result.stamp_ns))
        self.recorder.record(RecordedSet(
            result.stamp_ns, result.answer, json.dumps(stamped),
            result.trajectory.points if result.trajectory.ok else None, cameras, overlays,
            [_diagnostics(summary, self.recorder)], truth_xy,
            prefill_ms=result.timings_ms.get('prefill', float('nan')),
            tokens_kept=sum(result.tokens_after)))

    def close(self) -> str:
        self.recorder.close()
        return self.recorder.summary()


def _diagnostics(summary: RunSummary, recorder: Recorder) -> Diagnostics:
    """Return the runner's /diagnostics: the node's inference counters, as far as they apply."""
    values = {'frames_processed': summary.frames,
              'skipped_bad_total': sum(summary.skipped.values()),
              'recording.sets_recorded': recorder.sets_recorded,
              'recording.sets_lost': recorder.sets_lost}
    values.update({f'skipped_bad.{k}': n for k, n in sorted(summary.skipped.items())})
    if summary.tokens_kept:
        values['tokens_kept_total'] = summary.tokens_kept[-1]
    for stage, ms in summary.timings_ms.items():
        values[f'{stage}_ms'] = f'{ms[-1]:.1f}'
    level = 1 if summary.skipped or recorder.error else 0
    return Diagnostics('drive_vlm: inference', level, f'{summary.frames} frames', values)


def _run_set(pipeline: Pipeline, settings: RuntimeSettings, synced: SyncedSet,
             truth: GroundTruth | None, summary: RunSummary) -> tuple[dict, tuple | None]:
    """Return the set's JSON line and, if it ran, (CameraSet, Result, its truth record)."""
    try:
        frame = assemble(synced, NUSCENES_CAMERAS, settings.question)
    except FrameError as err:
        summary.skipped[err.kind] += 1
        return {'stamp_ns': synced.reference_stamp_ns, 'skipped': err.kind,
                'camera': err.camera, 'error': str(err)}, None
    try:
        result = pipeline.run(frame, settings)
    except Exception as err:  # noqa: B902 - like the node: skip the frame, count it, go on
        summary.skipped['inference_error'] += 1
        return {'stamp_ns': synced.reference_stamp_ns, 'skipped': 'inference_error',
                'camera': None, 'error': f'{type(err).__name__}: {err}'}, None
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
    return line, (frame, result, record)


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
