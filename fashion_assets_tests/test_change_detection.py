"""Change detection rests on recorded state (table ``product_images``, a set's manifest) and
sizes, not on ETags taken for MD5s, and a listing never reads an object: real moto S3 server
over HTTP, real local folder, real catalog database."""

import builtins
import io
import pathlib

import boto3
import boto3.s3.transfer
import botocore.config
import dagster as dg

from fashion_assets import layout
from fashion_assets.catalog.assets import product_images, products
from fashion_assets.core.storage import LocalObjectStore, S3ObjectStore, md5_hex
from fashion_assets.image_sets.assets import image_queries, image_set, image_set_matches_manifest
from fashion_assets.image_sets.export import read_manifest
from fashion_assets.image_sets.registry import QueryRegistry

from .catalog_files import make_dataset

CATALOG_IDS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 99]  # the images make_dataset's catalog stores
SQL = "SELECT id FROM products WHERE id < 6"  # ids 1-5: five images


def meta(result, key):
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(key)]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def check_result(result):
    [evaluation] = result.get_asset_check_evaluations()
    return evaluation.passed, {k: v.value for k, v in evaluation.metadata.items()}


class Pipeline:
    """A catalog ingested on one backend, and an instance to run image_set partitions in."""

    def __init__(self, backend, tmp_path):
        self.backend = backend
        self.resources = backend.resources(make_dataset(tmp_path / "ds"))
        self.instance = dg.DagsterInstance.ephemeral()
        self.store = backend.store()

    def ingest(self):
        return dg.materialize([products, product_images], resources=self.resources, instance=self.instance)

    def run_set(self, name, sql=None):
        if sql is not None:
            QueryRegistry(self.store).put(name, sql)
        self.instance.add_dynamic_partitions(image_queries.name, [name])
        return dg.materialize([image_set, image_set_matches_manifest], partition_key=name,
                              resources=self.resources, instance=self.instance)

    def check(self, name):
        """The check alone (no materialisation first), on what is in the store now. Dagster
        takes no partition_key for a run of checks only; the partition tag says it."""
        return dg.materialize([image_set, image_set_matches_manifest], resources=self.resources,
                              instance=self.instance, raise_on_error=False,
                              selection=dg.AssetSelection.checks(image_set_matches_manifest),
                              tags={"dagster/partition": name})


# --- S3: multipart ETags --------------------------------------------------------------------------


def s3_objects(store: S3ObjectStore, prefix: str) -> dict[str, str]:
    """``{key: ETag}`` straight from the bucket."""
    pages = store.client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix=store.prefix + prefix)
    return {o["Key"][len(store.prefix):]: o["ETag"].strip('"') for page in pages for o in page.get("Contents", [])}


def make_multipart(store: S3ObjectStore, keys) -> dict[str, str]:
    """Upload each object again, same bytes, through boto3's multipart path (what an `aws s3 cp`
    of a large file does); returns the new ETags, each ``<hex>-1``."""
    config = boto3.s3.transfer.TransferConfig(multipart_threshold=1)
    # moto gives a server-side copy of a multipart object the source's multipart checksum, which
    # botocore then rejects as a whole-object one: read without checking it (the bytes are fine).
    reader = boto3.client("s3", endpoint_url=store.client.meta.endpoint_url, region_name="us-east-1",
                          config=botocore.config.Config(response_checksum_validation="when_required"))
    for key in keys:
        data = reader.get_object(Bucket=store.bucket, Key=store.prefix + key)["Body"].read()
        store.client.upload_fileobj(io.BytesIO(data), store.bucket, store.prefix + key, Config=config)
    etags = {k: v for k, v in s3_objects(store, "").items() if k in set(keys)}
    assert len(etags) == len(keys) and all(etag.endswith("-1") for etag in etags.values()), etags
    return etags


def test_multipart_etags_move_nothing_on_a_rerun(production, tmp_path):
    pipeline = Pipeline(production, tmp_path)
    store = pipeline.store
    assert meta(pipeline.ingest(), "product_images")["images_uploaded"] == len(CATALOG_IDS)

    catalog_keys = [layout.catalog_image(i) for i in CATALOG_IDS]
    multipart = make_multipart(store, catalog_keys)
    assert all(obj.md5 is None for obj in store.list(layout.CATALOG_IMAGES))  # a multipart ETag is no MD5

    again = meta(pipeline.ingest(), "product_images")
    assert (again["images_uploaded"], again["images_unchanged"], again["bytes_uploaded"]) == (0, len(CATALOG_IDS), 0)
    assert {k: v for k, v in s3_objects(store, layout.CATALOG_IMAGES).items() if k in multipart} == multipart

    first = pipeline.run_set("multi", SQL)
    assert (meta(first, "image_set")["copied"], check_result(first)[0]) == (5, True)
    set_keys = [layout.set_image("multi", i) for i in range(1, 6)]
    set_multipart = make_multipart(store, set_keys)  # a server-side copy gets a plain ETag: make them multipart

    second = pipeline.run_set("multi")
    m = meta(second, "image_set")
    assert (m["copied"], m["unchanged"], m["bytes_copied"], m["dagster/row_count"]) == (0, 5, 0, 5)
    assert s3_objects(store, layout.set_images("multi")) == set_multipart  # nothing rewritten
    passed, check = check_result(second)
    assert passed and (check["images_checked"], check["missing"], check["wrong_size"]) == (5, 0, 0)
    assert check["md5_verified"] == 0  # multipart: sizes checked, MD5s unknown


def test_plain_etags_are_checked_as_md5s(production, tmp_path):
    """Where the store gives an MD5 (a single-part ETag) the check compares it too, and a run
    copies an object whose MD5 is not the recorded one even when its size is."""
    pipeline = Pipeline(production, tmp_path)
    assert pipeline.ingest().success
    store = pipeline.store
    pipeline.run_set("plain", SQL)
    passed, check = check_result(pipeline.check("plain"))
    assert passed and check["md5_verified"] == 5

    key = layout.set_image("plain", 2)
    original = store.get_bytes(key)
    store.put_bytes(key, bytes(reversed(original)))  # same size, other bytes, behind the set's back
    passed, check = check_result(pipeline.check("plain"))
    assert not passed and (check["missing"], check["wrong_size"], check["md5_differs"]) == (0, 0, 1)

    m = meta(pipeline.run_set("plain"), "image_set")
    assert (m["copied"], m["unchanged"]) == (1, 4) and store.get_bytes(key) == original


def test_a_kms_bucket_lists_no_md5s(production):
    """SSE-KMS ETags look like MD5s but are not: the store asks the bucket once and says None."""
    store = production.store()
    store.put_bytes("a/1.jpg", b"one")
    assert [o.md5 for o in store.list("a/")] == [md5_hex(b"one")]
    store.client.put_bucket_encryption(Bucket=store.bucket, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms"}}]})
    assert [(o.key, o.size, o.md5) for o in production.store().list("a/")] == [("a/1.jpg", 3, None)]


# --- the local folder: listing reads nothing ------------------------------------------------------


def test_local_listing_does_not_read_files(tmp_path, monkeypatch):
    store = LocalObjectStore(tmp_path / "store")
    store.put_bytes("a/b/1.jpg", b"one")
    store.put_bytes("a/b/22.jpg", b"twenty-two")
    store.put_bytes("a/c.txt", b"")

    def no_reading(*args, **kwargs):
        raise AssertionError(f"a listing read a file: {args}")

    with monkeypatch.context() as m:
        m.setattr(builtins, "open", no_reading)
        m.setattr(pathlib.Path, "open", no_reading)
        m.setattr(pathlib.Path, "read_bytes", no_reading)
        listed = list(store.list("a/"))
    assert [(o.key, o.size, o.md5) for o in listed] == [("a/b/1.jpg", 3, None), ("a/b/22.jpg", 10, None),
                                                        ("a/c.txt", 0, None)]


# --- both backends: a changed object is still found ------------------------------------------------


def test_a_changed_or_removed_set_image_is_found(backend, tmp_path):
    pipeline = Pipeline(backend, tmp_path)
    assert pipeline.ingest().success
    store = pipeline.store
    pipeline.run_set("watch", SQL)
    [row3] = [r for r in read_manifest(store, "watch").to_pylist() if r["id"] == 3]

    # Re-ingesting the same catalog moves nothing (the table is the state, not the listing).
    assert meta(pipeline.ingest(), "product_images")["images_uploaded"] == 0

    pipeline.run_set("other", "SELECT id FROM products WHERE id IN (3, 7)")

    key = layout.set_image("watch", 3)
    original = store.get_bytes(key)
    store.put_bytes(key, original + b"more")  # replaced behind the set's back, another size
    passed, check = check_result(pipeline.check("other"))  # the check looks at its partition's set only
    assert passed and (check["images_checked"], check["missing"], check["wrong_size"]) == (2, 0, 0)
    passed, check = check_result(pipeline.check("watch"))
    assert not passed and (check["images_checked"], check["missing"], check["wrong_size"], check["md5_differs"]) \
        == (5, 0, 1, 0)
    assert "image-sets/watch/images/3.jpg" in check["problems"]

    again = pipeline.run_set("watch")
    m = meta(again, "image_set")
    assert (m["copied"], m["unchanged"], m["bytes_copied"]) == (1, 4, row3["bytes"])
    assert store.get_bytes(key) == original and check_result(again)[0]

    store.delete(layout.set_image("watch", 1))
    store.delete(key)
    passed, check = check_result(pipeline.check("watch"))
    assert not passed and (check["images_checked"], check["missing"], check["wrong_size"], check["md5_differs"]) \
        == (5, 2, 0, 0)

    back = pipeline.run_set("watch")
    assert (meta(back, "image_set")["copied"], check_result(back)[0]) == (2, True)


def test_a_changed_catalog_image_is_uploaded_again(backend, tmp_path):
    """The catalog's own state: an object changed or removed behind the table's back is written
    again, an untouched one is not."""
    pipeline = Pipeline(backend, tmp_path)
    assert pipeline.ingest().success
    store = pipeline.store
    store.put_bytes(layout.catalog_image(4), b"not the image")
    store.delete(layout.catalog_image(5))
    m = meta(pipeline.ingest(), "product_images")
    assert (m["images_uploaded"], m["images_unchanged"]) == (2, len(CATALOG_IDS) - 2)
    dataset = pathlib.Path(pipeline.resources["catalog_source"].dataset_dir)
    assert store.get_bytes(layout.catalog_image(4)) == (dataset / "images" / "4.jpg").read_bytes()
    assert store.exists(layout.catalog_image(5))


def test_a_first_set_run_copies_everything(backend, tmp_path):
    """Without a previous manifest nothing is taken as in place, whatever the folder holds."""
    pipeline = Pipeline(backend, tmp_path)
    assert pipeline.ingest().success
    for i in range(1, 6):  # objects already at the set's keys, but no manifest recorded them
        pipeline.store.copy(layout.catalog_image(i), layout.set_image("fresh", i))
    assert meta(pipeline.run_set("fresh", SQL), "image_set")["copied"] == 5
