"""One writer per partition, whatever starts the run: the partition lease (core/leases.py) on
both backends, through Dagster and through the CLI as concurrent processes, and after kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from fashion_assets import layout
from fashion_assets.catalog.assets import product_images, products
from fashion_assets.core import leases
from fashion_assets.image_sets import versions
from fashion_assets.image_sets.assets import image_queries, image_set
from fashion_assets.image_sets.registry import QueryRegistry

from .catalog_files import image_bytes, product_line, write_styles

BIN = Path(sys.executable).parent
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def plain_dataset(root: Path, n: int) -> Path:
    """``n`` ordinary products, each with an image."""
    (root / "images").mkdir(parents=True)
    write_styles(root / "styles.csv", [product_line(i) for i in range(1, n + 1)])
    for i in range(1, n + 1):
        (root / "images" / f"{i}.jpg").write_bytes(image_bytes(i))
    return root


def catalog_with_query(backend, tmp_path, n=24, name="shoes", sql="SELECT id FROM products WHERE id % 2 = 0"):
    resources = backend.resources(plain_dataset(tmp_path / "ds", n))
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([products, product_images], resources=resources, instance=instance, run_config=QUIET).success
    QueryRegistry(backend.store()).put(name, sql)
    instance.add_dynamic_partitions(image_queries.name, [name])
    return resources, instance


def set_keys(store, name: str) -> tuple[set[str], set[str]]:
    """(keys the set's versions list, image keys in its photo pool). Every version is kept here
    (no GC runs), so "manifest = store" means: the union of the versions' manifests is the pool."""
    return set(versions.stored_photos(store, name)), {obj.key for obj in store.list(layout.set_images(name))}


def test_a_lease_has_one_holder_expires_and_fences_the_loser(backend):
    engine = backend.engine()
    a = leases.acquire(engine, "image_set", "shoes", "run-a", ttl_s=0.5)
    with pytest.raises(leases.PartitionBusy, match=r"image_set\[shoes\] is being written by run run-a"):
        leases.acquire(engine, "image_set", "shoes", "run-b", ttl_s=0.5)
    assert leases.acquire(engine, "image_set", "shoes", "run-a", ttl_s=0.5) == a  # the same run re-enters
    assert leases.acquire(engine, "image_set", "other", "run-b").run_id == "run-b"  # another partition is free
    assert leases.acquire(engine, "augmented_set", "shoes", "run-b").run_id == "run-b"  # another asset too

    time.sleep(0.7)  # run-a stopped renewing: its lease expires
    b = leases.acquire(engine, "image_set", "shoes", "run-b", ttl_s=30)
    assert (b.run_id, b.took_over_from) == ("run-b", "run-a")
    with pytest.raises(leases.LeaseLost, match=r"run run-a no longer holds"):
        leases.renew(engine, a)
    leases.release(engine, a)  # not its lease any more: nothing happens
    assert leases.holder(engine, "image_set", "shoes") == "run-b"

    # A holder whose run has ended (failed, cancelled) frees the partition before its TTL.
    c = leases.acquire(engine, "image_set", "shoes", "run-c", run_finished=lambda run_id: run_id == "run-b")
    assert c.took_over_from == "run-b"
    leases.release(engine, c)
    assert leases.holder(engine, "image_set", "shoes") is None


def test_a_second_writer_of_a_partition_fails_at_once_naming_the_holder(backend, tmp_path):
    resources, instance = catalog_with_query(backend, tmp_path)
    engine = backend.engine()
    held = leases.acquire(engine, "image_set", "shoes", "run-started-elsewhere")

    result = dg.materialize([image_set], partition_key="shoes", resources=resources, instance=instance,
                            run_config=QUIET, raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.message
    assert "image_set[shoes] is being written by run run-started-elsewhere" in message
    store = backend.store()
    assert set_keys(store, "shoes") == (set(), set())  # nothing written
    assert list(store.list(layout.WORK)) == []

    leases.release(engine, held)
    assert dg.materialize([image_set], partition_key="shoes", resources=resources, instance=instance,
                          run_config=QUIET).success
    listed, stored = set_keys(store, "shoes")
    assert listed == stored == {layout.set_image("shoes", i) for i in range(2, 25, 2)}
    assert leases.holder(engine, "image_set", "shoes") is None  # the commit gave it back


def test_a_writer_killed_with_kill_9_does_not_wedge_the_partition(backend, tmp_path):
    """The holder dies without a word (SIGKILL, nothing runs after it); the next run names it while
    its lease is fresh and takes the partition over once the lease expires; the dead run's work
    lists and temporary files are cleaned then."""
    resources, instance = catalog_with_query(backend, tmp_path)
    resources["catalog_db"] = resources["catalog_db"].model_copy(update={"lease_ttl_s": 3.0})
    store = backend.store()
    # What the dead run had written: a work list, and (local store) a copy in flight.
    dead_work = layout.work_shard(layout.work("run-killed", "image_set", "shoes"), 0)
    store.put_bytes(dead_work, b"a work list")
    temp = Path(backend.store_url, layout.set_images("shoes"), ".2.jpg.4242.tmp")
    if backend.name == "embedded":
        temp.parent.mkdir(parents=True)
        temp.write_bytes(b"half an image")
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, time\n"
            "from fashion_assets.core import leases\n"
            "from fashion_assets.resources import CatalogDatabase\n"
            "engine = CatalogDatabase(url=sys.argv[1]).engine\n"
            "lease = leases.acquire(engine, 'image_set', 'shoes', 'run-killed', ttl_s=3.0)\n"
            "with leases.Heartbeat(engine, lease):\n"
            "    print('holding', flush=True)\n"
            "    time.sleep(600)\n"), backend.catalog_url],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    try:
        assert holder.stdout.readline().strip() == "holding"
        time.sleep(1.0)  # a heartbeat or two
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()

    busy = dg.materialize([image_set], partition_key="shoes", resources=resources, instance=instance,
                          run_config=QUIET, raise_on_error=False)
    assert not busy.success
    time.sleep(3.5)  # one TTL without renewal
    result = dg.materialize([image_set], partition_key="shoes", resources=resources, instance=instance,
                            run_config=QUIET)
    assert result.success
    listed, stored = set_keys(store, "shoes")
    assert listed == stored and len(listed) == 12
    assert not store.exists(dead_work) and not temp.exists()
    assert leases.holder(backend.engine(), "image_set", "shoes") is None


def test_two_cli_runs_of_one_partition_with_different_sql_leave_an_exact_set(backend, tmp_path):
    """Run A (SQL v1) and run B (SQL v2, overlapping) started a moment apart as real processes,
    as a shell and the daemon would. Whichever way they interleave, the manifest then lists
    exactly the images in the store, and a run that found the partition busy says which run
    held it. (Before the lease, such a pair left 16 listed images missing from the store.)"""
    dataset = plain_dataset(tmp_path / "ds", 600)
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, **backend.env(dataset), "DAGSTER_HOME": str(home)}
    materialize = [str(BIN / "dagster"), "asset", "materialize", "-m", "fashion_assets.definitions"]
    subprocess.run([*materialize, "--select", "products,product_images"], env=env, check=True, capture_output=True)
    cli = str(BIN / "fashion-assets")
    subprocess.run([cli, "query", "add", "mixed", "--sql", "SELECT id FROM products WHERE id % 2 = 0"], env=env,
                   check=True, capture_output=True)
    config = tmp_path / "slow.yaml"  # one copy at a time, so the runs overlap
    config.write_text("ops:\n  image_set:\n    config:\n      workers: 1\n")
    args = ["asset", "materialize", "-m", "fashion_assets.definitions", "--select", "image_set",
            "--partition", "mixed", "-c", str(config)]
    # Run B is the Dagster CLI in a process that has done its imports and waits for a word, so it
    # reaches its plan while run A is still writing (a cold start takes longer than A's work).
    warm_cli = ("import sys\nfrom dagster._cli import main\nimport fashion_assets.definitions\n"
                "print('ready', flush=True)\nsys.stdin.readline()\nmain()\n")
    b = subprocess.Popen([sys.executable, "-c", warm_cli, *args], env=env, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert b.stdout.readline().strip() == "ready"
    a = subprocess.Popen([str(BIN / "dagster"), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    engine, store = backend.engine(), backend.store()
    deadline = time.monotonic() + 120
    while leases.holder(engine, "image_set", "mixed") is None and a.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    a_run = leases.holder(engine, "image_set", "mixed")
    QueryRegistry(store).put("mixed", "SELECT id FROM products WHERE id % 3 = 0")
    b.stdin.write("go\n")
    b.stdin.flush()
    outputs = [p.communicate(timeout=300)[0] for p in (a, b)]
    codes = [p.returncode for p in (a, b)]

    listed, stored = set_keys(store, "mixed")
    print(f"\n[{backend.name}] exit codes {codes}; manifest {len(listed)}, store {len(stored)}, "
          f"listed but not stored {len(listed - stored)}, stored but not listed {len(stored - listed)}")
    assert listed == stored and listed, (codes, outputs)
    assert codes[0] == 0, outputs[0][-3000:]
    if codes[1] != 0:  # B came while A held the partition: it stopped, naming A, and wrote nothing
        assert f"image_set[mixed] is being written by run {a_run}" in outputs[1], outputs[1][-3000:]
    # The latest version is exactly what one query selects: B's when B ran (it read the SQL last);
    # when B stopped, A's, which reads the SQL after taking the lease, so either text may be A's.
    latest = versions.read_version(store, versions.resolve(store, "mixed"), columns=["id"]).column("id").to_pylist()
    allowed = [list(range(3, 601, 3))] if codes[1] == 0 else [list(range(2, 601, 2)), list(range(3, 601, 3))]
    assert sorted(latest) in allowed
    assert list(store.list(layout.WORK)) == []
