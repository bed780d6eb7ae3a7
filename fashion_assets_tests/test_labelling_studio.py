"""The labelling round trip through a real Label Studio (the ``label-studio`` package from PyPI,
in its own virtualenv ``.venv-label-studio`` because its pins clash with ours; ``make test``
installs it from ``constraints-label-studio.txt``), started on loopback for this test:

our configuration creates a project, our tasks import with every pre-annotation, Label Studio
serves the set's images from the store (local-files form), a person's answers are submitted
through its API, its JSON export comes back, and ``fashion-assets labels import`` reads it into
table ``labels``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from fashion_assets import layout
from fashion_assets.catalog.assets import product_images, products
from fashion_assets.classifier.labels import HEADS
from fashion_assets.image_sets.assets import image_queries, image_set
from fashion_assets.image_sets.registry import QueryRegistry
from fashion_assets.labelling.export import export_set
from fashion_assets.labelling.table import human_labels, labels

from .catalog_files import make_dataset
from .conftest import embedded_backend
from .servers import free_port
from .test_labelling import MODEL, QUIET, SET_IDS, catalog_labels, cli, predicted, write_predictions

ROOT = Path(__file__).resolve().parents[1]
LABEL_STUDIO = ROOT / ".venv-label-studio" / "bin" / "label-studio"
TOKEN = "fa" + "0123456789abcdef" * 2 + "0123456"  # a legacy API token, 40 characters
START_TIMEOUT_S = 240  # database migrations on a busy 2-core machine


class LabelStudio:
    def __init__(self, url: str, log: Path):
        self.url, self.log = url, log

    def call(self, method: str, path: str, body=None, raw: bool = False):
        request = urllib.request.Request(
            self.url + path, method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                data = response.read()
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"Label Studio {method} {path}: HTTP {exc.code}: {exc.read()[:1000]!r}") from None
        return data if raw else json.loads(data)


@pytest.fixture
def label_studio(tmp_path) -> LabelStudio:
    """Label Studio on loopback, serving local files under ``tmp_path``; stopped (its whole
    process group) at the end."""
    assert LABEL_STUDIO.is_file(), f"{LABEL_STUDIO} is missing: `make test` installs Label Studio in its own virtualenv"
    port = free_port()
    log = tmp_path / "label-studio.log"
    env = {**os.environ, "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
           "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(tmp_path), "LATEST_VERSION_CHECK": "false",
           "COLLECT_ANALYTICS": "false", "LABEL_STUDIO_BASE_DATA_DIR": str(tmp_path / "ls-data")}
    env.pop("VIRTUAL_ENV", None)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [LABEL_STUDIO, "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
             "--data-dir", str(tmp_path / "ls-data"), "--username", "labeller@example.com", "--password",
             "not-a-secret-1", "--user-token", TOKEN, "--enable-legacy-api-token"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=5)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("Label Studio did not start:\n" + log.read_text()[-3000:]) from None
                time.sleep(1)
        yield LabelStudio(url, log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_round_trip_through_label_studio(tmp_path, label_studio):
    backend = embedded_backend(tmp_path)
    dataset = make_dataset(tmp_path / "ds")
    resources = backend.resources(dataset)
    store, engine = backend.store(), backend.engine()
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([products, product_images], resources=resources, instance=instance, run_config=QUIET).success
    QueryRegistry(store).put("all", "SELECT id FROM products")
    instance.add_dynamic_partitions(image_queries.name, ["all"])
    assert dg.materialize([image_set], partition_key="all", resources=resources, instance=instance,
                          run_config=QUIET).success
    write_predictions(engine, "all", SET_IDS)
    tasks_file = tmp_path / "tasks.json"
    export_set(store, engine, "all", "label-studio", tasks_file, document_root=tmp_path)
    ls = label_studio

    # A project with our configuration; Label Studio validates the XML.
    project = ls.call("POST", "/api/projects", {"title": "fashion all", "label_config": tasks_file.with_suffix(
        ".xml").read_text()})
    pid = project["id"]
    assert {name: (c["type"], c["to_name"], c["labels"]) for name, c in project["parsed_label_config"].items()} == {
        "master_category": ("Choices", ["image"], ["Accessories", "Apparel", "Footwear"]),
        "sub_category": ("Choices", ["image"], ["Bottomwear", "Shoes", "Topwear", "Watches"]),
        "article_type": ("Choices", ["image"], ["Heels", "Jeans", "Tshirts", "Watches"])}
    # Label Studio serves local files only under a local storage of the project.
    images_folder = Path(store.uri(layout.set_images("all")))
    ls.call("POST", "/api/storages/localfiles", {"project": pid, "path": str(images_folder), "title": "set all",
                                                 "use_blob_urls": False})

    imported = ls.call("POST", f"/api/projects/{pid}/import", json.loads(tasks_file.read_text()))
    assert (imported["task_count"], imported["prediction_count"], imported["annotation_count"]) == (9, 9, 0)
    tasks = ls.call("GET", f"/api/tasks?project={pid}&page_size=100")["tasks"]
    by_product = {t["data"]["product_id"]: t for t in tasks}
    assert sorted(by_product) == SET_IDS
    for product_id, task in by_product.items():
        assert {h: task["data"][h] for h in HEADS} == catalog_labels(product_id)
        served = ls.call("GET", task["data"]["image"], raw=True)  # the image, through Label Studio
        assert served == store.get_bytes(layout.set_image("all", product_id))
    stored_predictions = ls.call("GET", f"/api/predictions?project={pid}")
    assert len(stored_predictions) == 9
    for prediction in stored_predictions:
        product_id = next(p for p, t in by_product.items() if t["id"] == prediction["task"])
        assert prediction["model_version"] == MODEL and prediction["score"] == product_id / 10
        assert {r["from_name"]: (r["value"]["choices"][0], r["score"]) for r in prediction["result"]} \
            == predicted(product_id)

    # A person answers two tasks (one twice: the second answer wins) and skips a third.
    def answer(product_id: int, choices: dict[str, str], cancelled: bool = False) -> None:
        ls.call("POST", f"/api/tasks/{by_product[product_id]['id']}/annotations", {
            "result": [{"from_name": h, "to_name": "image", "type": "choices", "value": {"choices": [c]}}
                       for h, c in choices.items()], "was_cancelled": cancelled})

    answer(2, {"article_type": "Jeans", "master_category": "Apparel"})
    time.sleep(0.01)
    answer(2, {"article_type": "Tshirts"})
    answer(5, {"sub_category": "Topwear"})
    answer(7, {"article_type": "Heels"}, cancelled=True)
    # What a user downloads: JSON, the tasks that have annotations (the skipped one included).
    exported = ls.call("GET", f"/api/projects/{pid}/export?exportType=JSON", raw=True)
    export_file = tmp_path / "label-studio-export.json"
    export_file.write_bytes(exported)
    me = ls.call("GET", "/api/current-user/whoami")

    env = {**backend.env(dataset), "DAGSTER_HOME": str(tmp_path / "home")}
    (tmp_path / "home").mkdir()
    done = cli(["labels", "import", str(export_file)], env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == (
        f"{export_file}: 3 tasks, 3 annotations (1 cancelled ignored), 4 answers; 3 labels written (master_category 1, "
        "sub_category 1, article_type 1), 1 superseded by newer answers")
    assert human_labels(engine) == {(2, "article_type"): "Tshirts", (2, "master_category"): "Apparel",
                                    (5, "sub_category"): "Topwear"}
    with engine.connect() as conn:
        rows = conn.execute(sa.select(labels.c.annotator, labels.c.task_id).order_by(labels.c.id, labels.c.head)).all()
    assert [tuple(r) for r in rows] == [(str(me["id"]), by_product[2]["id"])] * 2 + [(str(me["id"]), by_product[5]["id"])]
