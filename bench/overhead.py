"""Benchmark: what one partition run costs beyond its work (run by hand, not in CI).

    .venv/bin/python bench/overhead.py [--repeats 3] [--dataset examples/sample-catalog]

Builds a throwaway embedded catalog (SQLite + a local folder, the sample catalog by default),
registers two queries and materialises them once, then times, in the same run:

  no-op run      ``dagster asset materialize --select image_set --partition mens-footwear``:
                 98 images, all unchanged, so the run does nothing but look
  1-image run    the same for a one-image set whose image was deleted first, so it copies one

each through the CLI with the in-process executor (the local default) and with the multiprocess
executor (the default before), next to the bare work: the same plan, shard and commit functions
called directly, without Dagster, and two floors: a Python start that imports the code location,
and Dagster's own, the same CLI command on a one-asset code location whose asset returns None
(what any Dagster project's run costs); and two ``fashion-assets`` commands (``--help``, ``query
list``). Prints medians of ``--repeats`` runs, and the load.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import add_json_argument, write_figures

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BIN = Path(sys.executable).parent
QUERIES = {
    "mens-footwear": (REPO / "examples" / "queries" / "mens-footwear.sql").read_text(),
    "one-image": "SELECT id FROM product_images ORDER BY id LIMIT 1",
}


def timed(command: list[str], env: dict) -> float:
    started = time.monotonic()
    run = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if run.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}")
    return seconds


def bare_work(name: str, env: dict) -> float:
    """The run's work without Dagster: query + plan, the shard, the commit."""
    from fashion_assets import layout
    from fashion_assets.core.database import create_engine
    from fashion_assets.core.storage import LocalObjectStore
    from fashion_assets.image_sets.export import commit_export, export_shard, plan_export
    from fashion_assets.image_sets.registry import QueryRegistry
    from fashion_assets.image_sets.sandbox import SqlSandbox

    engine = create_engine(env["FASHION_CATALOG_URL"])
    store = LocalObjectStore(env["FASHION_STORE_URL"])
    started = time.monotonic()
    plan = plan_export(name, QueryRegistry(store).get(name), SqlSandbox(engine), store,
                       layout.work("bare", "image_set", name), 50_000)
    results = [export_shard(store, shard, 8) for shard in plan.shards]
    commit_export(store, plan, results, 8)
    seconds = time.monotonic() - started
    engine.dispose()
    return seconds


# Dagster's floor: the smallest code location, one partitioned asset that does nothing.
FLOOR_DEFS = """import dagster as dg


@dg.asset(partitions_def=dg.StaticPartitionsDefinition(["a"]))
def noop() -> None:
    return None


defs = dg.Definitions(assets=[noop], executor=dg.in_process_executor)
"""


FLOOR = "Dagster's floor: one no-op asset, in_process"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dataset", default=str(REPO / "examples" / "sample-catalog"))
    add_json_argument(parser)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fashion-overhead-"))
    home = work / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "FASHION_DATASET_DIR": args.dataset,
           "FASHION_CATALOG_URL": f"sqlite:///{work / 'catalog.sqlite'}", "FASHION_STORE_URL": str(work / "store"),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # time what a user's machine does: cached bytecode
    materialize = [str(BIN / "dagster"), "asset", "materialize", "-m", "fashion_assets.definitions"]
    print(f"Setting up in {work} ({args.dataset})", flush=True)
    timed([*materialize, "--select", "products,product_images"], env)
    for name, sql in QUERIES.items():
        timed([str(BIN / "fashion-assets"), "query", "add", name, "--sql", sql], env)
        timed([*materialize, "--select", "image_set", "--partition", name], env)

    from fashion_assets import layout
    from fashion_assets.core.storage import LocalObjectStore

    store = LocalObjectStore(env["FASHION_STORE_URL"])
    [one_key] = [obj.key for obj in store.list(layout.set_images("one-image"))]

    def one_image_run(command: list[str], run_env: dict) -> float:
        store.delete(one_key)  # so the run copies one image
        return timed(command, run_env)

    rows: list[tuple[str, list[float]]] = []
    startup = [str(sys.executable), "-c", "import fashion_assets.definitions"]
    rows.append(("python start + import the code location", [timed(startup, env) for _ in range(args.repeats)]))
    (work / "floor_defs.py").write_text(FLOOR_DEFS)
    floor = [str(BIN / "dagster"), "asset", "materialize", "-f", str(work / "floor_defs.py"), "--select", "noop",
             "--partition", "a"]
    rows.append((FLOOR, [timed(floor, env) for _ in range(args.repeats)]))
    for command in (["--help"], ["query", "list"]):
        cli = [str(BIN / "fashion-assets"), *command]
        rows.append((" ".join(["fashion-assets", *command]), [timed(cli, env) for _ in range(args.repeats)]))
    rows.append(("bare work, no-op set (98 images)", [bare_work("mens-footwear", env) for _ in range(args.repeats)]))
    rows.append(("bare work, 1-image set", [(store.delete(one_key), bare_work("one-image", env))[1]
                                            for _ in range(args.repeats)]))
    for executor in ("in_process", "multiprocess"):
        run_env = {**env, "FASHION_EXECUTOR": executor}
        noop = [*materialize, "--select", "image_set", "--partition", "mens-footwear"]
        one = [*materialize, "--select", "image_set", "--partition", "one-image"]
        rows.append((f"CLI no-op run, {executor}", [timed(noop, run_env) for _ in range(args.repeats)]))
        rows.append((f"CLI 1-image run, {executor}", [one_image_run(one, run_env) for _ in range(args.repeats)]))

    load = os.getloadavg()
    print(f"\n{os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end; "
          f"medians of {args.repeats}")
    print(f"  {'':44} {'wall s':>8} {'min':>6} {'max':>6}")
    for what, seconds in rows:
        print(f"  {what:44} {statistics.median(seconds):8.2f} {min(seconds):6.2f} {max(seconds):6.2f}")
    medians = dict((what, statistics.median(s)) for what, s in rows)
    ratio = medians["CLI no-op run, multiprocess"] / medians["CLI no-op run, in_process"]
    print(f"\n  no-op run: in_process is {ratio:.1f}x faster than multiprocess; "
          f"{medians['CLI no-op run, in_process'] - medians['python start + import the code location']:.2f} s "
          "above the Python start, "
          f"{medians['CLI no-op run, in_process'] - medians[FLOOR]:.2f} s "
          "above Dagster's floor")
    write_figures(args.json, {"medians_s": medians, "noop_run_s": medians["CLI no-op run, in_process"],
                              "import_s": medians["python start + import the code location"],
                              "floor_s": medians[FLOOR]})


if __name__ == "__main__":
    main()
