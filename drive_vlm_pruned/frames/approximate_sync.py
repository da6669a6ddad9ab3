"""
Approximate-time synchronisation of N stamped streams, as message_filters' Python synchronizer.

The rule (``message_filters.ApproximateTimeSynchronizer.add``): each stream keeps a queue of up
to ``queue_size`` messages keyed by stamp (a repeated stamp replaces the older message; the
oldest stamp is evicted first). When a message arrives on stream i, every other stream's
candidates within ``slop`` of its stamp are sorted by distance to it; combinations are tried in
that order (``itertools.product``) and the first whose spread (max - min stamp) is below
``slop`` is emitted, and its messages leave their queues. If some stream has no candidate, nothing
happens. The one extension: streams can be made inactive (a silent camera), so a set of the
active streams is emitted with ``None`` for the inactive ones.

Why the default slop is 0.06 s: nuScenes' six exposures of one sweep lie within ~50 ms, so a
slop just above that pairs every set; at 12 Hz (83 ms period) a slop of 0.10 s or more mixes
neighbouring sweeps as soon as a message is dropped. Keep it below half the frame period.

Pure Python and ROS-free, so the node and the offline bag runner share this exact code.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
import itertools
from typing import Generic, TypeVar

Msg = TypeVar('Msg')

DEFAULT_SLOP_S = 0.06


@dataclass(frozen=True)
class SyncedSet(Generic[Msg]):
    """One synchronized set: a message per stream (None for inactive streams) and their stamps."""

    messages: tuple[Msg | None, ...]
    stamps_ns: tuple[int | None, ...]

    @property
    def reference_stamp_ns(self) -> int:
        """Return the stamp of the first present stream (CAM_FRONT in nuScenes order)."""
        return next(s for s in self.stamps_ns if s is not None)

    @property
    def spread_ns(self) -> int:
        """Return max - min stamp over the present streams."""
        present = [s for s in self.stamps_ns if s is not None]
        return max(present) - min(present)


class ApproximateTimeSynchronizer(Generic[Msg]):
    """
    Pairs N streams by stamp with message_filters' approximate-time rule.

    ``add`` returns the set it completed, or None. Not thread-safe: call it from one thread
    (the node's executor, or the offline runner's loop).
    """

    def __init__(self, streams: int, slop_s: float = DEFAULT_SLOP_S,
                 queue_size: int = 10) -> None:
        if streams < 1:
            raise ValueError(f'streams={streams}: need at least one stream')
        if not slop_s > 0:
            raise ValueError(f'slop={slop_s} s must be > 0 (0.06 s suits nuScenes)')
        if queue_size < 1:
            raise ValueError(f'queue_size={queue_size} must be >= 1')
        self.slop_ns = int(round(slop_s * 1e9))
        self.queue_size = queue_size
        self.queues: list[dict[int, Msg]] = [{} for _ in range(streams)]
        self.active: tuple[bool, ...] = (True,) * streams
        self.evicted = [0] * streams  # messages pushed out of a full queue, never paired

    def set_active(self, active: Sequence[bool]) -> list[SyncedSet[Msg]]:
        """
        Choose which streams a set must contain, and return the sets that completes.

        Inactive streams' queues are cleared (counted in ``evicted``). Leaving a silent stream
        out can complete sets already waiting in the other queues, so they are matched again.
        """
        if len(active) != len(self.queues) or not any(active):
            raise ValueError(f'need {len(self.queues)} flags with at least one True')
        self.active = tuple(bool(a) for a in active)
        for i, (queue, on) in enumerate(zip(self.queues, self.active)):
            if not on:
                self.evicted[i] += len(queue)
                queue.clear()
        return self._rematch()

    def add(self, stream: int, stamp_ns: int, msg: Msg) -> SyncedSet[Msg] | None:
        """Queue ``msg`` of ``stream`` and return the set it completes, if any."""
        if not self.active[stream]:
            return None
        queue = self.queues[stream]
        queue[stamp_ns] = msg
        while len(queue) > self.queue_size:
            del queue[min(queue)]
            self.evicted[stream] += 1
        if stamp_ns not in queue:  # older than a full queue (stamps went back): evicted itself
            return None
        return self._match(stream, stamp_ns)

    def _match(self, stream: int, stamp_ns: int) -> SyncedSet[Msg] | None:
        others = [i for i, on in enumerate(self.active) if on and i != stream]
        candidates = []
        for i in others:
            near = sorted((abs(s - stamp_ns), s) for s in self.queues[i]
                          if abs(s - stamp_ns) <= self.slop_ns)
            if not near:
                return None
            candidates.append([s for _, s in near])
        for combo in itertools.product(*candidates):
            stamps = dict(zip(others, combo))
            stamps[stream] = stamp_ns
            if max(stamps.values()) - min(stamps.values()) < self.slop_ns:
                return self._emit(stamps)
        return None

    def _rematch(self) -> list[SyncedSet[Msg]]:
        # As if each waiting message of the first active stream had just arrived, oldest first.
        first = self.active.index(True)
        out = []
        for stamp in sorted(self.queues[first]):
            if stamp in self.queues[first]:
                done = self._match(first, stamp)
                if done is not None:
                    out.append(done)
        return out

    def _emit(self, stamps: dict[int, int]) -> SyncedSet[Msg]:
        messages = tuple(self.queues[i].pop(stamps[i]) if i in stamps else None
                         for i in range(len(self.queues)))
        return SyncedSet(messages, tuple(stamps.get(i) for i in range(len(self.queues))))

    def pending(self) -> int:
        """Return the messages waiting in the queues."""
        return sum(len(q) for q in self.queues)


def synchronize(stream_messages: Iterable[tuple[int, int, Msg]], streams: int,
                slop_s: float = DEFAULT_SLOP_S,
                queue_size: int = 10) -> list[SyncedSet[Msg]]:
    """Run ``(stream, stamp_ns, msg)`` tuples in arrival order through one synchronizer."""
    sync: ApproximateTimeSynchronizer[Msg] = ApproximateTimeSynchronizer(
        streams, slop_s, queue_size)
    out = []
    for stream, stamp, msg in stream_messages:
        done = sync.add(stream, stamp, msg)
        if done is not None:
            out.append(done)
    return out
