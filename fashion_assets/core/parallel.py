"""A thread-pool map that keeps only a bounded number of tasks in flight.

``ThreadPoolExecutor.map`` submits every task up front; over millions of images that holds
millions of futures. This keeps ``2 x workers`` pending, yielding results as they finish.
Threads suit the work here: S3 calls wait on the network and Pillow releases the GIL while
it decodes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
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
