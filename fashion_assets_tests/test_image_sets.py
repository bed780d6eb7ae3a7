"""image_set partitions and the query sensor, with real resources on both backends."""

import json

import dagster as dg
import pytest
import sqlalchemy as sa

from fashion_assets import layout
from fashion_assets.catalog.assets import product_images, products
from fashion_assets.core.storage import md5_hex
from fashion_assets.image_sets.assets import image_queries, image_set, image_set_matches_manifest
from fashion_assets.image_sets.export import commit_export, export_shard, plan_export, read_manifest
from fashion_assets.image_sets.registry import QueryRegistry
from fashion_assets.image_sets.sandbox import SqlSandbox
from fashion_assets.image_sets.sensors import image_query_sensor

from .catalog_files import make_dataset


@pytest.fixture
def catalog(backend, tmp_path):
    """A catalog with 10 stored images (ids 1-9 and 99), and an instance to run in."""
    resources = backend.resources(make_dataset(tmp_path / "ds"))
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([products, product_images], resources=resources, instance=instance).success
    return backend, resources, instance


def run_set(catalog, name, sql=None, raise_on_error=True, config=None):
    backend, resources, instance = catalog
    if sql is not None:
        QueryRegistry(backend.store()).put(name, sql)
    instance.add_dynamic_partitions(image_queries.name, [name])
    return dg.materialize(
        [image_set, image_set_matches_manifest], partition_key=name, resources=resources, instance=instance,
        raise_on_error=raise_on_error,
        run_config={"ops": {"image_set": {"config": config}}} if config else None,
    )


def meta(result):
    [event] = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


def set_contents(backend, name):
    """File name -> MD5 of the bytes stored (read back: a listing need not know MD5s)."""
    store = backend.store()
    return {obj.key.rsplit("/", 1)[1]: md5_hex(store.get_bytes(obj.key))
            for obj in store.list(f"image-sets/{name}/images/")}


def sql_ids(backend, sql):
    with backend.engine().connect() as conn:
        return {row[0] for row in conn.execute(sa.text(sql))}


def test_set_matches_the_query_exactly(catalog):
    backend = catalog[0]
    sql = "SELECT id, article_type FROM products WHERE master_category = 'Apparel'"
    result = run_set(catalog, "apparel", sql)
    with_image = sql_ids(backend, sql) & sql_ids(backend, "SELECT id FROM product_images")
    assert {int(k.removesuffix(".jpg")) for k in set_contents(backend, "apparel")} == with_image == {1, 4, 5, 8, 9}

    manifest = read_manifest(backend.store(), "apparel").to_pylist()
    assert {r["id"] for r in manifest} == with_image
    by_id = {r["id"]: r for r in manifest}
    assert by_id[1]["key"] == "image-sets/apparel/images/1.jpg" and by_id[1]["source_key"] == "catalog/images/1.jpg"
    assert by_id[8]["mode"] == "CMYK" and by_id[9]["format"] == "PNG" and by_id[4]["article_type"] == "Tshirts"
    assert all(set_contents(backend, "apparel")[f"{r['id']}.jpg"] == r["md5"] for r in manifest)

    m = meta(result)
    assert (m["selected"], m["dagster/row_count"], m["copied"], m["missing"]) == (6, 5, 5, 1)
    assert m["missing_ids"] == "12"  # selected, but their images were rejected
    assert "master_category = 'Apparel'" in m["sql"] and "| 1 | Jeans |" in m["preview"]
    assert m["manifest"].endswith("image-sets/apparel/manifest.parquet")
    assert [c.passed for c in result.get_asset_check_evaluations()] == [True]


def test_rematerialising_copies_nothing(catalog):
    run_set(catalog, "all", "SELECT id FROM products")
    again = meta(run_set(catalog, "all"))
    assert again["copied"] == 0 and again["unchanged"] == 9 and again["removed"] == 0


def test_changing_the_sql_adds_and_removes_exactly_the_difference(catalog):
    """The new version holds exactly the new selection; the photos only version 1 holds stay
    while version 1 is kept, and go when it is not (``keep_versions``)."""
    backend = catalog[0]
    run_set(catalog, "some", "SELECT id FROM products WHERE id IN (1, 2, 3, 4)")
    before = set_contents(backend, "some")
    changed = meta(run_set(catalog, "some", "SELECT id FROM products WHERE id IN (3, 4, 5, 6, 7)"))
    assert (changed["copied"], changed["unchanged"], changed["removed"]) == (3, 2, 2)
    assert (changed["version"], changed["new_version"], changed["photos_deleted"]) == (2, True, 0)
    after = set_contents(backend, "some")
    assert set(after) == {f"{i}.jpg" for i in range(1, 8)}  # 1 and 2: version 1's
    assert after["3.jpg"] == before["3.jpg"]
    assert {r["id"] for r in read_manifest(backend.store(), "some").to_pylist()} == {3, 4, 5, 6, 7}
    assert {r["id"] for r in read_manifest(backend.store(), "some", 1).to_pylist()} == {1, 2, 3, 4}
    third = meta(run_set(catalog, "some", "SELECT id FROM products WHERE id IN (4, 5, 6, 7)",
                         config={"keep_versions": 1}))
    assert (third["version"], third["versions_deleted"], third["photos_deleted"]) == (3, 2, 3)
    assert set(set_contents(backend, "some")) == {"4.jpg", "5.jpg", "6.jpg", "7.jpg"}


def test_a_set_split_into_shards_is_the_same_set(catalog):
    backend = catalog[0]
    whole = meta(run_set(catalog, "whole", "SELECT id FROM products ORDER BY id"))
    sharded = meta(run_set(catalog, "sharded", "SELECT id FROM products ORDER BY id", config={"shard_size": 2}))
    assert (whole["shards"], sharded["shards"]) == (1, 5)  # 9 images: 2 + 2 + 2 + 2 + 1
    assert sharded["dagster/row_count"] == whole["dagster/row_count"] == 9
    assert "| 4 | 1 |" in sharded["shard_rates"]  # shard 4 holds the ninth image
    columns = ["id", "key", "source_key", "md5", "bytes", "article_type"]
    assert read_manifest(backend.store(), "sharded").select(columns).to_pylist() == [
        {**row, "key": row["key"].replace("/whole/", "/sharded/")}
        for row in read_manifest(backend.store(), "whole").select(columns).to_pylist()
    ]
    assert not list(backend.store().list("_work/"))  # the work lists go once the manifest is in

    changed = meta(run_set(catalog, "sharded", "SELECT id FROM products WHERE id > 3", config={"shard_size": 4}))
    assert (changed["shards"], changed["copied"], changed["unchanged"], changed["removed"]) == (2, 0, 6, 3)


def test_a_failed_shard_keeps_the_previous_set_and_a_retry_finishes_it(catalog):
    """What *re-execute from failure* does: the shard that failed runs again from its work list,
    the shards that succeeded are not redone, and only then does the manifest change."""
    backend = catalog[0]
    run_set(catalog, "retry", "SELECT id FROM products WHERE id < 4")
    store = backend.store()
    before = store.get_bytes(layout.manifest("retry"))
    sandbox = SqlSandbox(backend.engine())
    plan = plan_export("retry", "SELECT id FROM products ORDER BY id", sandbox, store, "_work/r1/image_set/retry/", 4)
    assert [s.items for s in plan.shards] == [4, 4, 1]

    ninth = store.get_bytes("catalog/images/9.jpg")
    store.delete("catalog/images/9.jpg")  # the last shard's only image: its copy fails
    done = [export_shard(store, shard, workers=4) for shard in plan.shards[:2]]
    with pytest.raises(Exception, match="9.jpg"):
        export_shard(store, plan.shards[2], workers=4)
    with pytest.raises(RuntimeError, match="2 of 3 shards reported"):
        commit_export(store, plan, done, workers=4)
    assert store.get_bytes(layout.manifest("retry")) == before  # still the previous set, which is all there

    store.put_bytes("catalog/images/9.jpg", ninth)
    done.append(export_shard(store, plan.shards[2], workers=4))
    result = commit_export(store, plan, done, workers=4)
    assert result.total("copied") == 6 and result.plan.stale == 0  # ids 1-3 were in place already
    assert (result.version.seq, result.new_version) == (2, True)
    assert [r["id"] for r in read_manifest(store, "retry").to_pylist()] == list(range(1, 10))
    assert not list(store.list("_work/"))


def test_duplicate_and_imageless_ids(catalog):
    result = run_set(catalog, "dups", "SELECT p.id FROM products p JOIN products q ON q.gender = p.gender WHERE p.id < 4")
    m = meta(result)
    assert (m["selected"], m["dagster/row_count"]) == (3, 3)


def test_a_bad_query_fails_with_a_clear_error_and_keeps_the_previous_set(catalog):
    backend = catalog[0]
    run_set(catalog, "keep", "SELECT id FROM products WHERE id < 3")
    before = backend.store().get_bytes(layout.manifest("keep"))
    result = run_set(catalog, "keep", "DELETE FROM products", raise_on_error=False)
    assert not result.success
    failure = str(result.get_step_failure_events()[0].step_failure_data.error)
    assert "only SELECT" in failure
    assert backend.store().get_bytes(layout.manifest("keep")) == before
    assert sql_ids(backend, "SELECT count(*) FROM products") == {12}


def test_a_slow_query_is_stopped(catalog):
    forever = "WITH RECURSIVE n(id) AS (SELECT 1 UNION ALL SELECT id + 1 FROM n) SELECT id FROM n WHERE id < 0"
    result = run_set(catalog, "slow", forever, raise_on_error=False, config={"query_timeout_s": 1})
    assert not result.success
    assert "longer than 1s" in str(result.get_step_failure_events()[0].step_failure_data.error)


def test_a_missing_query_file_names_the_fix(catalog):
    result = run_set(catalog, "never-added", raise_on_error=False)
    assert "fashion-assets query add never-added" in str(result.get_step_failure_events()[0].step_failure_data.error)


def evaluate(sensor_resources, instance, cursor):
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=sensor_resources) as context:
        result = image_query_sensor(context)
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def test_sensor_adds_partitions_and_requests_runs(catalog):
    backend, resources, instance = catalog
    sensor_resources = {"store": resources["store"], "catalog_db": resources["catalog_db"]}
    registry = QueryRegistry(backend.store())
    registry.put("first", "SELECT id FROM products WHERE id < 5")

    tick = evaluate(sensor_resources, instance, None)
    assert [r.partition_key for r in tick.run_requests] == ["first"]
    assert instance.get_dynamic_partitions(image_queries.name) == ["first"]

    quiet = evaluate(sensor_resources, instance, tick.cursor)  # nothing changed: nothing to do
    assert quiet.run_requests == [] and quiet.dynamic_partitions_requests == []

    registry.put("first", "SELECT id FROM products WHERE id < 7")  # changed: a re-run, same partition
    registry.put("broken", "SELECT id FROM products; DROP TABLE products")
    backend.store().put_bytes("queries/Not A Slug.sql", b"SELECT id FROM products")
    changed = evaluate(sensor_resources, instance, quiet.cursor)
    assert [r.partition_key for r in changed.run_requests] == ["first"]
    assert changed.run_requests[0].run_key != tick.run_requests[0].run_key
    assert changed.dynamic_partitions_requests == []
    assert "broken" not in instance.get_dynamic_partitions(image_queries.name)
    assert json.loads(changed.cursor)["ignored"] == ["Not A Slug.sql"]

    registry.put("second", "SELECT id FROM products WHERE id > 5")  # the broken one is not retried
    later = evaluate(sensor_resources, instance, changed.cursor)
    assert [r.partition_key for r in later.run_requests] == ["second"]
    assert sorted(instance.get_dynamic_partitions(image_queries.name)) == ["first", "second"]
