"""TensorFlow is imported only where a step or command needs it, in one place
(``core/tf_runtime.py``), and its start-up notices never reach the user's terminal; what the code
location, the CLI and TensorFlow load is left out of the collector (``core/startup.py``). Real
processes: each case starts a fresh Python, the way a CLI call or a Dagster step does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from fashion_assets.core.tf_runtime import STARTUP_NOTICE

from .test_structure import imported_modules, modules

ROOT = Path(__file__).resolve().parents[1]
ONLY_HERE = "core/tf_runtime.py"


def python(code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**environ, **env}, capture_output=True,
                          text=True, timeout=300, check=True)


def test_only_tf_runtime_imports_tensorflow_or_keras():
    importing = sorted(name for name, tree in modules().items()
                       if imported_modules(tree) & {"tensorflow", "keras"})
    assert importing == [ONLY_HERE]


def test_the_cli_and_the_code_location_load_without_tensorflow_or_dagster_aws():
    """The embedded default: neither TensorFlow (a step that needs a model imports it) nor
    dagster-aws (an S3 store's resource imports it) is loaded by the CLI or the code location."""
    loaded = python("import sys, fashion_assets.cli, fashion_assets.definitions; "
                    "print(sorted({'tensorflow', 'keras', 'dagster_aws'} & set(sys.modules)))", FASHION_STORE_URL="")
    assert loaded.stdout == "[]\n"


def test_an_s3_store_loads_dagster_aws_and_its_step_io_manager():
    loaded = python("import sys; from fashion_assets.resources import resources_from_env; r = resources_from_env(); "
                    "print(type(r['store']).__name__, type(r['io_manager']).__name__, 'tensorflow' in sys.modules)",
                    FASHION_STORE_URL="s3://bucket/prefix")
    assert loaded.stdout == "S3StoreResource S3PickleIOManager False\n"


# In a fresh Python: whether the loaded modules' namespaces are still among the collector's objects
# (frozen ones are not), and whether a reference cycle made afterwards is still collected.
FROZEN = """
import gc, weakref
{load}
tracked = {{id(o) for o in gc.get_objects()}}
class Cycle: pass
cycle = Cycle(); cycle.me = cycle; freed = []; weakref.finalize(cycle, freed.append, "collected"); del cycle
gc.collect()
print([id(vars(m)) in tracked for m in modules], freed)
"""


def test_what_the_code_location_and_the_cli_load_is_frozen_and_later_cycles_are_still_collected():
    load = "import dagster, fashion_assets.definitions as d, fashion_assets.cli as c; modules = [dagster, d, c]"
    assert python(FROZEN.format(load=load)).stdout == "[False, False, False] ['collected']\n"


def test_what_tensorflow_and_keras_load_is_frozen():
    load = "from fashion_assets.core import tf_runtime; modules = [tf_runtime.tensorflow(), tf_runtime.keras()]"
    assert python(FROZEN.format(load=load)).stdout == "[False, False] ['collected']\n"


def test_the_first_import_prints_nothing_without_a_log_level_set():
    run = python("from fashion_assets.core import tf_runtime; import os; tf = tf_runtime.tensorflow(); "
                 "print(int(tf.constant(2) * 3), os.environ['TF_CPP_MIN_LOG_LEVEL'])")
    assert (run.stdout, run.stderr) == ("6 2\n", "")


def test_a_user_who_asks_for_tensorflows_log_sees_it():
    run = python("from fashion_assets.core import tf_runtime; tf_runtime.tensorflow()", TF_CPP_MIN_LOG_LEVEL="0")
    assert "oneDNN custom operations are on" in run.stderr


def test_only_the_startup_notices_are_dropped():
    caught = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796284477.164209   32531 port.cc:153] oneDNN custom operations are on. You may see ...",
        "I0000 00:00:1796283794.394678   31221 cpu_feature_guard.cc:227] This TensorFlow binary is optimized ...",
        "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow ...",
        "",
        "E0000 00:00:1796283794.394678   31221 cuda_dnn.cc:8310] Unable to register cuDNN factory",
        "a line another thread wrote meanwhile",
    ]
    assert [line for line in caught if not STARTUP_NOTICE.match(line)] == caught[5:]
