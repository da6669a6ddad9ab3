"""Timing helpers shared by the benchmarks: repeat a callable, report median and spread."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
import statistics
import time

import torch


@dataclass(frozen=True)
class Timing:
    """Milliseconds over the timed repeats (after warm-up)."""

    median_ms: float
    spread_ms: float  # interquartile range, p75 - p25
    min_ms: float
    max_ms: float
    repeats: int


def time_call(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> Timing:
    """
    Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed.

    On CUDA each call is bracketed by CUDA events and the stream is synchronised, so the figure
    is GPU time of the whole call; on CPU it is ``time.perf_counter`` wall time.
    """
    for _ in range(warmup):
        fn()
    samples = [_once(fn, device) for _ in range(max(1, repeats))]
    return summarize(samples)


def summarize(samples: list[float]) -> Timing:
    """Median, interquartile spread, min and max of millisecond samples."""
    if len(samples) >= 2:
        q = statistics.quantiles(samples, n=4, method='inclusive')
        spread = q[2] - q[0]
    else:
        spread = 0.0
    return Timing(statistics.median(samples), spread, min(samples), max(samples), len(samples))


def _once(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == 'cuda':
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000.0


def available_devices() -> list[torch.device]:
    """CPU, plus the current CUDA device when there is one."""
    devices = [torch.device('cpu')]
    if torch.cuda.is_available():
        devices.append(torch.device('cuda', torch.cuda.current_device()))
    return devices


def device_label(device: torch.device) -> str:
    if device.type == 'cuda':
        return f'cuda ({torch.cuda.get_device_name(device)})'
    return f'cpu ({torch.get_num_threads()} threads)'
