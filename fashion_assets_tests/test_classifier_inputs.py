"""classifier_inputs, the classifier's input cache: built once, incremental by MD5, read back
pixel for pixel as the JPEG stream decodes it, and training from it splits as before."""

import io

import dagster as dg
import numpy as np
import sqlalchemy as sa
from PIL import Image

from fashion_assets import layout
from fashion_assets.catalog.assets import product_images, products
from fashion_assets.classifier.assets import classifier_inputs, fashion_classifier
from fashion_assets.classifier.cache import training_images
from fashion_assets.classifier.rows import catalog_rows
from fashion_assets.classifier.cache import CacheMiss, CachedImages, catalog_photos, read_index, record_dtype
from fashion_assets.classifier.data import StoreImages

from .catalog_files import make_dataset

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
SMALL = {"image_size": 32, "ids_per_shard": 4}  # ids 1..9 -> shards of ids 0-3, 4-7, 8-11


def meta(result, key):
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(key)]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def photo(colour, size=(60, 80)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG")
    return buffer.getvalue()


def build(resources, instance, config=SMALL):
    return dg.materialize([classifier_inputs], resources=resources, instance=instance,
                          run_config={**QUIET, "ops": {"classifier_inputs": {"config": config}}})


def test_the_cache_is_incremental_and_reads_back_what_the_stream_decodes(backend, tmp_path):
    dataset = make_dataset(tmp_path / "ds")
    resources = backend.resources(dataset)
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([products, product_images], resources=resources, instance=instance, run_config=QUIET).success
    store, engine = backend.store(), backend.engine()
    photos = catalog_photos(engine)
    assert [p.id for p in photos] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 99]  # 99 has no product, still a photo

    first = meta(build(resources, instance), "classifier_inputs")
    assert (first["dagster/row_count"], first["images_decoded"], first["images_copied"]) == (10, 10, 0)
    assert (first["shards"], first["shards_written"], first["bytes"]) == (4, 4, 10 * record_dtype(32).itemsize)

    again = meta(build(resources, instance), "classifier_inputs")  # nothing changed: nothing written
    assert (again["images_decoded"], again["images_copied"], again["shards_written"]) == (0, 0, 0)

    (dataset / "images" / "6.jpg").write_bytes(photo((250, 20, 20)))  # one photo changes
    assert dg.materialize([product_images], resources=resources, instance=instance, run_config=QUIET).success
    changed = meta(build(resources, instance), "classifier_inputs")
    # Only 6 is decoded again; 4, 5 and 7 (its shard) are copied as bytes; the other shards stay.
    assert (changed["images_decoded"], changed["images_copied"], changed["shards_written"]) == (1, 3, 1)
    assert changed["shards_deleted"] == 0  # the replaced shard is kept one more run for readers

    rows = catalog_rows(engine).rows
    ids, keys, md5s = [r["id"] for r in rows], [r["key"] for r in rows], [r["md5"] for r in rows]
    cached = dict(CachedImages(store, 32, ids, md5s).dataset(np.arange(len(ids))).as_numpy_iterator())
    streamed = dict(StoreImages(store.get_bytes, keys, 32).dataset(np.arange(len(ids))).as_numpy_iterator())
    assert sorted(cached) == sorted(streamed) == list(range(len(ids)))
    assert all(np.array_equal(cached[i], streamed[i]) for i in cached)
    assert tuple(cached[ids.index(6)][16, 16]) == tuple(streamed[ids.index(6)][16, 16])
    order = [int(i) for i, _ in CachedImages(store, 32, ids, md5s).dataset(np.arange(len(ids)), 7).as_numpy_iterator()]
    assert sorted(order) == list(range(len(ids))) and order != list(range(len(ids)))

    (dataset / "images" / "2.jpg").write_bytes(photo((20, 250, 20)))  # changed, cache not rebuilt yet
    assert dg.materialize([product_images], resources=resources, instance=instance, run_config=QUIET).success
    rows = catalog_rows(engine).rows
    try:
        CachedImages(store, 32, [r["id"] for r in rows], [r["md5"] for r in rows])
        raise AssertionError("a stale cache was read")
    except CacheMiss as exc:
        assert str(exc) == ("the input cache at 32px lacks 1 of 9 photos (new or changed since it was built): "
                            "materialise classifier_inputs")
    images, source = training_images(store, rows, 32, 4, log=lambda m: None)
    assert source == "store JPEGs" and isinstance(images, StoreImages)

    last = meta(build(resources, instance), "classifier_inputs")
    assert (last["images_decoded"], last["shards_written"], last["shards_deleted"]) == (1, 1, 1)
    index = read_index(store, 32)
    named = set(index.column("shard").to_pylist())
    on_disk = {o.key for o in store.list(layout.model_inputs(32)) if o.key.endswith(".u8")}
    assert len(named) == 4 and len(on_disk - named) == 1  # the one the previous index named


def test_training_from_the_cache_splits_and_scores_as_from_the_jpegs(tmp_path):
    from .conftest import embedded_backend

    backend = embedded_backend(tmp_path)
    resources = backend.resources(make_dataset(tmp_path / "ds"))
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([products, product_images], resources=resources, instance=instance, run_config=QUIET).success
    config = {"epochs": 1, "image_size": 32, "batch_size": 4, "min_examples": 1, "validation_fraction": 0.3}

    def train():
        result = dg.materialize([fashion_classifier], resources=resources, instance=instance,
                                run_config={**QUIET, "ops": {"fashion_classifier": {"config": config}}})
        return meta(result, "fashion_classifier")

    from_jpegs = train()
    assert build(resources, instance).success
    from_cache = train()
    assert (from_jpegs["input_source"], from_cache["input_source"]) == ("store JPEGs", "classifier_inputs 32px")
    # The split is by group and seed, whatever the images are read from (they arrive in another
    # order). The plain photos are all one group of near-duplicates, so it is trained on whole
    # and the figure falls back to the kept rows.
    assert [from_jpegs[k] for k in ("training_images", "validation_images", "unseen_images")] == [8, 8, 1]
    assert [from_cache[k] for k in ("training_images", "validation_images", "unseen_images")] == [8, 8, 1]
    assert from_jpegs["validation_ids_md5"] == from_cache["validation_ids_md5"]
    with backend.engine().connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM partition_leases WHERE asset = 'classifier_inputs'")
                            ).scalar() == 0  # released at the end of the run


def test_the_cache_follows_the_catalog(tmp_path):
    """Automation (fashion_automation targets it) requests classifier_inputs when product_images
    lands, and nothing while the catalog has not changed."""
    from .conftest import embedded_backend

    resources = embedded_backend(tmp_path).resources(make_dataset(tmp_path / "ds"))
    instance = dg.DagsterInstance.ephemeral()
    defs = dg.Definitions(assets=[products, product_images, classifier_inputs], resources=resources)
    selection = dg.AssetSelection.assets(classifier_inputs)
    assert dg.materialize([products, product_images], resources=resources, instance=instance, run_config=QUIET).success
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection)
    assert build(resources, instance).success
    quiet = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection,
                                              cursor=first.cursor)
    assert quiet.total_requested == 0
    assert dg.materialize([product_images], resources=resources, instance=instance, run_config=QUIET).success
    after = dg.evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=selection,
                                              cursor=quiet.cursor)
    assert after.total_requested == 1
