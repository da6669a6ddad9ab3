"""
``drive-vlm bench soak``: run many frames and check nothing leaks, drifts or goes missing.

The pipeline (or, with ``--node``, the ROS node fed six cameras at 12 Hz over DDS) runs N
frames. Every ``report_every`` frames it records the process RSS, the GPU memory allocated and
reserved, and the median and p99 latency of that window. The first report at or after the
warm-up is the memory baseline; the run fails (exit 1, with the reason) if any later report
holds more than ``max_growth`` over it, or if a frame is unaccounted for: every frame must be
answered, or counted as dropped (the node's latest-wins), skipped as bad, failed, or lost
before pairing (a camera message DDS did not deliver). Latency drift, the last window's median
over the first's after warm-up, is reported. The report is rewritten at every sample, so an
interrupted soak keeps what it measured (a soak is not resumed: memory growth is a property of
one continuous process).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
import json
import os
from pathlib import Path
import statistics
import sys
import time

import torch


def rss_mb() -> float:
    """Return this process's resident set size now, in MiB (Linux /proc; else the peak)."""
    try:
        pages = int(Path('/proc/self/statm').read_text().split()[1])
        return pages * os.sysconf('SC_PAGE_SIZE') / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class SoakSample:
    """One report: memory now and the latency of the window that ends at ``frame``."""

    frame: int
    rss_mb: float
    gpu_allocated_mb: float | None
    gpu_reserved_mb: float | None
    window_median_ms: float | None
    window_p99_ms: float | None
    answered: int
    elapsed_s: float


@dataclass
class SoakReport:
    mode: str
    frames: int
    report_every: int
    warmup_frames: int
    max_growth: float
    samples: list[SoakSample] = field(default_factory=list)
    answered: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    node: dict | None = None
    baseline_frame: int | None = None
    rss_growth: float | None = None
    gpu_growth: float | None = None
    latency_drift: float | None = None
    unaccounted: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def judge(self) -> None:
        """Fill baseline, growth, drift and unaccounted frames; list what fails."""
        self.problems = []
        after = [s for s in self.samples if s.frame >= self.warmup_frames]
        if len(after) < 2:
            self.problems.append(
                f'only {len(after)} report(s) after the {self.warmup_frames}-frame warm-up: run '
                'more frames or lower --report-every / --warmup-frames to judge memory')
        else:
            base, later = after[0], after[1:]
            self.baseline_frame = base.frame
            self.rss_growth = max(s.rss_mb for s in later) / base.rss_mb - 1
            if base.gpu_allocated_mb:
                self.gpu_growth = (max(s.gpu_allocated_mb for s in later)
                                   / base.gpu_allocated_mb - 1)
            for name, growth in (('process RSS', self.rss_growth),
                                 ('GPU memory allocated', self.gpu_growth)):
                if growth is not None and growth > self.max_growth:
                    self.problems.append(
                        f'{name} grew {growth:.1%} after warm-up (limit {self.max_growth:.0%}; '
                        f'baseline at frame {base.frame})')
            first, last = after[0].window_median_ms, after[-1].window_median_ms
            if first and last:
                self.latency_drift = last / first - 1
        if self.node is not None:
            self.unaccounted = self.node['unaccounted']
        else:
            self.unaccounted = self.frames - self.answered - sum(self.failed.values())
        if self.unaccounted:
            self.problems.append(f'{self.unaccounted} frame(s) neither answered nor counted')

    def table(self) -> str:
        lines = ['| frame | RSS MiB | GPU alloc MiB | GPU reserved MiB | window median ms | '
                 'window p99 ms | answered |', '|' + '---|' * 7]
        for s in self.samples:
            gpu = [f'{v:.0f}' if v is not None else '-'
                   for v in (s.gpu_allocated_mb, s.gpu_reserved_mb)]
            med = [f'{v:.1f}' if v is not None else '-'
                   for v in (s.window_median_ms, s.window_p99_ms)]
            lines.append(f'| {s.frame} | {s.rss_mb:.0f} | {gpu[0]} | {gpu[1]} | {med[0]} | '
                         f'{med[1]} | {s.answered} |')
        return '\n'.join(lines)

    def verdict(self) -> str:
        growth = (f'RSS {self.rss_growth:+.1%}' if self.rss_growth is not None else 'RSS n/a')
        if self.gpu_growth is not None:
            growth += f', GPU {self.gpu_growth:+.1%}'
        drift = (f'{self.latency_drift:+.1%}' if self.latency_drift is not None else 'n/a')
        head = (f'soak ({self.mode}): {self.frames} frames, {self.answered} answered, failed '
                f'{self.failed or 0}, unaccounted {self.unaccounted}; memory after warm-up '
                f'{growth} (limit {self.max_growth:.0%}); latency drift {drift}')
        if self.ok:
            return head + ' -> PASS'
        return head + ' -> FAIL: ' + '; '.join(self.problems)


class _Monitor:
    """Take a sample every ``every`` frames and rewrite the JSON report."""

    def __init__(self, report: SoakReport, device: torch.device, json_out: str | None) -> None:
        self.report, self.device, self.json_out = report, device, json_out
        self.start = time.monotonic()
        self.window: list[float] = []

    def sample(self, frame: int, answered: int) -> None:
        cuda = self.device.type == 'cuda'
        window = sorted(self.window)
        self.report.samples.append(SoakSample(
            frame=frame, rss_mb=rss_mb(),
            gpu_allocated_mb=torch.cuda.memory_allocated(self.device) / 2**20 if cuda else None,
            gpu_reserved_mb=torch.cuda.memory_reserved(self.device) / 2**20 if cuda else None,
            window_median_ms=statistics.median(window) if window else None,
            window_p99_ms=window[min(len(window) - 1, int(0.99 * len(window)))] if window
            else None,
            answered=answered, elapsed_s=time.monotonic() - self.start,
        ))
        self.window = []
        self.write()

    def write(self) -> None:
        if self.json_out:
            path = Path(self.json_out)
            path.parent.mkdir(parents=True, exist_ok=True)
            out = asdict(self.report)
            out['ok'] = self.report.ok
            path.write_text(json.dumps(out, indent=1) + '\n')


def soak_pipeline(pipe, settings, report: SoakReport, monitor: _Monitor,
                  progress: bool = True) -> None:
    """Run ``report.frames`` drawn frames through ``pipe``; count every failure by kind."""
    from tqdm import tqdm

    from ..pipeline.synthetic_frames import synthetic_frame

    frames = [synthetic_frame(i, size=(90, 160)) for i in range(12)]
    failed: Counter[str] = Counter()
    for i in tqdm(range(report.frames), unit='frame', desc='soak', disable=not progress):
        try:
            result = pipe.run(frames[i % len(frames)], settings)
        # A soak counts failures instead of stopping at the first one.
        except Exception as err:  # noqa: B902
            if not failed:
                print(f'frame {i} failed: {type(err).__name__}: {err}', file=sys.stderr)
            failed[type(err).__name__] += 1
        else:
            report.answered += 1
            monitor.window.append(sum(result.timings_ms.values()))
        report.failed = dict(failed)
        if (i + 1) % report.report_every == 0 or i + 1 == report.frames:
            monitor.sample(i + 1, report.answered)


def soak_node(params: dict, report: SoakReport, monitor: _Monitor, progress: bool = True) -> None:
    """Publish ``report.frames`` six-camera sets at 12 Hz into the node; sample as they go."""
    from tqdm import tqdm

    from .node_load import NodeRun, publish_live

    run = NodeRun(params)
    bar = tqdm(total=report.frames, unit='set', desc='soak --node', disable=not progress)

    def on_progress(sent: int) -> None:
        bar.update(1)
        if sent % report.report_every == 0 or sent == report.frames:
            with run.lock:
                latencies = [r['latency_ms'] for r in run.results[len(seen):]]
                seen.extend(latencies)
            monitor.window = latencies
            monitor.sample(sent, run.node.health.processed)

    seen: list[float] = []
    try:
        load = publish_live(run, report.frames, on_progress=on_progress)
    finally:
        bar.close()
        run.close()
    report.answered = load.answered
    report.node = load.summary()


@dataclass(frozen=True)
class SoakOptions:
    """What ``drive-vlm bench soak`` runs; the CLI builds it from its flags."""

    frames: int = 10000
    node: bool = False  # drive the ROS node over DDS at 12 Hz instead of the pipeline
    model: str = ''  # a checkpoint; '': the embedded model
    report_every: int = 500  # frames between memory and latency reports
    warmup_frames: int = 0  # frames before the memory baseline; 0: one report window
    max_growth: float = 0.05  # allowed memory growth after warm-up, as a fraction
    keep_ratio: float = 0.1
    pruner: str = 'tfps'
    max_new_tokens: int = 16
    decode_backend: str = 'auto'
    device: str = 'cpu'
    threads: int = 0  # torch CPU threads; 0: torch's default
    json_out: str | None = None


def run_soak_bench(options: SoakOptions) -> int:
    """Run the soak (module doc); return 0 when it passed, 1 when it failed, 2 on bad options."""
    from ..models.adapters import load_adapter
    from ..models.loading import LoadSpec, resolve_checkpoint
    from ..pipeline.pipeline import Pipeline, RuntimeSettings

    if options.frames < 1 or options.report_every < 1:
        print('drive-vlm bench soak: --frames and --report-every must be >= 1', file=sys.stderr)
        return 2
    if options.threads:
        torch.set_num_threads(options.threads)
    directory = options.model or str(resolve_checkpoint(''))
    warmup = options.warmup_frames or options.report_every
    report = SoakReport('node over DDS' if options.node else 'pipeline', options.frames,
                        options.report_every, warmup, options.max_growth)
    device = torch.device(options.device)
    monitor = _Monitor(report, device, options.json_out)
    print(f'soak: {options.frames} frames ({report.mode}) on {directory}, {options.device}, keep '
          f'{options.keep_ratio}, {options.max_new_tokens} tokens, decode '
          f'{options.decode_backend}')
    if options.node:
        params = {'model': directory, 'keep_ratio': float(options.keep_ratio),
                  'pruner': options.pruner, 'max_new_tokens': options.max_new_tokens,
                  'device': options.device, 'decode_backend': options.decode_backend}
        soak_node(params, report, monitor)
    else:
        pipe = Pipeline(load_adapter(LoadSpec(directory, device=options.device)),
                        log=lambda m: print(f'[decode] {m}', file=sys.stderr))
        settings = RuntimeSettings(keep_ratio=options.keep_ratio, pruner=options.pruner,
                                   max_new_tokens=options.max_new_tokens,
                                   decode_backend=options.decode_backend)
        soak_pipeline(pipe, settings, report, monitor)
    report.judge()
    monitor.write()
    print(report.table())
    if report.node:
        n = report.node
        print(f'node: {n["sets_sent"]} sets sent, {n["answered"]} answered, dropped '
              f'{n["dropped"] or 0}, skipped {n["skipped"] or 0}, lost before pairing '
              f'{n["sets_lost"]}, unpaired messages {n["unpaired_messages"]}; latency '
              + ', '.join(f'{k} {v:.0f} ms' for k, v in n['percentiles_ms'].items()))
    print(report.verdict())
    return 0 if report.ok else 1
