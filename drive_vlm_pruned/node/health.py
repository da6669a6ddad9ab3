"""What the node counts and reports on /diagnostics: rates, frames, faults, latency, tokens."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
import threading
import time

import numpy as np

RATE_WINDOW_S = 2.0
LATENCY_WINDOW = 200


@dataclass
class CameraHealth:
    """Receive times of one camera (monotonic seconds) for its rate and silence."""

    name: str
    received: int = 0
    last: float | None = None
    times: deque = field(default_factory=lambda: deque(maxlen=256))

    def mark(self, now: float) -> None:
        self.received += 1
        self.last = now
        self.times.append(now)

    def rate_hz(self, now: float) -> float:
        recent = [t for t in self.times if now - t <= RATE_WINDOW_S]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-9)

    def silent_for(self, now: float, started: float) -> float:
        """Seconds since the last message (or since start, when none came yet)."""
        return now - (self.last if self.last is not None else started)


class NodeHealth:
    """Thread-safe counters the executor and the worker thread both update."""

    def __init__(self, cameras: tuple[str, ...]) -> None:
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.cameras = [CameraHealth(n) for n in cameras]
        self.processed = 0
        self.degraded = 0
        self.dropped: Counter[str] = Counter()  # reason -> sets dropped before inference
        self.skipped: Counter[str] = Counter()  # fault kind -> sets skipped as bad
        self.fault_cameras: dict[str, str] = {}  # fault kind -> camera of its last occurrence
        self.latencies_ms: deque = deque(maxlen=LATENCY_WINDOW)
        self.tokens_kept: dict[str, int] = {}
        self.last_error = ''
        self.model_state = 'loading'
        self.model_detail = ''

    def count_drop(self, reason: str, n: int = 1) -> None:
        with self.lock:
            self.dropped[reason] += n

    def count_fault(self, kind: str, camera: str | None, message: str) -> bool:
        """Count a skipped set; return True the first time this kind is seen (log it then)."""
        with self.lock:
            first = kind not in self.skipped
            self.skipped[kind] += 1
            if camera:
                self.fault_cameras[kind] = camera
            self.last_error = f'{kind}: {message}'
            return first

    def count_result(self, latency_ms: float, tokens: dict[str, int], degraded: bool) -> None:
        with self.lock:
            self.processed += 1
            self.degraded += int(degraded)
            self.latencies_ms.append(latency_ms)
            self.tokens_kept = dict(tokens)

    def latency_percentiles(self) -> dict[str, float]:
        with self.lock:
            values = np.asarray(self.latencies_ms, dtype=np.float64)
        if values.size == 0:
            return {}
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        return {'p50': float(p50), 'p90': float(p90), 'p99': float(p99),
                'max': float(values.max())}

    def silent_cameras(self, timeout_s: float, now: float | None = None) -> list[str]:
        now = time.monotonic() if now is None else now
        return [c.name for c in self.cameras if c.silent_for(now, self.started) > timeout_s]
