"""Odd and hostile input, round two (issue 22): the gateway and the batch path judge an image by one
check; store keys, options and variables that gave a 500 or a traceback are refused cleanly; `query
add` neither replaces a query silently nor refuses what a file in ``queries/`` is allowed.

Real parts: a catalog ingested by ``product_images``, a model trained and published, its
``predictions``, the gateway as a ``fashion-assets serve`` process on loopback, and the CLI as
processes.

Why this module is long: it is the gateway's and the CLI's part of the issue's checklist, one
section per item, each with the fixtures it needs beside it (the image cases share one trained
and published model, the expensive part), so that the list reads against the issue in one place.
"""

from __future__ import annotations

import csv
import io
import os
import struct
import subprocess
import sys
from pathlib import Path

import dagster as dg
import httpx
import pytest
import sqlalchemy as sa
from PIL import Image, ImageOps

from fashion_assets import layout
from fashion_assets.catalog.assets import product_images, products
from fashion_assets.catalog.images import ImageRejected, inspect_image
from fashion_assets.classifier.assets import fashion_classifier
from fashion_assets.core.storage import md5_hex
from fashion_assets.image_sets.assets import image_queries, image_set
from fashion_assets.image_sets.registry import QueryRegistry
from fashion_assets.predictions.assets import predictions
from fashion_assets.serving.assets import serving_model, serving_signature

from .catalog_files import make_dataset
from .conftest import embedded_backend
from .test_hostile_input import tick
from .test_serving import QUIET, TINY_MODEL, assert_same_as_table, gateway, materialise, small_real_catalog

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "examples" / "sample-catalog" / "images" / "10000.jpg"
N_PHOTOS = 24  # ordinary catalog photos; then one MPO and one truncated JPEG
FASHION_VARS = ("FASHION_DATASET_DIR", "FASHION_CATALOG_URL", "FASHION_STORE_URL", "FASHION_S3_ENDPOINT_URL",
                "FASHION_QUERY_URL")


def run_cli(args, env_extra: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    """``fashion-assets`` as a real process, configured only by the environment."""
    env = {k: v for k, v in os.environ.items() if k not in FASHION_VARS and not k.startswith("FASHION_SERVE_")}
    env["DAGSTER_HOME"] = str(tmp_path / "dagster_home")
    Path(env["DAGSTER_HOME"]).mkdir(exist_ok=True)
    (Path(env["DAGSTER_HOME"]) / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env.update(env_extra)
    return subprocess.run([str(BIN / "fashion-assets"), *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)


# --- the images ----------------------------------------------------------------------------------


def huge_header_jpeg(end_marker: bool = True) -> bytes:
    """A 16x16 JPEG whose frame header is rewritten to claim 6000x6000 pixels: a few hundred
    bytes of data for 36 megapixels (libjpeg fills what is missing with grey). Without
    ``end_marker``, its last two bytes (EOI) are cut off too."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 30, 200)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    at = 2
    while data[at + 1] not in (0xC0, 0xC1, 0xC2):  # walk the segments to the start of frame
        at += 2 + struct.unpack(">H", data[at + 2:at + 4])[0]
    data[at + 5:at + 9] = struct.pack(">HH", 6000, 6000)  # height, width
    return bytes(data if end_marker else data[:-2])


def as_mpo(photo: bytes) -> bytes:
    """``photo`` saved as an MPO: the photo, then a second picture (its mirror image), as a
    camera writes a stereo pair or a depth picture."""
    with Image.open(io.BytesIO(photo)) as img:
        first = img.convert("RGB")
    buffer = io.BytesIO()
    first.save(buffer, "MPO", save_all=True, append_images=[ImageOps.mirror(first)])
    return buffer.getvalue()


def truncated_reason(data: bytes) -> str:
    return f"corrupt image: truncated ({len(data):,} bytes cannot hold the 6000x6000 pixels its header declares)"


def test_the_crafted_images_are_what_the_cases_need():
    """The truncated JPEG claims 6000x6000 in 633 bytes and Pillow alone would decode it (grey);
    the MPO is Pillow's MPO with two pictures."""
    data = huge_header_jpeg()
    with Image.open(io.BytesIO(data)) as img:
        assert (len(data), img.format, img.size) == (633, "JPEG", (6000, 6000))
        img.load()  # no error: only the length gives it away
    with Image.open(io.BytesIO(as_mpo((PHOTO).read_bytes()))) as img:
        assert (img.format, img.n_frames) == ("MPO", 2)


def test_the_batch_check_refuses_the_truncated_jpeg_and_accepts_the_mpo():
    for data in (huge_header_jpeg(), huge_header_jpeg(end_marker=False)):
        with pytest.raises(ImageRejected) as refused:
            inspect_image(1, data)
        assert (str(refused.value), refused.value.kind) == (truncated_reason(data), "corrupt")
    mpo = as_mpo((PHOTO).read_bytes())
    info = inspect_image(10000, mpo)
    assert (info.format, info.width, info.height, info.bytes) == ("MPO", 224, 224, len(mpo))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A catalog of real photos, one of them re-saved as an MPO and one replaced by the truncated
    JPEG, ingested for real; set 'all', a tiny classifier, its predictions, its publication."""
    tmp = tmp_path_factory.mktemp("gateway-hostile")
    backend = embedded_backend(tmp)
    dataset = small_real_catalog(tmp / "dataset", N_PHOTOS + 2)
    ids = sorted(int(p.stem) for p in (dataset / "images").glob("*.jpg"))
    mpo_id, truncated_id = ids[-2], ids[-1]
    mpo_path = dataset / "images" / f"{mpo_id}.jpg"
    mpo_path.write_bytes(as_mpo(mpo_path.read_bytes()))
    (dataset / "images" / f"{truncated_id}.jpg").write_bytes(huge_header_jpeg())
    resources = backend.resources(dataset)
    instance = dg.DagsterInstance.ephemeral()
    materialise([products, product_images], resources, instance)
    QueryRegistry(backend.store()).put("all", "SELECT id FROM products")
    instance.add_dynamic_partitions(image_queries.name, ["all"])
    materialise([image_set], resources, instance, partition="all")
    materialise([fashion_classifier], resources, instance, config={fashion_classifier: TINY_MODEL})
    materialise([predictions], resources, instance, partition="all")
    materialise([serving_model], resources, instance, checks=[serving_signature])
    with backend.engine().connect() as conn:
        rows = {r["id"]: dict(r) for r in conn.execute(sa.text(
            "SELECT * FROM predictions WHERE image_set = 'all' ORDER BY id")).mappings()}
        formats = dict(conn.execute(sa.text("SELECT id, format FROM product_images")).all())
    return backend, dataset, rows, formats, mpo_id, truncated_id


@pytest.fixture(scope="module")
def served(pipeline):
    """The gateway as a process, its upload limit set by FASHION_SERVE_MAX_BYTES (read when serve starts)."""
    backend, dataset, *_ = pipeline
    with gateway(backend, dataset, env={"FASHION_SERVE_MAX_BYTES": "2_000_000"}) as (base, _):
        yield base


def ingest_reasons(backend) -> dict[str, str]:
    """``{file: reason}`` of the images the ingest refused (its report in the store)."""
    report = backend.store().get_bytes(layout.IMAGES_REJECTED_REPORT).decode()
    return {row["file"]: row["reason"] for row in csv.DictReader(io.StringIO(report))}


def test_the_truncated_jpeg_is_refused_online_for_the_reason_the_ingest_gave(pipeline, served):
    backend, dataset, rows, formats, _, truncated_id = pipeline
    data = (dataset / "images" / f"{truncated_id}.jpg").read_bytes()
    # The batch path: the ingest refused it (not stored, not in product_images, never predicted).
    reason = ingest_reasons(backend)[f"{truncated_id}.jpg"]
    assert reason == truncated_reason(data)
    assert truncated_id not in formats and truncated_id not in rows
    assert not backend.store().exists(layout.catalog_image(truncated_id))
    # Online: the same bytes, the same verdict and reason, as an upload and by key.
    upload = httpx.post(served + "/v1/predict", files={"image": ("huge.jpg", data, "image/jpeg")})
    assert (upload.status_code, upload.json()) == (422, {"error": f"upload huge.jpg: {reason}"})
    key = layout.set_image("elsewhere", truncated_id)
    backend.store().put_bytes(key, data)
    by_key = httpx.post(served + "/v1/predict", json={"key": key})
    assert (by_key.status_code, by_key.json()) == (422, {"error": f"key {key}: {reason}"})
    # Without its end marker: refused the same way by both.
    cut = huge_header_jpeg(end_marker=False)
    with pytest.raises(ImageRejected) as refused:
        inspect_image(truncated_id, cut)
    response = httpx.post(served + "/v1/predict", files={"image": ("cut.jpg", cut)})
    assert (response.status_code, response.json()) == (422, {"error": f"upload cut.jpg: {refused.value}"})


def test_an_mpo_catalog_photo_is_accepted_online_as_in_batch(pipeline, served):
    backend, dataset, rows, formats, mpo_id, _ = pipeline
    data = (dataset / "images" / f"{mpo_id}.jpg").read_bytes()
    # The batch path: ingested as an MPO, stored as it is, and tagged by predictions.
    assert formats[mpo_id] == "MPO"
    assert backend.store().get_bytes(layout.catalog_image(mpo_id)) == data
    row = rows[mpo_id]
    # Online, by key and as an upload: the predictions table's answer; its own photo at distance 0.
    for response in (httpx.post(served + "/v1/predict", json={"key": layout.catalog_image(mpo_id)}),
                     httpx.post(served + "/v1/predict", files={"image": ("pair.jpg", data, "image/jpeg")})):
        assert response.status_code == 200, response.text
        assert_same_as_table(response.json()["predictions"], row)
        assert response.json()["near_duplicates"][0] == {"id": mpo_id, "distance": 0}


def test_a_variable_sets_the_upload_limit_when_serve_starts(served):
    response = httpx.post(served + "/v1/predict", files={"image": ("big.jpg", b"\xff" * 2_000_001)})
    assert (response.status_code, response.json()) == (413, {"error": "request body is over the 2,000,000-byte limit"})


# --- store keys that gave a 500 ------------------------------------------------------------------

ID_RANGE = "outside the range of ids (64-bit integers, at most 9,223,372,036,854,775,807)"
LONG_KEY = "catalog/images/" + "9" * 300 + ".jpg"


@pytest.mark.parametrize(("key", "message"), [
    (LONG_KEY, f"key {LONG_KEY[:60]!r}...{LONG_KEY[-20:]!r} (319 characters) cannot name a product image: "
               f"the 300-digit number in its name is {ID_RANGE}"),
    ("catalog/images/9223372036854775808.jpg", "key 'catalog/images/9223372036854775808.jpg' cannot name a "
     f"product image: the 19-digit number in its name is {ID_RANGE}"),
    ("image-sets/all/augmented/ab12/15_" + "1" * 20 + ".jpg", "key 'image-sets/all/augmented/ab12/15_"
     + "1" * 20 + f".jpg' cannot name a product image: the 20-digit number in its name is {ID_RANGE}"),
    ("image-sets/" + "a" * 300 + "/images/1.jpg",
     f"key {('image-sets/' + 'a' * 49)!r}...{('a' * 7 + '/images/1.jpg')!r} (324 characters) cannot name a "
     f"product image: {'a' * 70!r} is not a set's name (1-64 lower-case letters, digits and '-')"),
    ("image-sets/all/augmented/" + "f" * 65 + "/1_1.jpg", f"key {'image-sets/all/augmented/' + 'f' * 65 + '/1_1.jpg'!r}"
     " cannot name a product image: an augmented set's folder is a spec hash of at most 64 hex digits"),
])
def test_a_key_that_cannot_name_an_image_is_a_400_naming_it(served, key, message):
    response = httpx.post(served + "/v1/predict", json={"key": key})
    assert (response.status_code, response.json()) == (400, {"error": message})


def test_the_largest_id_is_still_a_key_and_only_missing(served):
    key = "catalog/images/9223372036854775807.jpg"
    response = httpx.post(served + "/v1/predict", json={"keys": [key]})
    assert (response.status_code, response.json()) == (404, {"error": f"no object {key!r} in the store"})


# --- options and variables that failed late, or broke every command -------------------------------

PORT = "expected a port number from 1 to 65535"
NOT_A_NETWORK = "is not a network (a CIDR such as 10.1.0.0/16, or an address)"


@pytest.mark.parametrize(("args", "env", "line"), [
    (["--allow-networks", "10.0.0.0/8,not-a-cidr"], {},
     f"--allow-networks 10.0.0.0/8,not-a-cidr: 'not-a-cidr' {NOT_A_NETWORK}"),
    (["--port", "70000"], {}, f"--port 70000: {PORT}"),
    (["--port", "abc"], {}, f"--port abc: {PORT}"),
    (["--max-batch", "0"], {}, "--max-batch 0: expected a positive whole number of images"),
    (["--workers", "0"], {}, "--workers 0: expected a positive whole number of processes"),
    ([], {"FASHION_SERVE_WORKERS": "two"}, "FASHION_SERVE_WORKERS='two': expected a positive whole number "
                                           "of processes"),
    ([], {"FASHION_SERVE_PORT": "abc"}, f"FASHION_SERVE_PORT='abc': {PORT}"),
    ([], {"FASHION_SERVE_MAX_BYTES": "10MB"}, "FASHION_SERVE_MAX_BYTES='10MB': expected a positive whole number "
                                              "of bytes"),
    ([], {"FASHION_SERVE_DOWNLOAD_TIMEOUT_S": "-1"}, "FASHION_SERVE_DOWNLOAD_TIMEOUT_S='-1': expected a positive "
                                                     "number of seconds"),
    ([], {"FASHION_SERVE_NEAR_DUPLICATES_REFRESH_S": "nan"}, "FASHION_SERVE_NEAR_DUPLICATES_REFRESH_S='nan': "
                                                             "expected a positive number of seconds"),
    ([], {"FASHION_SERVE_BACKEND": "gpu"}, "FASHION_SERVE_BACKEND='gpu': expected embedded or tfserving"),
    ([], {"FASHION_SERVE_ALLOW_PRIVATE_URLS": "yes"}, "FASHION_SERVE_ALLOW_PRIVATE_URLS='yes': expected 1 (on) "
                                                      "or 0 (off)"),
    ([], {"FASHION_SERVE_ALLOW_NETWORKS": "10.0.0.0/33"}, f"FASHION_SERVE_ALLOW_NETWORKS='10.0.0.0/33': "
                                                          f"'10.0.0.0/33' {NOT_A_NETWORK}"),
    # The option wins over its variable, so a bad variable under a good option is not read.
    (["--port", "99999"], {"FASHION_SERVE_PORT": "8080"}, f"--port 99999: {PORT}"),
])
def test_serve_refuses_a_bad_option_or_variable_at_start_in_one_line(tmp_path, args, env, line):
    """Before it touches the store or the model: exit 2, one line on stderr, nothing on stdout."""
    result = run_cli(["serve", *args], env, tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"fashion-assets: {line}\n")


def test_a_bad_serve_variable_does_not_break_the_other_commands(tmp_path):
    env = {"FASHION_SERVE_PORT": "abc", "FASHION_SERVE_MAX_BYTES": "x", "FASHION_SERVE_DOWNLOAD_TIMEOUT_S": "x",
           "FASHION_SERVE_NEAR_DUPLICATES_REFRESH_S": "x", "FASHION_CATALOG_URL": f"sqlite:///{tmp_path / 'c.sqlite'}",
           "FASHION_STORE_URL": str(tmp_path / "store")}
    added = run_cli(["query", "add", "all", "--sql", "SELECT id FROM products"], env, tmp_path)
    assert (added.returncode, added.stderr) == (0, "")
    listed = run_cli(["query", "list"], env, tmp_path)
    assert (listed.returncode, listed.stdout, listed.stderr) == (
        0, f"{'all':32} {'partition':16} SELECT id FROM products\n", "")


# --- query add: no silent replacement; one verdict with queries/ ---------------------------------


@pytest.fixture
def catalog(tmp_path):
    """A small catalog, ingested; the CLI's environment for it."""
    backend = embedded_backend(tmp_path)
    resources = backend.resources(make_dataset(tmp_path / "dataset"))
    dg.materialize([products, product_images], resources=resources, run_config=QUIET)
    return backend, resources, {"FASHION_CATALOG_URL": backend.catalog_url, "FASHION_STORE_URL": backend.store_url}


def test_query_add_refuses_an_existing_name_unless_replace_and_says_what_it_replaced(catalog, tmp_path):
    backend, _, env = catalog
    store = backend.store()
    first = tmp_path / "first.sql"
    first.write_text("SELECT id FROM products WHERE id < 5\n-- the first five\n")
    added = run_cli(["query", "add", "few", "--file", first], env, tmp_path)
    assert (added.returncode, added.stderr) == (0, "")
    stored = store.get_bytes(layout.query("few"))
    old = f"queries/few.sql, MD5 {md5_hex(stored)}, first line: SELECT id FROM products WHERE id < 5"

    again = run_cli(["query", "add", "few", "--sql", "SELECT id FROM products"], env, tmp_path)
    assert (again.returncode, again.stdout, again.stderr) == (
        2, "", f"fashion-assets: query 'few' already exists ({old}): pass --replace to replace it\n")
    assert store.get_bytes(layout.query("few")) == stored  # untouched

    replaced = run_cli(["query", "add", "few", "--sql", "SELECT id FROM products", "--replace"], env, tmp_path)
    assert (replaced.returncode, replaced.stderr) == (0, "")
    assert replaced.stdout.splitlines() == [
        "Query 'few' registered (columns: id).", f"Replaced: {old}",
        "Materialise it: dagster asset materialize -m fashion_assets.definitions --select image_set --partition few"]
    assert store.get_bytes(layout.query("few")) == b"SELECT id FROM products\n"
    # --replace for a new name just adds it.
    new = run_cli(["query", "add", "other", "--sql", "SELECT id FROM products", "--replace"], env, tmp_path)
    assert (new.returncode, new.stdout.splitlines()) == (0, [
        "Query 'other' registered (columns: id).",
        "Materialise it: dagster asset materialize -m fashion_assets.definitions --select image_set --partition other"])


def test_make_demo_adds_its_queries_with_replace(catalog, tmp_path):
    """`make demo` adds every example query on every run: its line passes --replace, and twice
    over is fine."""
    _, _, env = catalog
    demo = [line for line in (ROOT / "Makefile").read_text().splitlines() if "fashion-assets query add" in line]
    assert demo == ["\t@for q in examples/queries/*.sql; do $(BIN)/fashion-assets query add $$(basename $$q .sql) "
                    "--file $$q --replace || exit 1; done"]
    for _ in range(2):
        result = run_cli(["query", "add", "mens-footwear", "--file", ROOT / "examples/queries/mens-footwear.sql",
                          "--replace"], env, tmp_path)
        assert (result.returncode, result.stderr) == (0, "")


CASES = {
    "trailing-comment": ("SELECT id FROM products WHERE id <= 6 -- the photographed ones", None),
    "trailing-block": ("SELECT id FROM products WHERE id <= 6 /* the photographed ones */", None),
    "comment-lines": ("-- first\nSELECT id\n-- between\nFROM products WHERE id <= 6\n--last", None),
    "no-id": ("SELECT gender FROM products -- no id", "the query must return a column named id; it returns gender"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_query_add_and_a_file_in_queries_give_the_same_verdict(catalog, tmp_path, name):
    """The same file, through `query add` (a process) and dropped in queries/ (the sensor, then
    image_set): both accept it, or both refuse it for the same reason."""
    backend, resources, env = catalog
    sql, refusal = CASES[name]
    path = tmp_path / f"{name}.sql"
    path.write_text(sql)
    added = run_cli(["query", "add", "by-cli", "--file", path], env, tmp_path)

    store = backend.store()
    store.put_bytes(layout.query(name), path.read_bytes())
    instance = dg.DagsterInstance.ephemeral()
    requested = tick(resources, instance, None)  # the sensor's check is on paper: it requests both
    assert name in [r.partition_key for r in requested.run_requests]
    result = dg.materialize([image_set], resources=resources, instance=instance, partition_key=name,
                            run_config=QUIET, raise_on_error=False)
    if refusal is None:
        assert (added.returncode, added.stderr) == (0, "")
        assert result.success
        assert [o.key for o in store.list(layout.set_images(name))] == [
            f"{layout.set_images(name)}{i}.jpg" for i in range(1, 7)]
    else:
        assert (added.returncode, added.stderr) == (2, f"fashion-assets: {refusal}\n")
        assert not result.success
        [failure] = result.get_step_failure_events()
        assert f"SqlRejected: {refusal}\n" in str(failure.step_failure_data.error)
