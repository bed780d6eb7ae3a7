"""A thread-pool map that keeps only a bounded number of tasks in flight.

``ThreadPoolExecutor.map`` submits every task up front; over millions of images that holds
millions of futures. This keeps ``2 x workers`` pending, yielding results as they finish.
Threads suit the work here: S3 calls wait on the network and Pillow releases the GIL while
it decodes.

``chunked_map`` gives each task a chunk of items: a future and a wait per image cost more
Python than a local read of the image does (4,000 photos from a local store: 0.28-0.46 s one
task each, 0.16-0.22 s in chunks of 32, on 2 cores), and that Python holds the GIL that the
decode and predict loop beside it needs. The threads still do as many reads at once.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sized
from itertools import islice
from pathlib import Path
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def bounded_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """Apply ``fn`` to every item on ``workers`` threads; yield results in completion order.

    An exception in ``fn`` propagates to the caller after the tasks already running finish;
    pending tasks are cancelled.
    """
    workers = max(1, workers)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fashion-io") as pool:
        pending: set[Future[R]] = set()
        try:
            for item in items:
                pending.add(pool.submit(fn, item))
                if len(pending) >= 2 * workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        yield future.result()
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        finally:
            for future in pending:
                future.cancel()


def chunked_map(fn: Callable[[T], R], items: Iterable[T], workers: int, chunk: int = 32) -> Iterator[R]:
    """``bounded_map`` with up to ``chunk`` items a task: ``fn`` of each item, a chunk's results
    in its items' order, chunks in completion order. Items with a length are split so that every
    thread has work (60 items on 16 threads: chunks of 2, not 2 chunks of 32). When the caller
    stops early or an item fails, the chunks already running stop at their next item."""
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, not {chunk}")
    if isinstance(items, Sized):
        chunk = max(1, min(chunk, math.ceil(len(items) / max(1, 2 * workers))))
    iterator = iter(items)
    chunks = iter(lambda: list(islice(iterator, chunk)), [])
    stopped = threading.Event()

    def run(part: list[T]) -> list[R]:
        out = []
        for item in part:
            if stopped.is_set():
                break
            out.append(fn(item))
        return out

    try:
        for results in bounded_map(run, chunks, workers):
            yield from results
    finally:
        stopped.set()


def usable_cores(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may use: its CPU affinity, capped by its cgroup's CPU quota (a
    Kubernetes CPU limit is a quota, not a cpuset: a pod limited to 2 CPUs on a 64-core node
    sees 64 in its affinity). Reads cgroup v2's ``cpu.max``; without one (cgroup v1, not Linux's
    unified hierarchy), or with one it cannot read, the affinity."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota == "max":
            return cores
        return max(1, min(cores, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError, ZeroDivisionError):
        return cores
