"""Start-up and exit speed: what a process has loaded is left out of the cyclic collector. Plain
module: no Dagster.

A process of ours (a Dagster CLI run or step, the code server, ``fashion-assets``, a training or
prediction step) imports Dagster, SQLAlchemy, pyarrow and maybe TensorFlow: 190,000 to 330,000
objects (modules, classes, functions) that live as long as the process. CPython's collector
traverses every one of them in each full collection, and the interpreter's shutdown collects and
tears them down again. Measured on 2 cores (bench/overhead.py, issue 21): a no-op one-partition
CLI run spent ~0.3 s in full collections and ~0.45 s in shutdown (2.45 s in all; Dagster's own
floor, one no-op asset, spends ~0.39 s in shutdown); a process that imports TensorFlow exits in
0.56-0.65 s. With what was loaded frozen: 1.79-1.94 s, and 0.06 s to exit after TensorFlow.

``gc.freeze()`` moves every object the collector tracks into a permanent generation that no later
collection visits. Objects made afterwards are collected as always, and a frozen object is still
freed when its reference count drops to zero; only a reference cycle that exists when we freeze
and becomes garbage later stays until the process exits. At the points we freeze (after imports)
that is a few hundred objects once (185 unreachable of 188,729 after Dagster's import, 38 after the
code location's), so nothing grows with the work a process does.
"""

from __future__ import annotations

import gc


def freeze_what_is_loaded() -> None:
    """Leave every object that exists now out of all later collections (see the module's doc).
    Called after a big import: the code location's, the CLI's, and TensorFlow's first import
    (``tf_runtime``; it loads Keras too). Cheap: the collector splices its lists."""
    gc.freeze()
