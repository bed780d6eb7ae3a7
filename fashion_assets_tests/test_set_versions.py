"""Set versions (``image_sets.versions``): immutable, shared photos, readers that name a version,
garbage collection that keeps what models and runs in flight name, and the upgrade of a store
written before versions. Real resources on both backends."""

import csv
import json
import subprocess
import time

import dagster as dg
import pytest

from fashion_assets import layout
from fashion_assets.catalog.assets import product_images, products
from fashion_assets.classifier.assets import fashion_classifier
from fashion_assets.classifier.rows import set_rows
from fashion_assets.core import leases
from fashion_assets.core.storage import md5_hex, remove_prefix
from fashion_assets.image_sets.assets import image_queries, image_set
from fashion_assets.image_sets.export import commit_export, export_shard, plan_export, read_manifest
from fashion_assets.image_sets.registry import QueryRegistry
from fashion_assets.image_sets.sandbox import SqlSandbox
from fashion_assets.image_sets.versions import (
    NoSuchVersion,
    collect,
    collect_under_lease,
    list_versions,
    resolve,
)
from fashion_assets.labelling.export import export_set

from .catalog_files import image_bytes, make_dataset
from .test_labelling import BIN

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@pytest.fixture
def catalog(backend, tmp_path):
    """The 10-image catalog of ``make_dataset`` (ids 1-9 and 99 stored), and an instance."""
    dataset = make_dataset(tmp_path / "ds")
    resources = backend.resources(dataset)
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([products, product_images], resources=resources, instance=instance, run_config=QUIET).success
    return backend, resources, instance, dataset


def run_set(catalog, name, sql=None, config=None):
    backend, resources, instance, _ = catalog
    if sql is not None:
        QueryRegistry(backend.store()).put(name, sql)
    instance.add_dynamic_partitions(image_queries.name, [name])
    result = dg.materialize([image_set], partition_key=name, resources=resources, instance=instance,
                            run_config={**QUIET, "ops": {"image_set": {"config": config}}} if config else QUIET)
    [event] = result.get_asset_materialization_events()
    meta = {k: v.value for k, v in event.materialization.metadata.items()}
    return meta, event.materialization.tags["dagster/data_version"]


def photos(store, name) -> dict[str, bytes]:
    return {obj.key: store.get_bytes(obj.key) for obj in store.list(layout.set_images(name))}


def new_photo_for(catalog, product_id: int, seed: int):
    """Re-ingest the catalog with another photo of ``product_id``."""
    backend, resources, instance, dataset = catalog
    (dataset / "images" / f"{product_id}.jpg").write_bytes(image_bytes(seed))
    assert dg.materialize([products, product_images], resources=resources, instance=instance, run_config=QUIET).success


def test_an_unchanged_rerun_makes_no_new_version(catalog):
    store = catalog[0].store()
    first, first_data_version = run_set(catalog, "all", "SELECT id FROM products")
    before = {o.key: o.size for o in store.list(layout.image_set("all"))}
    again, again_data_version = run_set(catalog, "all")
    [version] = list_versions(store, "all")
    assert (first["version"], first["new_version"], again["version"], again["new_version"]) == (1, True, 1, False)
    assert first_data_version == again_data_version == version.digest == first["version_digest"]
    assert (again["copied"], again["unchanged"]) == (0, 9)
    assert {o.key: o.size for o in store.list(layout.image_set("all"))} == before  # nothing written


def test_a_changed_query_makes_version_2_and_version_1_stays_byte_for_byte(catalog):
    backend = catalog[0]
    store = backend.store()
    run_set(catalog, "shirts", "SELECT id FROM products WHERE id IN (1, 2, 3)")
    v1 = resolve(store, "shirts")
    v1_manifest = store.get_bytes(v1.manifest_key)
    v1_photos = {r["key"]: store.get_bytes(r["key"]) for r in read_manifest(store, "shirts").to_pylist()}
    new_photo_for(catalog, 3, seed=333)
    meta, data_version = run_set(catalog, "shirts", "SELECT id FROM products WHERE id IN (2, 3, 4)")
    v2 = resolve(store, "shirts")
    assert (v2.seq, data_version, meta["copied"], meta["unchanged"], meta["removed"]) == (2, v2.digest, 2, 1, 1)
    assert data_version != v1.digest
    # Version 1, byte for byte: its manifest and every photo it names.
    assert store.get_bytes(resolve(store, "shirts", 1).manifest_key) == v1_manifest
    assert {key: store.get_bytes(key) for key in v1_photos} == v1_photos
    assert resolve(store, "shirts", v1.digest[:6]) == resolve(store, "shirts", "1") == v1
    # Product 3's new photo went beside the old one, never over it.
    new_md5 = md5_hex(image_bytes(333))
    by_id = {r["id"]: r for r in read_manifest(store, "shirts").to_pylist()}
    assert by_id[3]["key"] == layout.set_image_version("shirts", 3, new_md5) and by_id[3]["md5"] == new_md5
    assert by_id[2]["key"] == layout.set_image("shirts", 2)  # unchanged: shared with version 1
    assert store.get_bytes(layout.set_image("shirts", 3)) == v1_photos[layout.set_image("shirts", 3)]
    with pytest.raises(NoSuchVersion, match=r"image set 'shirts' has no version '7'; it has: 1 \(.*\), 2 \("):
        resolve(store, "shirts", 7)


def cli(args, env) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "fashion-assets", *args], env=env, capture_output=True, text=True, timeout=300)


def test_versions_diff_and_gc_on_the_command_line(tmp_path):
    """`fashion-assets set versions | diff | gc` as a user runs them (embedded backend)."""
    import os

    from .conftest import embedded_backend

    backend = embedded_backend(tmp_path)
    dataset = make_dataset(tmp_path / "ds")
    env = {**os.environ, **backend.env(dataset), "DAGSTER_HOME": str(tmp_path / "home")}
    (tmp_path / "home").mkdir()
    resources = backend.resources(dataset)
    instance = dg.DagsterInstance.ephemeral()
    catalog = (backend, resources, instance, dataset)
    assert dg.materialize([products, product_images], resources=resources, instance=instance, run_config=QUIET).success
    run_set(catalog, "s", "SELECT id FROM products WHERE id IN (1, 2, 3)")
    new_photo_for(catalog, 3, seed=333)
    run_set(catalog, "s", "SELECT id FROM products WHERE id IN (2, 3, 4, 5)")
    v1, v2 = list_versions(backend.store(), "s")

    listed = cli(["set", "versions", "s"], env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [["1", v1.digest], ["2", v2.digest]]
    assert "3 images" in lines[0] and "4 images" in lines[1] and lines[1].endswith("models: -")
    sql_md5 = md5_hex(QueryRegistry(backend.store()).get("s").encode())  # the SQL as stored
    assert f"sql {sql_md5[:12]}" in lines[1] and "catalog 10 images, max id 99" in lines[1]

    changed = cli(["set", "diff", "s", "1", v2.digest], env)
    assert changed.stdout.splitlines() == [f"s: version 1 ({v1.digest}) -> version 2 ({v2.digest})",
                                           "added 2: 4, 5", "removed 1: 1", "changed 1: 3"]

    dry = cli(["set", "gc", "s", "--keep", "1", "--dry-run"], env)
    assert dry.stdout.startswith("s: kept versions 2; would drop 1; would delete 2 of 6 photos ("), dry.stdout
    assert len(photos(backend.store(), "s")) == 6
    done = cli(["set", "gc", "s", "--keep", "1"], env)
    assert done.stdout.startswith("s: kept versions 2; dropped 1; deleted 2 of 6 photos ("), done.stderr
    assert sorted(photos(backend.store(), "s")) == sorted(r["key"] for r in read_manifest(backend.store(), "s")
                                                          .to_pylist())
    gone = cli(["set", "diff", "s", "1", "2"], env)
    assert (gone.returncode, gone.stderr) == (2, f"fashion-assets: image set 's' has no version '1'; it has: "
                                                 f"2 ({v2.digest})\n")


def test_training_on_version_1_after_version_2_uses_exactly_its_photos(backend, tmp_path):
    from .test_training_data import near_duplicate_catalog

    resources = backend.resources(near_duplicate_catalog(tmp_path / "ds"))
    instance = dg.DagsterInstance.ephemeral()
    catalog = (backend, resources, instance, tmp_path / "ds")
    assert dg.materialize([products, product_images], resources=resources, instance=instance, run_config=QUIET).success
    store = backend.store()
    run_set(catalog, "tops", "SELECT id FROM products WHERE id <= 30")
    v1_rows = read_manifest(store, "tops").to_pylist()
    run_set(catalog, "tops", "SELECT id FROM products WHERE id > 10")
    v1, v2 = list_versions(store, "tops")

    rows = set_rows(store, "tops@1")
    assert [(r["id"], r["key"]) for r in rows.rows] == [(r["id"], r["key"]) for r in v1_rows]
    assert {r["key"]: md5_hex(store.get_bytes(r["key"])) for r in rows.rows} == {r["key"]: r["md5"] for r in v1_rows}
    assert rows.describe == "image set 'tops' version 1"
    assert [r["key"] for r in set_rows(store, "tops").rows] == [r["key"] for r in read_manifest(store, "tops", 2)
                                                                .to_pylist()]

    config = {"image_set": f"tops@{v1.digest}", "epochs": 1, "image_size": 32, "batch_size": 4, "min_examples": 1}
    result = dg.materialize([fashion_classifier], resources=resources, instance=instance,
                            run_config={**QUIET, "ops": {"fashion_classifier": {"config": config}}})
    meta = {k: v.value for k, v in result.get_asset_materialization_events()[0].materialization.metadata.items()}
    assert meta["training_images"] + meta["validation_images"] + meta["unseen_images"] == len(v1_rows) == 30
    labels = json.loads(store.get_bytes(layout.model_labels(meta["version"])))
    assert labels["trained_on"] == {"source": "image_set", "image_set": "tops", "set_version": 1,
                                    "set_version_digest": v1.digest, "augmented_spec": None,
                                    "manifest_md5": md5_hex(store.get_bytes(v1.manifest_key)),
                                    "images": meta["training_images"]}
    # The model names version 1: a collection keeping only the newest keeps it anyway.
    collected = collect(store, "tops", keep=1)
    assert (collected.kept, collected.dropped, collected.kept_for_models) == ([1, 2], [], {1: [meta["version"]]})
    assert collected.deleted == 0


def test_export_of_version_1(catalog, tmp_path):
    backend = catalog[0]
    store = backend.store()
    run_set(catalog, "e", "SELECT id FROM products WHERE id IN (1, 3)")
    new_photo_for(catalog, 3, seed=333)
    run_set(catalog, "e", "SELECT id FROM products WHERE id IN (3, 5, 6)")
    result = export_set(store, backend.engine(), "e", "csv", tmp_path / "v1.csv", version="1")
    with open(tmp_path / "v1.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert (result.tasks, result.set_version) == (2, 1)
    assert [(r["id"], r["image"]) for r in rows] == [("1", store.uri(layout.set_image("e", 1))),
                                                     ("3", store.uri(layout.set_image("e", 3)))]
    newest = export_set(store, backend.engine(), "e", "csv", tmp_path / "v2.csv")
    with open(tmp_path / "v2.csv", newline="") as f:
        images = [r["image"] for r in csv.DictReader(f)]
    new_key = layout.set_image_version("e", 3, md5_hex(image_bytes(333)))
    assert (newest.set_version, images[0]) == (2, store.uri(new_key))
    with pytest.raises(ValueError, match="image set 'e' has no version '9'"):
        export_set(store, backend.engine(), "e", "csv", tmp_path / "v9.csv", version="9")


def test_gc_keeps_what_a_model_names_and_removes_the_rest(catalog):
    store = catalog[0].store()
    run_set(catalog, "g", "SELECT id FROM products WHERE id IN (1, 2)")
    run_set(catalog, "g", "SELECT id FROM products WHERE id IN (3, 4)")
    run_set(catalog, "g", "SELECT id FROM products WHERE id IN (5, 6)")
    v1, v2, v3 = list_versions(store, "g")
    # A model trained on version 1, named the way models before set versions named it: by the
    # MD5 of the manifest.
    store.put_bytes(layout.model_labels("m-old"), json.dumps(
        {"trained_on": {"source": "image_set", "image_set": "g",
                        "manifest_md5": md5_hex(store.get_bytes(v1.manifest_key))}}).encode())
    dry = collect(store, "g", keep=1, dry_run=True)
    assert (dry.kept, dry.dropped, dry.deleted, dry.objects) == ([1, 3], [2], 2, 6)
    assert len(photos(store, "g")) == 6 and len(list_versions(store, "g")) == 3
    done = collect(store, "g", keep=1)
    assert (done.kept, done.dropped, done.deleted, done.kept_for_models) == ([1, 3], [2], 2, {1: ["m-old"]})
    assert sorted(photos(store, "g")) == [layout.set_image("g", i) for i in (1, 2, 5, 6)]
    assert [v.seq for v in list_versions(store, "g")] == [1, 3]
    assert not list(store.list(layout.set_version("g", v2.seq, v2.digest)))
    # The next version keeps counting from the newest.
    meta, _ = run_set(catalog, "g", "SELECT id FROM products WHERE id IN (6, 7)")
    assert meta["version"] == 4


def test_gc_during_a_concurrent_materialisation_removes_nothing_that_runs_manifest_names(catalog):
    """A run has planned version 3 of a set, reusing photos only version 1 holds, when a
    collection that keeps one version starts: it waits for the run's lease (PartitionBusy); when
    it does get the lease (the run's expired: a slow pod), the run's work lists still keep every
    photo they name, and the run commits a version whose photos are all there."""
    backend = catalog[0]
    store, engine = backend.store(), backend.engine()
    run_set(catalog, "c", "SELECT id FROM products WHERE id IN (1, 2, 3)")
    run_set(catalog, "c", "SELECT id FROM products WHERE id IN (4, 5)")
    work = layout.work("run-3", "image_set", "c")
    lease = leases.acquire(engine, "image_set", "c", "run-3", ttl_s=0.5)
    plan = plan_export("c", "SELECT id FROM products WHERE id IN (1, 2, 3, 4)", SqlSandbox(engine), store, work, 2)
    with pytest.raises(leases.PartitionBusy, match=r"image_set\[c\] is being written by run run-3"):
        collect_under_lease(engine, store, "c", keep=1)
    assert len(photos(store, "c")) == 5
    time.sleep(0.6)  # the run's lease expires
    collected = collect_under_lease(engine, store, "c", keep=1)
    assert (collected.dropped, collected.deleted, collected.in_flight) == ([1], 0, 3)
    assert leases.holder(engine, "image_set", "c") is None
    done = [export_shard(store, shard, workers=4) for shard in plan.shards]
    result = commit_export(store, plan, done, workers=4)
    assert (result.version.seq, sum(s.copied for s in done)) == (3, 0)
    manifest = read_manifest(store, "c").to_pylist()
    assert {r["key"]: md5_hex(store.get_bytes(r["key"])) for r in manifest} == {r["key"]: r["md5"] for r in manifest}
    leases.release(engine, lease)


def test_a_store_written_before_versions_becomes_version_1_without_copying_a_photo(catalog):
    """The old layout: ``images/<id>.jpg`` and one ``manifest.parquet``, no ``versions/``."""
    backend = catalog[0]
    store = backend.store()
    run_set(catalog, "old", "SELECT id FROM products WHERE id IN (1, 2, 3)")
    remove_prefix(store, layout.set_versions("old"))  # what the old code left: no versions/
    old_manifest = store.get_bytes(layout.manifest("old"))
    old_photos = photos(store, "old")
    assert sorted(old_photos) == [layout.set_image("old", i) for i in (1, 2, 3)]
    [legacy] = list_versions(store, "old")
    assert (legacy.seq, legacy.legacy, legacy.manifest_key) == (1, True, layout.manifest("old"))

    meta, data_version = run_set(catalog, "old")  # the same query: upgraded, no new version
    [v1] = list_versions(store, "old")
    assert (meta["version"], meta["new_version"], meta["copied"], v1.legacy) == (1, False, 0, False)
    assert data_version == v1.digest == legacy.digest
    assert store.get_bytes(v1.manifest_key) == old_manifest
    assert photos(store, "old") == old_photos
    meta, _ = run_set(catalog, "old", "SELECT id FROM products WHERE id IN (2, 3, 4)")
    assert (meta["version"], meta["copied"], meta["unchanged"]) == (2, 1, 2)
