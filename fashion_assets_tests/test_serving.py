"""Online prediction, for real: ``serving_model`` publishes a trained classifier, the gateway runs
as a real ``fashion-assets serve`` process (uvicorn on loopback) and is called over HTTP; its
answers (calibrated confidences, the auto flag) are compared with a real ``predictions``
materialisation of the same images, and its near-duplicates with the catalog's own hashes.

Why this module is long: one trained model and one materialised ``predictions`` table (the
expensive part) serve every test here, and the hostile-input tests need the same gateway."""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import httpx
import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from fashion_assets import layout
from fashion_assets.catalog.assets import product_images, products
from fashion_assets.catalog.duplicates import MAX_DISTANCE, perceptual_hash
from fashion_assets.classifier.artifacts import latest_version, load_version, read_labels
from fashion_assets.classifier.assets import fashion_classifier
from fashion_assets.classifier.calibration import apply_temperature
from fashion_assets.classifier.images import load_array
from fashion_assets.classifier.labels import HEADS
from fashion_assets.image_sets.assets import image_queries, image_set
from fashion_assets.image_sets.registry import QueryRegistry
from fashion_assets.predictions.assets import predictions
from fashion_assets.serving import publish
from fashion_assets.serving.assets import serving_model, serving_signature
from fashion_assets.serving.backends import ModelInfo

from .catalog_files import decompression_bomb, image_bytes, truncated_jpeg
from .conftest import Backend, embedded_backend
from .servers import free_port, gateway_process, stop_group

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "sample-catalog"
TINY_MODEL = {"epochs": 1, "image_size": 32, "batch_size": 8, "min_examples": 1, "validation_fraction": 0.3}
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
N_PRODUCTS = 40
SECRET = "s3cr3t-signature-value"
# Written into the trained model's labels.json by hand (the contract; fitting them is the
# classifier's, tested there): T = 1.5 on article_type, whose threshold is null (never automatic).
TEMPERATURES = {"master_category": 0.5, "sub_category": 2.0, "article_type": 1.5}


def small_real_catalog(root: Path, n: int = N_PRODUCTS) -> Path:
    """The first ``n`` imaged products of the sample catalog (real product photos)."""
    lines = (SAMPLE / "styles.csv").read_text(encoding="utf-8").splitlines()
    (root / "images").mkdir(parents=True)
    kept = [lines[0]]
    for line in lines[1:]:
        product_id = line.split(",", 1)[0]
        image = SAMPLE / "images" / f"{product_id}.jpg"
        if image.is_file():
            kept.append(line)
            (root / "images" / image.name).write_bytes(image.read_bytes())
        if len(kept) > n:
            break
    (root / "styles.csv").write_text("\n".join(kept) + "\n", encoding="utf-8")
    return root


def calibrate_by_hand(store, dataset: Path, workdir: Path) -> dict:
    """Give the newest model a ``calibration`` in its labels.json: ``TEMPERATURES`` (sharper
    where the model's confidences are too alike to place a threshold), and for
    master_category and sub_category a threshold in the widest gap among the middle half of the
    calibrated top-1 confidences of the catalog's photos, so some tags are automatic and some
    not, and no confidence lies within rounding of a threshold."""
    version = latest_version(store)
    model = load_version(store, version, workdir)
    paths = sorted((dataset / "images").glob("*.jpg"))
    probs = model.predict(load_array(enumerate(p.read_bytes() for p in paths), len(paths), model.image_size))
    calibration = {}
    for head, temperature in TEMPERATURES.items():
        threshold = None
        if head != "article_type":
            # A one-epoch model can answer nearly the same for every photo: sharpen (a smaller
            # temperature spreads the confidences) until the gap is clear of rounding.
            for temperature in (temperature, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01):
                top1 = np.sort(apply_temperature(probs[head], temperature).max(axis=1).astype(np.float64))
                middle = top1[len(top1) // 4: 3 * len(top1) // 4 + 1]
                widest = int(np.argmax(np.diff(middle)))
                if middle[widest + 1] - middle[widest] > 1e-4:
                    break
            assert middle[widest + 1] - middle[widest] > 1e-4, (head, middle)
            threshold = round(float(middle[widest] + middle[widest + 1]) / 2, 6)
        calibration[head] = {"temperature": temperature, "threshold": threshold}
    labels = read_labels(store, version)
    store.put_bytes(layout.model_labels(version), json.dumps({**labels, "calibration": calibration}).encode())
    return calibration


def materialise(assets, resources, instance, partition=None, config=None, checks=()):
    ops = {a.node_def.name: {"config": c} for a, c in (config or {}).items()}
    result = dg.materialize([*assets, *checks], resources=resources, instance=instance, partition_key=partition,
                            run_config={**QUIET, "ops": ops})
    assert result.success
    return result


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Catalog, set 'all', a tiny classifier, its predictions and its publication: once."""
    tmp = tmp_path_factory.mktemp("serving")
    backend = embedded_backend(tmp)
    dataset = small_real_catalog(tmp / "dataset")
    resources = backend.resources(dataset)
    instance = dg.DagsterInstance.ephemeral()
    materialise([products, product_images], resources, instance)
    QueryRegistry(backend.store()).put("all", "SELECT id FROM products")
    instance.add_dynamic_partitions(image_queries.name, ["all"])
    materialise([image_set], resources, instance, partition="all")
    materialise([fashion_classifier], resources, instance, config={fashion_classifier: TINY_MODEL})
    calibrate_by_hand(backend.store(), dataset, tmp / "calibration")
    materialise([predictions], resources, instance, partition="all")
    published = materialise([serving_model], resources, instance, checks=[serving_signature])
    with backend.engine().connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM predictions WHERE image_set = 'all' ORDER BY id")).mappings().all()
    return backend, dataset, published, [dict(r) for r in rows]


@contextlib.contextmanager
def gateway(backend, dataset, *args: str, env: dict | None = None):
    """``fashion-assets serve`` as a real process on a free loopback port, until /healthz is 200."""
    log_path = Path(backend.store_url).parent / f"gateway-{time.monotonic_ns()}.log"
    full_env = {**os.environ, **backend.env(dataset), "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    with gateway_process(full_env, log_path, *args, cwd=ROOT) as base:
        yield base, log_path


@pytest.fixture(scope="module")
def default_gateway(pipeline):
    backend, dataset, _, _ = pipeline
    with gateway(backend, dataset) as served:
        yield served


class ImageServer(http.server.ThreadingHTTPServer):
    """A loopback HTTP server with the answers the URL tests need."""

    daemon_threads = True

    def __init__(self, images: dict[str, bytes]):
        self.images = images
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        path, _, query = self.path.partition("?")
        if path.startswith("/img/") and path[5:] in self.server.images:
            return self._send(200, self.server.images[path[5:]])
        if path == "/redirect":
            self.send_response(302)
            self.send_header("Location", query.removeprefix("to="))
            self.send_header("Content-Length", "0")
            return self.end_headers()
        if path == "/big":  # declared too large
            return self._send(200, b"\xff" * (10 * 1024 * 1024 + 1))
        if path == "/big-undeclared":  # too large, no Content-Length: counted while streaming
            self.send_response(200)
            self.end_headers()
            for _ in range(11):
                self.wfile.write(b"\xff" * 1024 * 1024)
            return None
        if path == "/slow":
            time.sleep(4)
            return self._send(200, b"late")
        return self._send(404, b"no such thing")

    def _send(self, status: int, body: bytes):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)


@pytest.fixture(scope="module")
def image_server(pipeline):
    _, dataset, _, rows = pipeline
    images = {f"{r['id']}.jpg": (dataset / "images" / f"{r['id']}.jpg").read_bytes() for r in rows}
    server = ImageServer(images)
    yield server
    server.shutdown()


def expected(row: dict) -> dict:
    return {h: [{"label": label, "confidence": p} for label, p in json.loads(row[f"{h}_top5"])] for h in HEADS}


def assert_same_as_table(answer: dict, row: dict) -> None:
    """Labels equal the predictions table's, best first; confidences agree to 1e-5; each head's
    first entry, and only it, carries the table's auto flag (``<head>_auto``)."""
    want = expected(row)
    for head in HEADS:
        got = answer[head]
        assert [g["label"] for g in got][:1] == [row[f"{head}_label"]], (row["id"], head)
        assert row[f"{head}_auto"] is not None, (row["id"], head)
        assert got[0]["auto"] is bool(row[f"{head}_auto"]), (row["id"], head, got[0])
        assert [set(g) for g in got] == [{"label", "confidence", "auto"}] + [{"label", "confidence"}] * (len(got) - 1)
        assert len(got) == len(want[head]) == min(5, len(got))
        for g, w in zip(got, want[head], strict=True):
            assert abs(g["confidence"] - w["confidence"]) <= 1e-5 + 1e-12, (row["id"], head, g, w)
        # the rest of the top 5 too, except where two probabilities tie within the tolerance
        for i, (g, w) in enumerate(zip(got, want[head], strict=True)):
            if g["label"] != w["label"]:
                assert abs(got[i]["confidence"] - want[head][i]["confidence"]) <= 2e-5


def catalog_hashes(engine) -> dict[int, str]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT id, phash FROM product_images")).all())


def hash_of(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return perceptual_hash(img)


def expected_near(data: bytes, hashes: dict[int, str]) -> list[dict]:
    """The catalog products within the group threshold of ``data``'s photo, closest first, at
    most 10: counted bit by bit with Python integers, not with the gateway's index."""
    mine = int(hash_of(data), 16)
    found = sorted((bin(mine ^ int(h, 16)).count("1"), pid) for pid, h in hashes.items() if h)
    return [{"id": pid, "distance": d} for d, pid in found if d <= MAX_DISTANCE][:10]


def photos_outside(hashes: dict[int, str]) -> list[tuple[int, bytes]]:
    """Sample-catalog photos of products not in the test's catalog, in id order."""
    return [(int(p.stem), p.read_bytes()) for p in sorted((SAMPLE / "images").glob("*.jpg"))
            if int(p.stem) not in hashes]


def assert_same_near_duplicates(body: dict, data: bytes, hashes: dict[int, str]) -> None:
    assert body["near_duplicates"] == expected_near(data, hashes)


# --- publication ---------------------------------------------------------------------------------


def test_serving_model_publishes_tf_serving_layout(pipeline):
    backend, _, result, rows = pipeline
    store = backend.store()
    [event] = result.get_asset_materialization_events()
    meta = {k: v.value for k, v in event.materialization.metadata.items()}
    version = rows[0]["model_version"]
    number = int(version[:8] + version[9:15])
    assert (meta["serving_version"], meta["model_version"]) == (number, version)
    assert meta["signature"] == (
        "serving_default(image: uint8 [None, 32, 32, 3]) -> "
        + ", ".join(f"{h}: float32 [None, {len(json.loads(store.get_bytes(layout.model_labels(version)))['heads'][h])}]"
                    for h in sorted(HEADS)))
    assert store.exists(f"serving/fashion_classifier/{number}/saved_model.pb")
    assert meta["size_bytes"] == sum(o.size for o in store.list(layout.serving_version(number)))
    assert store.get_bytes("serving/models.config").decode() == (
        "model_config_list {\n  config {\n    name: \"fashion_classifier\"\n"
        "    base_path: \"/models/fashion_classifier\"\n    model_platform: \"tensorflow\"\n"
        f"    model_version_policy {{ specific {{ versions: {number} }} }}\n  }}\n}}\n")
    [check] = result.get_asset_check_evaluations()
    assert check.passed and check.metadata["problems"].value == "none"
    # The published copy of the labels carries the model's calibration, for the tfserving backend.
    published_labels = publish.read_published_labels(store, number)
    assert published_labels["calibration"] == read_labels(store, version)["calibration"]
    assert published_labels["calibration"]["article_type"] == {"temperature": 1.5, "threshold": None}
    # Publishing the same model again copies nothing and keeps the number.
    again = publish.publish(store, version)
    assert (again.number, again.reused, again.bytes) == (number, True, meta["size_bytes"])


def test_the_signature_check_names_what_is_wrong():
    signature = {"inputs": {"inputs": {"dtype": "float32", "shape": [None, 64, 64, 3]}},
                 "outputs": {"master_category": {"dtype": "float32", "shape": [None, 2]}}, "signatures": []}
    classes = {"master_category": ["a", "b"], "sub_category": ["c"], "article_type": ["d", "e", "f"]}
    assert publish.signature_problems(signature, 32, classes) == [
        "input inputs: float32 [None, 64, 64, 3], expected uint8 [None, 32, 32, 3]",
        "output sub_category is missing (outputs: ['master_category'])",
        "output article_type is missing (outputs: ['master_category'])",
    ]
    assert publish.signature_problems({"inputs": {}, "signatures": ["other"]}, 32, classes) == [
        "no serving_default signature (signatures: ['other'])"]


def test_serving_keys_are_tf_servings_layout():
    assert layout.serving_version(20250101120000) == "serving/fashion_classifier/20250101120000/"
    assert layout.serving_labels(7) == "serving/fashion_classifier/7/assets.extra/labels.json"
    assert layout.SERVING_CONFIG == "serving/models.config"
    assert layout.serving_version_number("serving/fashion_classifier/7/variables/variables.index") == 7
    assert layout.serving_version_number("serving/fashion_classifier/x/saved_model.pb") is None
    for bad in (0, -1, "3", True):
        with pytest.raises(ValueError, match="TF Serving needs a positive integer"):
            layout.serving_version(bad)
    assert publish.serving_number("20250101T120000Z", []) == 20250101120000
    assert publish.serving_number("imported-x", [3, 9]) == 10
    assert [layout.is_image_key(k) for k in ("catalog/images/15.jpg", "image-sets/a/images/15.jpg",
                                             "image-sets/a/augmented/3ef0/15_1.jpg", "models/fashion_classifier/LATEST",
                                             "catalog/images/../../x.jpg", "image-sets/a/manifest.parquet")] == [
        True, True, True, False, False, False]


# --- the gateway: answers ------------------------------------------------------------------------


def test_healthz_and_model(pipeline, default_gateway):
    backend, _, _, rows = pipeline
    base, _ = default_gateway
    version = rows[0]["model_version"]
    labels = json.loads(backend.store().get_bytes(layout.model_labels(version)))
    assert httpx.get(base + "/healthz").json() == {"status": "ok", "backend": "embedded", "model_version": version}
    model = httpx.get(base + "/v1/model").json()
    assert model == {"model_version": version, "serving_version": int(version[:8] + version[9:15]),
                     "model_name": "fashion_classifier", "image_size": 32, "input": "uint8 RGB [N, 32, 32, 3]",
                     "heads": labels["heads"], "calibration": labels["calibration"], "backend": "embedded"}


def test_answers_are_calibrated_and_auto_only_with_a_threshold():
    """``ModelInfo.answers``: confidences are softmax(log p / T), the first entry's auto flag is
    calibrated top-1 >= threshold; a model without calibration is plain and never automatic."""
    heads = {"master_category": ["a", "b", "c"], "sub_category": ["s"], "article_type": ["x", "y"]}
    probs = {"master_category": np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25]], np.float32),
             "sub_category": np.ones((2, 1), np.float32),
             "article_type": np.array([[0.9, 0.1], [0.5, 0.5]], np.float32)}
    plain = ModelInfo("v", None, heads, 32).answers(probs)
    assert [a["master_category"] for a in plain] == [
        [{"label": "a", "confidence": 0.7, "auto": False}, {"label": "b", "confidence": 0.2},
         {"label": "c", "confidence": 0.1}],
        [{"label": "a", "confidence": 0.4, "auto": False}, {"label": "b", "confidence": 0.35},
         {"label": "c", "confidence": 0.25}]]
    assert [a["sub_category"] for a in plain] == [[{"label": "s", "confidence": 1.0, "auto": False}]] * 2
    calibration = {"master_category": {"temperature": 0.5, "threshold": 0.8},
                   "sub_category": {"temperature": 1.0, "threshold": 1.0},
                   "article_type": {"temperature": 1.0, "threshold": None}}
    calibrated = ModelInfo("v", None, heads, 32, calibration=calibration).answers(probs)
    assert [a["master_category"] for a in calibrated] == [  # p^2, normalised
        [{"label": "a", "confidence": 0.90741, "auto": True}, {"label": "b", "confidence": 0.07407},
         {"label": "c", "confidence": 0.01852}],
        [{"label": "a", "confidence": 0.46377, "auto": False}, {"label": "b", "confidence": 0.35507},
         {"label": "c", "confidence": 0.18116}]]
    assert [a["sub_category"][0]["auto"] for a in calibrated] == [True, True]  # 1.0 >= 1.0
    assert [a["article_type"][0] for a in calibrated] == [
        {"label": "x", "confidence": 0.9, "auto": False}, {"label": "x", "confidence": 0.5, "auto": False}]


def test_the_table_has_automatic_and_manual_tags_to_compare(pipeline):
    """The hand-written thresholds split the photos, so the gateway-vs-table comparisons below
    compare both values of the auto flag; article_type, without a threshold, is never automatic."""
    _, _, _, rows = pipeline
    for head in ("master_category", "sub_category"):
        assert {bool(r[f"{head}_auto"]) for r in rows} == {True, False}, head
    assert {bool(r["article_type_auto"]) for r in rows} == {False}


def test_upload_gives_the_predictions_tables_answer(pipeline, default_gateway):
    backend, dataset, _, rows = pipeline
    base, _ = default_gateway
    hashes = catalog_hashes(backend.engine())
    assert len(rows) == N_PRODUCTS
    for row in rows[:10]:  # one image per request
        data = (dataset / "images" / f"{row['id']}.jpg").read_bytes()
        response = httpx.post(base + "/v1/predict", files={"image": (f"{row['id']}.jpg", data, "image/jpeg")})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["model_version"], set(body)) == (
            row["model_version"], {"model_version", "serving_version", "predictions", "near_duplicates"})
        assert_same_as_table(body["predictions"], row)
        assert_same_near_duplicates(body, data, hashes)
    # several files in one request: answers in input order
    batch = rows[10:]
    files = [("image", (f"{r['id']}.jpg", (dataset / "images" / f"{r['id']}.jpg").read_bytes(), "image/jpeg"))
             for r in batch]
    response = httpx.post(base + "/v1/predict", files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["input"] for r in results] == [f"upload {r['id']}.jpg" for r in batch]
    for result, row in zip(results, batch, strict=True):
        assert set(result) == {"input", "predictions", "near_duplicates"}
        assert_same_as_table(result["predictions"], row)
        assert_same_near_duplicates(result, (dataset / "images" / f"{row['id']}.jpg").read_bytes(), hashes)


def test_near_duplicates_find_a_reupload_and_a_resized_copy_not_an_unrelated_photo(pipeline, default_gateway):
    backend, dataset, _, rows = pipeline
    base, _ = default_gateway
    hashes = catalog_hashes(backend.engine())
    assert len(hashes) == N_PRODUCTS and all(hashes.values())

    def near(data: bytes) -> list[dict]:
        response = httpx.post(base + "/v1/predict", files={"image": ("x.jpg", data, "image/jpeg")})
        assert response.status_code == 200, response.text
        return response.json()["near_duplicates"]

    def resized(data: bytes) -> bytes:
        """Resized 224 -> 160 px and re-encoded as JPEG."""
        with Image.open(io.BytesIO(data)) as img:
            assert img.size == (224, 224)
            out = io.BytesIO()
            img.resize((160, 160), Image.Resampling.BILINEAR).save(out, "JPEG", quality=80)
        return out.getvalue()

    photos = {r["id"]: (dataset / "images" / f"{r['id']}.jpg").read_bytes() for r in rows}
    # A photo whose resized copy hashes differently (most do; some resize to the same hash).
    [product_id] = [pid for pid, data in photos.items() if hash_of(resized(data)) != hashes[pid]][:1]
    photo = photos[product_id]
    # The catalog's own photo, uploaded again: its product at distance 0, by the hash ingest stored.
    again = near(photo)
    assert again[0] == {"id": product_id, "distance": 0} and again == expected_near(photo, hashes)
    # The resized copy: still found, a few bits away.
    found = near(resized(photo))
    assert found == expected_near(resized(photo), hashes)
    assert found[0]["id"] == product_id and 0 < found[0]["distance"] <= MAX_DISTANCE, found
    # A photo of a product outside this catalog, far from all of its photos: none.
    [(_, unrelated)] = [(pid, data) for pid, data in photos_outside(hashes) if not expected_near(data, hashes)][:1]
    assert near(unrelated) == []


def test_the_near_duplicate_index_refreshes_when_product_images_gains_a_photo(pipeline, tmp_path):
    """One more product and photo ingested for real (``products``, ``product_images``) into a copy
    of the catalog database the gateway reads: within the refresh interval (0.5 s here), the
    new photo is its own near-duplicate."""
    backend, dataset, _, _ = pipeline
    hashes = catalog_hashes(backend.engine())
    catalog = tmp_path / "catalog.sqlite"
    shutil.copyfile(backend.catalog_url.removeprefix("sqlite:///"), catalog)
    grown_backend = Backend("copy", f"sqlite:///{catalog}", str(tmp_path / "store"))
    grown = small_real_catalog(tmp_path / "grown", N_PRODUCTS + 1)
    [new_id] = {int(p.stem) for p in (grown / "images").glob("*.jpg")} - set(hashes)
    data = (grown / "images" / f"{new_id}.jpg").read_bytes()
    with gateway(backend, dataset, "--near-duplicates-refresh-s", "0.5",
                 env={"FASHION_CATALOG_URL": grown_backend.catalog_url}) as (base, log):
        def near() -> list[dict]:
            return httpx.post(base + "/v1/predict", files={"image": ("new.jpg", data)}).json()["near_duplicates"]

        before = near()
        assert before == expected_near(data, hashes) and new_id not in [n["id"] for n in before]
        materialise([products, product_images], grown_backend.resources(grown), dg.DagsterInstance.ephemeral())
        grown_hashes = catalog_hashes(grown_backend.engine())
        assert len(grown_hashes) == N_PRODUCTS + 1
        deadline = time.monotonic() + 30
        while (after := near()) == before:
            assert time.monotonic() < deadline, "the index was not refreshed"
            time.sleep(0.2)
        assert after == expected_near(data, grown_hashes) and after[0] == {"id": new_id, "distance": 0}
        text = log.read_text()
        assert f"near-duplicate index: {N_PRODUCTS} photos of product_images; compared every 0.5 s" in text
        assert f"near-duplicate index: reloaded, {N_PRODUCTS + 1} photos of product_images" in text


def test_concurrent_requests_are_batched_and_answer_each_their_own(pipeline, default_gateway):
    _, dataset, _, rows = pipeline
    base, log_path = default_gateway

    def one(row):
        data = (dataset / "images" / f"{row['id']}.jpg").read_bytes()
        return row, httpx.post(base + "/v1/predict", files={"image": ("x.jpg", data)}, timeout=60).json()

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, rows * 2))
    assert len(answers) == 2 * N_PRODUCTS
    for row, answer in answers:
        assert_same_as_table(answer["predictions"], row)


def test_workers_share_the_port_each_ready_before_it_answers_and_each_answers_as_the_table(pipeline):
    """``serve --workers 2``: uvicorn's supervisor and two gateway processes on one port (real
    processes). A process takes connections only once its model answers, so no request meets
    one still loading (no 503); both answer, each as the predictions table."""
    backend, dataset, _, rows = pipeline
    from concurrent.futures import ThreadPoolExecutor

    with gateway(backend, dataset, "--workers", "2") as (base, log_path):
        def one(row):
            data = (dataset / "images" / f"{row['id']}.jpg").read_bytes()
            with httpx.Client() as client:  # a fresh connection each: any process may take it
                response = client.post(base + "/v1/predict", files={"image": ("x.jpg", data)}, timeout=60)
            return row, response

        served: set[str] = set()
        ready: set[str] = set()
        for _ in range(20):  # bursts until both processes have answered
            with ThreadPoolExecutor(16) as pool:
                answers = list(pool.map(one, rows))
            for row, response in answers:
                assert response.status_code == 200, response.text
                assert_same_as_table(response.json()["predictions"], row)
            log = log_path.read_text()
            ready = set(re.findall(r"\[(\d+)\]: ready \(process \d+\)", log))
            served = set(re.findall(r"\[(\d+)\]: POST /v1/predict 200", log))
            if len(served) == 2:
                break
        assert len(ready) == 2 and served == ready, log[-3000:]
        assert str(os.getpid()) not in ready


def test_workers_waiting_for_tf_serving_stop_when_told(pipeline, tmp_path):
    """``serve --workers 2 --backend tfserving`` with nothing on TF Serving's port (there is no
    TF Serving binary here; the point is that nothing answers): both workers wait for it, taking
    no connections, and a SIGTERM to the supervisor (real processes) still stops them all at once."""
    backend, dataset, _, _ = pipeline
    port, nobody = free_port(), free_port()
    env = {**os.environ, **backend.env(dataset), "TF_CPP_MIN_LOG_LEVEL": "2"}
    log_path = tmp_path / "gateway.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "fashion_assets.cli", "serve", "--port", str(port),
                                    "--workers", "2", "--backend", "tfserving", "--tfserving", f"127.0.0.1:{nobody}"],
                                   env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(waiting := set(re.findall(r"\[(\d+)\]: tfserving backend not answering yet",
                                            log_path.read_text()))) < 2:
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        with pytest.raises(httpx.ConnectError):  # no process listens before one is ready: not ready
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        started = time.monotonic()
        process.terminate()
        assert process.wait(timeout=30) == 0, log_path.read_text()[-3000:]
        assert time.monotonic() - started < 15
        for pid in waiting:
            with pytest.raises(ProcessLookupError):
                os.kill(int(pid), 0)
    finally:
        stop_group(process, timeout_s=5)  # after a failure above: no worker left behind


def test_store_key(pipeline, default_gateway):
    _, _, _, rows = pipeline
    base, _ = default_gateway
    row = rows[3]
    one = httpx.post(base + "/v1/predict", json={"key": layout.set_image("all", row["id"])})
    assert one.status_code == 200, one.text
    assert_same_as_table(one.json()["predictions"], row)
    assert one.json()["near_duplicates"][0] == {"id": row["id"], "distance": 0}
    # A set's product at a named version (its number, digest or "latest").
    for version in ("1", "latest"):
        named = httpx.post(base + "/v1/predict", json={"key": layout.set_image("all", row["id"]), "version": version})
        assert named.status_code == 200, named.text
        assert_same_as_table(named.json()["predictions"], row)
    missing = httpx.post(base + "/v1/predict", json={"key": layout.set_image("all", row["id"]), "version": 9})
    assert missing.status_code == 404 and missing.json()["error"].startswith("image set 'all' has no version '9'")
    not_a_set = httpx.post(base + "/v1/predict", json={"key": layout.catalog_image(row["id"]), "version": 1})
    assert not_a_set.status_code == 400 and "image-sets/<name>/images/<id>.jpg" in not_a_set.json()["error"]
    keys = [layout.catalog_image(r["id"]) for r in rows[:4]]
    many = httpx.post(base + "/v1/predict", json={"keys": keys}).json()["results"]
    assert [m["input"] for m in many] == [f"key {k}" for k in keys]
    for answer, row in zip(many, rows[:4], strict=True):
        assert_same_as_table(answer["predictions"], row)


def test_url_from_a_loopback_server_allowed_for_this_test_only(pipeline, image_server):
    """Private addresses are allowed by configuration here (``--allow-networks 127.0.0.1/32``):
    the server is on loopback. A redirect to another loopback address, outside that network, and
    one to the cloud metadata address are still refused: checked after redirects."""
    backend, dataset, _, rows = pipeline
    with gateway(backend, dataset, "--allow-networks", "127.0.0.1/32", "--download-timeout", "2") as (base, log):
        row = rows[5]
        url = f"{image_server.url}/img/{row['id']}.jpg"
        answer = httpx.post(base + "/v1/predict", json={"url": url})
        assert answer.status_code == 200, answer.text
        assert_same_as_table(answer.json()["predictions"], row)
        urls = [f"{image_server.url}/img/{r['id']}.jpg" for r in rows[:3]]
        many = httpx.post(base + "/v1/predict", json={"urls": urls}).json()["results"]
        assert [m["input"] for m in many] == urls
        for m, r in zip(many, rows[:3], strict=True):
            assert_same_as_table(m["predictions"], r)
        redirected = httpx.post(base + "/v1/predict", json={"url": f"{image_server.url}/redirect?to={url}"})
        assert redirected.status_code == 200
        assert_same_as_table(redirected.json()["predictions"], row)

        cases = [
            (f"{image_server.url}/redirect?to=http://127.0.0.2:{image_server.server_address[1]}/img/x.jpg", 403,
             "host '127.0.0.2' resolves to 127.0.0.2, a loopback address: not fetched"),
            (f"{image_server.url}/redirect?to=http://169.254.169.254/latest/meta-data/", 403,
             "host '169.254.169.254' resolves to 169.254.169.254, a link-local address: not fetched"),
            (f"{image_server.url}/big", 413,
             f"{image_server.url}/big: 10,485,761 bytes is over the 10,485,760-byte limit"),
            (f"{image_server.url}/big-undeclared", 413,
             f"{image_server.url}/big-undeclared: more than the 10,485,760-byte limit"),
            (f"{image_server.url}/slow", 408, f"{image_server.url}/slow: download did not finish within 2 s"),
            (f"{image_server.url}/missing?X-Amz-Signature={SECRET}", 400, f"{image_server.url}/missing: answered HTTP 404"),
        ]
        for bad_url, status, message in cases:
            response = httpx.post(base + "/v1/predict", json={"url": bad_url}, timeout=30)
            assert (response.status_code, response.json()) == (status, {"error": message}), bad_url
        assert SECRET not in log.read_text()


# --- the gateway: bad input ----------------------------------------------------------------------


@pytest.mark.parametrize(("data", "status", "message"), [
    (b"this is not an image\n", 415, "upload bad.jpg: not an image (expected JPEG, PNG, GIF or BMP)"),
    (b"", 422, "upload bad.jpg: empty file (0 bytes)"),  # the catalog's reasons (catalog.images.check_image)
    (truncated_jpeg(10), 422, "upload bad.jpg: corrupt image: image file is truncated (0 bytes not processed)"),
    (decompression_bomb(), 413, "upload bad.jpg: 8000x8000 pixels is over the 40,000,000 limit "
                                "(possible decompression bomb)"),
    (image_bytes(1, fmt="TIFF"), 415, "upload bad.jpg: TIFF images are not accepted (expected JPEG, PNG, GIF or BMP)"),
])
def test_bad_uploads_are_refused_with_a_clear_4xx(default_gateway, data, status, message):
    base, _ = default_gateway
    response = httpx.post(base + "/v1/predict", files={"image": ("bad.jpg", data, "image/jpeg")})
    assert (response.status_code, response.json()) == (status, {"error": message})


def test_a_bad_file_among_good_ones_fails_the_whole_request(pipeline, default_gateway):
    _, dataset, _, rows = pipeline
    base, _ = default_gateway
    good = (dataset / "images" / f"{rows[0]['id']}.jpg").read_bytes()
    response = httpx.post(base + "/v1/predict", files=[("image", ("a.jpg", good)), ("image", ("b.jpg", b"nope"))])
    assert (response.status_code, response.json()) == (
        415, {"error": "upload b.jpg: not an image (expected JPEG, PNG, GIF or BMP)"})


def test_oversized_upload_is_413(default_gateway):
    base, _ = default_gateway
    response = httpx.post(base + "/v1/predict", files={"image": ("big.jpg", b"\xff" * (10 * 1024 * 1024 + 10))})
    assert (response.status_code, response.json()) == (413, {"error": "request body is over the 10,485,760-byte limit"})


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"key": "catalog/images/999999.jpg"}, 404, "no object 'catalog/images/999999.jpg' in the store"),
    ({"key": "models/fashion_classifier/LATEST"}, 400, "key 'models/fashion_classifier/LATEST' does not name a "
     "product image in the store (catalog/images/<id>.jpg, or an image set's images)"),
    ({"url": "file:///etc/passwd"}, 400, "only http and https URLs are fetched, not 'file'"),
    ({"url": "ftp://example.com/x.jpg"}, 400, "only http and https URLs are fetched, not 'ftp'"),
    ({"url": "http://user:pw@example.com/x.jpg"}, 400, "http://example.com/x.jpg: credentials in URLs are not accepted"),
    ({"url": "http://localhost:9/x.jpg"}, 403, "host 'localhost' resolves to 127.0.0.1, a loopback address: not fetched"),
    ({"url": "http://169.254.169.254/latest/meta-data/"}, 403,
     "host '169.254.169.254' resolves to 169.254.169.254, a link-local address: not fetched"),
    ({"url": "http://10.0.0.8/x.jpg"}, 403, "host '10.0.0.8' resolves to 10.0.0.8, a private address: not fetched"),
    ({"url": "http://[::1]/x.jpg"}, 403, "host '::1' resolves to ::1, a loopback address: not fetched"),
    ({"url": 5}, 400, "'url' must be a non-empty string"),
    ({"urls": []}, 400, "'urls' must be a non-empty list"),
    ({"url": "http://a/", "key": "b"}, 400,
     'send exactly one of {"url": ...}, {"urls": [...]}, {"key": ...}, {"keys": [...]}'),
])
def test_bad_json_inputs_are_refused_with_a_clear_4xx(default_gateway, body, status, message):
    base, log = default_gateway
    response = httpx.post(base + "/v1/predict", json=body)
    assert (response.status_code, response.json()) == (status, {"error": message})
    assert "pw@" not in log.read_text()


def test_other_bodies_are_refused(default_gateway):
    base, _ = default_gateway
    assert httpx.post(base + "/v1/predict", content=b"{", headers={"content-type": "application/json"}).json() == {
        "error": "the body is not valid JSON"}
    response = httpx.post(base + "/v1/predict", content=b"raw", headers={"content-type": "image/jpeg"})
    assert response.status_code == 415
    response = httpx.post(base + "/v1/predict", files={"other": ("x.jpg", b"x")})
    assert (response.status_code, response.json()) == (400, {"error": "multipart body has no field 'image'"})
