"""TensorFlow and Keras, imported on first use and quietly. Plain module: no Dagster.

Every module of the project that needs TensorFlow asks here (``tensorflow()``, ``keras()``) inside
the function that needs it, never at import time: the CLI, the code location's load and the
assets that need no model (``image_set``, ``augmented_set``) never pay TensorFlow's import
(about 2 s on 2 cores).

The first import is also where TensorFlow's start-up notices are silenced. TensorFlow 2.20's C++
libraries log through absl before anything initialises absl logging, so ``TF_CPP_MIN_LOG_LEVEL``
does not reach them: every process printed ``WARNING: All log messages before
absl::InitializeLog() is called are written to STDERR`` and the oneDNN notice. The only switch
that removes the notice, ``TF_ENABLE_ONEDNN_OPTS=0``, also turns oneDNN off, which costs a third
of the CPU inference rate here (747 vs 1,120 images/s at batch 64). So the environment is set
before the first import (``TF_CPP_MIN_LOG_LEVEL=2`` unless the user chose a level), and while the
libraries load and run their first op, the process's stderr (file descriptor 2, where the C++ code
writes) goes to a temporary file; what it caught goes back to stderr except those start-up notices.
With ``TF_CPP_MIN_LOG_LEVEL=0`` or ``1`` nothing is caught: the user asked to see it all.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading

from .startup import freeze_what_is_loaded

# What TensorFlow prints at start-up that no user acts on.
STARTUP_NOTICE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I\d{4} [\d:. ]+\d+ (port|cpu_feature_guard)\.cc:\d+\] .*"
    r"|To enable the following instructions: .*|)$"
)
_lock = threading.Lock()


def tensorflow():
    """The ``tensorflow`` module, imported quietly the first time."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    with _lock:
        if "tensorflow" in sys.modules:
            return sys.modules["tensorflow"]
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        if os.environ["TF_CPP_MIN_LOG_LEVEL"] in ("0", "1"):
            import tensorflow as tf
        else:
            tf = _import_quietly()
        freeze_what_is_loaded()  # ~325,000 objects with TensorFlow and the Keras it loads: 0.6 s of exit (startup.py)
        return tf


def keras():
    """The ``keras`` module (Keras 3 on TensorFlow), after ``tensorflow()``."""
    tensorflow()
    import keras as module

    return module


def _import_quietly():
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import tensorflow as tf

            tf.constant(0) + 0  # the first op loads the kernels' library, which prints its own notice
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        caught.seek(0)
        kept = [line for line in caught.read().decode(errors="replace").splitlines()
                if not STARTUP_NOTICE.match(line)]
    if kept:
        print("\n".join(kept), file=sys.stderr, flush=True)
    return tf
