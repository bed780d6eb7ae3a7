"""What a long step says about itself: progress lines (done / total, percent and rate, every N
items or T seconds) and its peak memory. Plain module: no Dagster."""

from __future__ import annotations

import resource
import sys
import threading
import time
from collections.abc import Callable


class Progress:
    def __init__(
        self,
        what: str,
        total: int | None,
        log: Callable[[str], None],
        every_items: int = 2_000,
        every_seconds: float = 10.0,
    ):
        self.what, self.total, self.log = what, total, log
        self.every_items, self.every_seconds = every_items, every_seconds
        self.done = 0
        self.started = time.monotonic()
        self._last_items, self._last_time = 0, self.started
        self._lock = threading.Lock()  # advanced from worker threads

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            if self.done - self._last_items >= self.every_items or now - self._last_time >= self.every_seconds:
                self._last_items, self._last_time = self.done, now
                self.log(self.line())

    def line(self) -> str:
        of = f"/{self.total:,} ({100 * self.done / self.total:.0f}%)" if self.total else ""
        return f"{self.what}: {self.done:,}{of} in {self.elapsed:.1f}s, {self.rate:,.0f}/s"

    def finish(self) -> None:
        self.log(self.line() + " - done")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far. Under the multiprocess and Kubernetes
    executors each step is its own process, so this is the step's peak; under the in-process
    executor (the local default) it is the run's peak up to this step."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
