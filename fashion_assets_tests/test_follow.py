"""What starts runs follows what ran: the query sensor compares a query with the SQL its set was
last made with, image sets follow the catalog, and a set whose manifest lies is not built on
(blocking checks, in the same run and for declarative automation). Real resources, both backends."""

from __future__ import annotations

import dagster as dg
import pytest

from fashion_assets import layout
from fashion_assets.augmented_sets.assets import augmented_set
from fashion_assets.catalog.assets import product_images, products
from fashion_assets.image_sets.assets import image_queries, image_set, image_set_matches_manifest
from fashion_assets.image_sets.export import read_manifest
from fashion_assets.image_sets.registry import QueryRegistry
from fashion_assets.image_sets.sensors import image_query_sensor

from .catalog_files import image_bytes, product_line, write_styles

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
SQL_A = "SELECT id FROM products WHERE id < 5"
SQL_B = "SELECT id FROM products WHERE id >= 5"


def dataset(root, n=10):
    (root / "images").mkdir(parents=True, exist_ok=True)
    write_styles(root / "styles.csv", [product_line(i) for i in range(1, n + 1)])
    for i in range(1, n + 1):
        (root / "images" / f"{i}.jpg").write_bytes(image_bytes(i))
    return root


@pytest.fixture
def catalog(backend, tmp_path):
    resources = backend.resources(dataset(tmp_path / "ds"))
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([products, product_images], resources=resources, instance=instance, run_config=QUIET).success
    return backend, resources, instance, tmp_path / "ds"


def tick(resources, instance, cursor):
    sensor_resources = {"store": resources["store"], "catalog_db": resources["catalog_db"]}
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=sensor_resources) as context:
        result = image_query_sensor(context)
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def materialize_set(resources, instance, name):
    assert dg.materialize([image_set], partition_key=name, resources=resources, instance=instance,
                          run_config=QUIET).success


def test_the_sensor_follows_what_ran_so_a_revert_re_runs(catalog):
    backend, resources, instance, _ = catalog
    registry = QueryRegistry(backend.store())
    registry.put("q", SQL_A)
    first = tick(resources, instance, None)
    assert [r.partition_key for r in first.run_requests] == ["q"]
    materialize_set(resources, instance, "q")

    registry.put("q", SQL_B)
    second = tick(resources, instance, first.cursor)
    assert [r.partition_key for r in second.run_requests] == ["q"]
    materialize_set(resources, instance, "q")

    registry.put("q", SQL_A)  # back to A: the set holds B's images, so A must run again
    reverted = tick(resources, instance, second.cursor)
    assert [r.partition_key for r in reverted.run_requests] == ["q"]
    keys = [first.run_requests[0].run_key, second.run_requests[0].run_key, reverted.run_requests[0].run_key]
    assert len(set(keys)) == 3  # unique per request, so Dagster does not drop the revert as a duplicate
    assert keys[0].split(":")[1] == keys[2].split(":")[1]  # ... though it is the same SQL as the first
    materialize_set(resources, instance, "q")
    assert sorted(read_manifest(backend.store(), "q").column("id").to_pylist()) == [1, 2, 3, 4]
    assert tick(resources, instance, reverted.cursor).run_requests == []


def two_sets(backend, resources, instance) -> QueryRegistry:
    """Queries "low" (SQL_A) and "high" (SQL_B), each with its set materialised."""
    registry = QueryRegistry(backend.store())
    for name, sql in (("low", SQL_A), ("high", SQL_B)):
        registry.put(name, sql)
        instance.add_dynamic_partitions(image_queries.name, [name])
        materialize_set(resources, instance, name)
    return registry


def test_a_fresh_sensor_after_the_sets_were_made_requests_nothing(catalog):
    """`make dev` after `make demo`: an empty cursor, and sets already made from the files as
    they are. Also when the materialisation predates the sql_md5 metadata (only its `sql`)."""
    backend, resources, instance, _ = catalog
    registry = two_sets(backend, resources, instance)
    assert tick(resources, instance, None).run_requests == []

    # A materialisation recorded by an older version: the SQL in a Markdown block, no sql_md5.
    instance.report_runless_asset_event(dg.AssetMaterialization(
        asset_key=image_set.key, partition="low", metadata={"sql": dg.MetadataValue.md(f"```sql\n{SQL_A}\n```")}))
    assert tick(resources, instance, None).run_requests == []
    registry.put("low", SQL_B)
    assert [r.partition_key for r in tick(resources, instance, None).run_requests] == ["low"]


def test_image_sets_follow_the_catalog(catalog):
    """Re-ingesting the catalog re-materialises every set (incrementally); nothing is requested
    while the catalog has not changed."""
    backend, resources, instance, ds = catalog
    two_sets(backend, resources, instance)
    defs = dg.Definitions(assets=[products, product_images, image_set], resources=resources)
    selection = dg.AssetSelection.assets(image_set)
    quiet = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection)
    assert quiet.total_requested == 0

    write_styles(ds / "styles.csv", [product_line(i) for i in range(1, 11)] + [product_line(11)])
    (ds / "images" / "11.jpg").write_bytes(image_bytes(11))  # a new product the "high" query selects
    assert dg.materialize([products, product_images], resources=resources, instance=instance,
                          run_config=QUIET).success
    after = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection,
                                              cursor=quiet.cursor)
    assert after.get_requested_partitions(image_set.key) == {"low", "high"}

    result = dg.materialize([image_set], partition_key="high", resources=resources, instance=instance,
                            run_config=QUIET)
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    assert (metadata["copied"].value, metadata["unchanged"].value) == (1, 6)  # only the difference moved
    assert layout.set_image("high", 11) in {o.key for o in backend.store().list(layout.set_images("high"))}


def test_a_set_whose_manifest_lies_is_not_augmented(catalog):
    """The manifest check is blocking: in the same run the augmented set is not made, and
    declarative automation does not request it while the check fails."""
    backend, resources, instance, _ = catalog
    QueryRegistry(backend.store()).put("low", SQL_A)
    instance.add_dynamic_partitions(image_queries.name, ["low"])
    materialize_set(resources, instance, "low")
    assert [spec.blocking for spec in image_set_matches_manifest.check_specs] == [True]
    # Behind the pipeline's back: another, readable image (an augmentation of it would succeed).
    backend.store().put_bytes(layout.set_image("low", 2), image_bytes(7, size=(96, 128)))

    selection = dg.AssetSelection.assets(augmented_set) | dg.AssetSelection.checks(image_set_matches_manifest)
    result = dg.materialize([image_set, image_set_matches_manifest, augmented_set], selection=selection,
                            partition_key="low", resources=resources, instance=instance, run_config=QUIET,
                            raise_on_error=False)
    [evaluation] = result.get_asset_check_evaluations()
    assert (evaluation.passed, evaluation.metadata["images_checked"].value) == (False, 4)
    assert result.get_asset_materialization_events() == []  # augmented_set was not made
    assert not backend.store().exists(layout.augmented_latest("low"))

    defs = dg.Definitions(assets=[products, product_images, image_set, augmented_set],
                          asset_checks=[image_set_matches_manifest], resources=resources)
    automation = dg.evaluate_automation_conditions(defs=defs, instance=instance,
                                                   asset_selection=dg.AssetSelection.assets(augmented_set))
    assert automation.get_requested_partitions(augmented_set.key) == set()
