"""One worker thread with a one-slot mailbox: the newest item wins, replaced ones are counted."""

from __future__ import annotations

from collections.abc import Callable
import threading
from typing import Generic, TypeVar

Item = TypeVar('Item')


class LatestWinsWorker(Generic[Item]):
    """
    Runs ``handle`` on one thread, always on the newest submitted item.

    Inference is slower than the cameras, so queueing sets would grow latency without bound:
    a submit while the worker is busy replaces the waiting item (``dropped`` counts it).
    """

    def __init__(self, handle: Callable[[Item], None], name: str = 'vlm-worker') -> None:
        self._handle = handle
        self._cond = threading.Condition()
        self._pending: Item | None = None
        self._stopping = False
        self.dropped = 0
        self.errors = 0  # items whose handler raised (the handler should count its own faults)
        self.last_error = ''
        self.busy = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, item: Item) -> bool:
        """Hand ``item`` over; return True when it replaced (dropped) a waiting one."""
        with self._cond:
            replaced = self._pending is not None
            if replaced:
                self.dropped += 1
            self._pending = item
            self._cond.notify()
            return replaced

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the running item, drop the waiting one, and join the thread."""
        with self._cond:
            self._stopping = True
            if self._pending is not None:  # never run: counted like any replaced item
                self.dropped += 1
            self._pending = None
            self._cond.notify()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def idle(self) -> bool:
        """Return True when nothing runs and nothing waits."""
        with self._cond:
            return not self.busy and self._pending is None

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                item, self._pending = self._pending, None
                self.busy = True  # under the lock, so idle never sees a gap
            try:
                self._handle(item)
            except Exception as err:  # noqa: B902 - the worker must outlive any one item
                self.errors += 1
                self.last_error = f'{type(err).__name__}: {err}'
            finally:
                self.busy = False
