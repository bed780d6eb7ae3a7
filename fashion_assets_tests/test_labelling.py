"""Labelling: an image set exported for Label Studio (pre-annotations from table ``predictions``),
COCO and CSV; Label Studio's JSON export imported into table ``labels``. On both backends, with
the real database and store; the command line as a real process. Beside it:
test_labelling_studio.py (the round trip through a running Label Studio),
test_labelling_pictures.py, test_labelling_training.py (the classifier learns from people's labels).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import subprocess
import sys
import urllib.request
import xml.etree.ElementTree as ET
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
from fashion_assets.labelling.importer import import_labels
from fashion_assets.labelling.table import human_labels, labels
from fashion_assets.predictions.table import predictions as predictions_table

from .catalog_files import make_dataset

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
BIN = Path(sys.executable).parent
SET_IDS = list(range(1, 10))  # make_dataset: products 1..12; 10, 11 and 12 have broken images
# make_dataset's labels: id % 4 -> (master, sub, article type)
CATALOG = {0: ("Apparel", "Topwear", "Tshirts"), 1: ("Apparel", "Bottomwear", "Jeans"),
           2: ("Footwear", "Shoes", "Heels"), 3: ("Accessories", "Watches", "Watches")}
MODEL = "v-test"


def catalog_labels(product_id: int) -> dict[str, str]:
    return dict(zip(HEADS, CATALOG[product_id % 4], strict=True))


def predicted(product_id: int) -> dict[str, tuple[str, float]]:
    """What the test's 'model' said: every image a T-shirt, surer for higher ids."""
    return {"master_category": ("Apparel", 0.5), "sub_category": ("Topwear", 0.25),
            "article_type": ("Tshirts", product_id / 10)}


def write_predictions(engine, name: str, ids: list[int]) -> None:
    now = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    rows = [{"image_set": name, "source": "original", "id": i, "variant": 0, "model_version": MODEL,
             **{f"{h}_label": label for h, (label, _) in predicted(i).items()},
             **{f"{h}_confidence": conf for h, (_, conf) in predicted(i).items()},
             **{f"{h}_top5": json.dumps([[label, conf]]) for h, (label, conf) in predicted(i).items()},
             "created_at": now} for i in ids]
    with engine.begin() as conn:
        conn.execute(predictions_table.insert(), rows)


def meta(result, key):
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(key)]
    return {k: v.value for k, v in event.materialization.metadata.items()}


@pytest.fixture
def image_set_all(backend, tmp_path):
    """The catalog and set 'all' (9 images) materialised; set 'later' registered, never materialised."""
    dataset = make_dataset(tmp_path / "ds")
    resources = backend.resources(dataset)
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([products, product_images], resources=resources, instance=instance, run_config=QUIET).success
    registry = QueryRegistry(backend.store())
    registry.put("all", "SELECT id FROM products")
    registry.put("later", "SELECT id FROM products WHERE id < 3")
    instance.add_dynamic_partitions(image_queries.name, ["all", "later"])
    result = dg.materialize([image_set], partition_key="all", resources=resources, instance=instance, run_config=QUIET)
    assert result.success
    return backend, dataset, meta(result, "image_set")



def test_label_studio_export(image_set_all, tmp_path):
    backend, _, _ = image_set_all
    store, engine = backend.store(), backend.engine()
    write_predictions(engine, "all", SET_IDS[:-1])  # 9 has no prediction
    out = tmp_path / "out" / "tasks.json"
    out.parent.mkdir()
    result = export_set(store, engine, "all", "label-studio", out, expires_s=600, document_root=tmp_path)
    assert (result.tasks, result.with_predictions, result.model_version) == (9, 8, MODEL)
    tasks = json.loads(out.read_text())
    assert [t["data"]["product_id"] for t in tasks] == SET_IDS
    for task in tasks:
        product_id = task["data"]["product_id"]
        assert {h: task["data"][h] for h in HEADS} == catalog_labels(product_id)
        key = layout.set_image("all", product_id)
        url = task["data"]["image"]
        if backend.name == "embedded":
            assert url == f"/data/local-files/?d=store/{key}"
        else:  # presigned: anyone holding the URL reads the image, no credentials
            assert url.startswith(f"{backend.endpoint_url}/{store.bucket}/fashion/{key}?") and "Expires=" in url
            with urllib.request.urlopen(url, timeout=10) as response:
                assert response.read() == store.get_bytes(key)
        if product_id == 9:
            assert "predictions" not in task
            continue
        [prediction] = task["predictions"]
        assert prediction["model_version"] == MODEL and prediction["score"] == product_id / 10
        assert [(r["from_name"], r["to_name"], r["type"], r["value"]["choices"], r["score"])
                for r in prediction["result"]] == [
            (h, "image", "choices", [label], conf) for h, (label, conf) in predicted(product_id).items()]

    config = ET.parse(out.with_suffix(".xml")).getroot()
    assert config.find("Image").attrib == {"name": "image", "value": "$image"}
    choices = {c.get("name"): [v.get("value") for v in c] for c in config.iter("Choices")}
    assert choices == {"master_category": ["Accessories", "Apparel", "Footwear"],
                       "sub_category": ["Bottomwear", "Shoes", "Topwear", "Watches"],
                       "article_type": ["Heels", "Jeans", "Tshirts", "Watches"]}
    assert sorted(os.listdir(out.parent)) == ["tasks.json", "tasks.xml"]  # no temporary files left


def test_coco_and_csv_exports(image_set_all, tmp_path):
    backend, _, _ = image_set_all
    store, engine = backend.store(), backend.engine()
    write_predictions(engine, "all", SET_IDS)
    export_set(store, engine, "all", "coco", tmp_path / "set.coco.json")
    coco = json.loads((tmp_path / "set.coco.json").read_text())
    assert [(i["id"], i["file_name"], i["width"], i["height"]) for i in coco["images"]] == [
        (i, store.uri(layout.set_image("all", i)), 48, 64) for i in SET_IDS]
    categories = {c["id"]: (c["supercategory"], c["name"]) for c in coco["categories"]}
    assert sorted(categories.values()) == sorted(
        [("master_category", c) for c in ("Accessories", "Apparel", "Footwear")]
        + [("sub_category", c) for c in ("Bottomwear", "Shoes", "Topwear", "Watches")]
        + [("article_type", c) for c in ("Heels", "Jeans", "Tshirts", "Watches")])
    annotations = [(a["image_id"], *categories[a["category_id"]]) for a in coco["annotations"]]
    assert annotations == [(i, h, catalog_labels(i)[h]) for i in SET_IDS for h in HEADS]
    assert [a["id"] for a in coco["annotations"]] == list(range(1, 28))

    export_set(store, engine, "all", "csv", tmp_path / "set.csv")
    rows = list(csv.DictReader((tmp_path / "set.csv").open()))
    assert rows[0] == {"id": "1", "image": store.uri(layout.set_image("all", 1)), **catalog_labels(1),
                       "predicted_master_category": "Apparel", "predicted_sub_category": "Topwear",
                       "predicted_article_type": "Tshirts", "predicted_master_category_confidence": "0.500000",
                       "predicted_sub_category_confidence": "0.250000",
                       "predicted_article_type_confidence": "0.100000"}
    assert [r["id"] for r in rows] == [str(i) for i in SET_IDS]


def test_bad_input_names_it_and_writes_nothing(image_set_all, tmp_path):
    backend, _, _ = image_set_all
    store, engine = backend.store(), backend.engine()
    out = tmp_path / "out"
    out.mkdir()
    cases = [
        (("nope", "label-studio", out / "a.json"), "unknown image set 'nope': no query of that name (known: all, later)"),
        (("later", "label-studio", out / "a.json"), "image set 'later' has never been materialised"),
        (("all", "label-studio", tmp_path / "missing" / "a.json"),
         f"cannot write '{tmp_path}/missing/a.json': folder '{tmp_path}/missing' does not exist"),
        (("all", "csv", out), f"cannot write '{out}': it is a folder"),
        (("all", "yaml", out / "a.json"), "unknown format 'yaml': one of label-studio, coco, csv"),
    ]
    for (name, fmt, path), message in cases:
        with pytest.raises(ValueError) as error:
            export_set(store, engine, name, fmt, path)
        assert str(error.value).startswith(message), str(error.value)
    # The tasks file can be written but its configuration cannot: neither is.
    (out / "b.xml").mkdir()
    with pytest.raises(ValueError, match="b.xml"):
        export_set(store, engine, "all", "label-studio", out / "b.json")
    assert sorted(os.listdir(out)) == ["b.xml"] and os.listdir(out / "b.xml") == []


def annotation(choices: dict[str, str], at: str, who: int = 1, cancelled: bool = False) -> dict:
    """One annotation as Label Studio's JSON export has it (completed_by is the user's id)."""
    return {"id": abs(hash(at)) % 10_000, "completed_by": who, "was_cancelled": cancelled,
            "created_at": at, "updated_at": at, "lead_time": 3.2,
            "result": [{"from_name": h, "to_name": "image", "type": "choices", "value": {"choices": [c]}}
                       for h, c in choices.items()]}


def studio_export(tasks: list[tuple[int, int, list[dict]]]) -> list[dict]:
    """Label Studio's JSON export: tasks with data, annotations and (ignored) predictions."""
    return [{"id": task_id, "data": {"image": f"/data/local-files/?d={pid}.jpg", "product_id": pid},
             "annotations": annotations, "predictions": [{"model_version": MODEL, "result": [
                 {"from_name": "article_type", "to_name": "image", "type": "choices",
                  "value": {"choices": ["Watches"]}}]}]}
            for task_id, pid, annotations in tasks]


def test_import_keeps_the_newest_answer_and_lists_unknowns(backend, tmp_path):
    resources = backend.resources(make_dataset(tmp_path / "ds"))
    assert dg.materialize([products], resources=resources, run_config=QUIET).success
    engine = backend.engine()
    export = tmp_path / "export.json"
    export.write_text(json.dumps(studio_export([
        (101, 1, [annotation({"article_type": "Tshirts", "sub_category": "Topwear"}, "2026-11-02T10:00:00Z", who=2),
                  annotation({"article_type": "Heels"}, "2026-11-01T10:00:00Z"),  # older: loses
                  annotation({"article_type": "Watches"}, "2026-11-03T10:00:00Z", cancelled=True)]),
        (102, 2, [annotation({"master_category": "Footwear", "article_type": "Sandals"}, "2026-11-02T11:00:00.5Z")]),
        (103, 777, [annotation({"article_type": "Jeans"}, "2026-11-02T12:00:00Z")]),
        (104, 3, []),
    ])))
    result = import_labels(engine, export)
    assert (result.tasks, result.annotations, result.cancelled, result.answers) == (4, 4, 1, 6)
    assert (result.written, result.kept_newer) == (3, 1)
    assert result.unknown_ids == [777] and result.unknown_classes == {"article_type: Sandals": 1}
    assert result.per_head == {"master_category": 1, "sub_category": 1, "article_type": 1}
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(sa.select(labels.c.id, labels.c.head, labels.c.label,
                                                         labels.c.annotator, labels.c.task_id)
                                               .order_by(labels.c.id, labels.c.head))]
    assert rows == [(1, "article_type", "Tshirts", "2", 101), (1, "sub_category", "Topwear", "2", 101),
                    (2, "master_category", "Footwear", "1", 102)]

    # An older export imported later changes nothing; a newer one wins.
    older = tmp_path / "older.json"
    older.write_text(json.dumps(studio_export([(101, 1, [annotation({"article_type": "Jeans"},
                                                                     "2026-10-01T00:00:00Z")])])))
    assert (import_labels(engine, older).written, human_labels(engine)[(1, "article_type")]) == (0, "Tshirts")
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps(studio_export([(201, 1, [annotation({"article_type": "Jeans"},
                                                                    "2026-12-01T00:00:00Z", who=5)])])))
    assert (import_labels(engine, newer).written, human_labels(engine)[(1, "article_type")]) == (1, "Jeans")
    assert len(human_labels(engine)) == 3

    for content, message in [("{not json", "not JSON"), ('{"a": 1}', "not a Label Studio JSON export"),
                             ('[{"id": 5, "data": {}}]', "task 5: no data.product_id")]:
        bad = tmp_path / "bad.json"
        bad.write_text(content)
        with pytest.raises(ValueError, match=message):
            import_labels(engine, bad)
    with pytest.raises(ValueError, match="no such file"):
        import_labels(engine, tmp_path / "absent.json")
    assert len(human_labels(engine)) == 3  # nothing of the bad files went in




def cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "fashion-assets", *args], env={**os.environ, **env}, capture_output=True, text=True)


def test_the_command_line(tmp_path):
    """`fashion-assets export` and `labels import` as a user runs them (embedded backend)."""
    from .conftest import embedded_backend

    backend = embedded_backend(tmp_path)
    env = {**backend.env(make_dataset(tmp_path / "ds")), "DAGSTER_HOME": str(tmp_path / "home")}
    (tmp_path / "home").mkdir()
    resources = backend.resources(env["FASHION_DATASET_DIR"])
    assert dg.materialize([products, product_images], resources=resources, run_config=QUIET).success
    QueryRegistry(backend.store()).put("two", "SELECT id FROM products WHERE id IN (2, 6)")
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(image_queries.name, ["two"])
        assert dg.materialize([image_set], partition_key="two", resources=resources, instance=instance,
                              run_config=QUIET).success

    done = cli(["export", "two", "--format", "label-studio", "--out", str(tmp_path / "ls.json")], env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == (f"2 images of 'two' (version 1) written to {tmp_path / 'ls.json'} (label-studio, "
                                           "no predictions for this set (no pre-annotations)).")
    assert [t["data"]["product_id"] for t in json.loads((tmp_path / "ls.json").read_text())] == [2, 6]

    bad = cli(["export", "nope", "--format", "csv", "--out", str(tmp_path / "x.csv")], env)
    assert (bad.returncode, bad.stderr) == (2, "fashion-assets: unknown image set 'nope': no query of that name "
                                               "(known: two)\n")
    assert not (tmp_path / "x.csv").exists()

    export = tmp_path / "export.json"
    export.write_text(json.dumps(studio_export([(1, 6, [annotation({"article_type": "Jeans"}, "2026-11-02T10:00:00Z")]),
                                                (2, 999, [annotation({"article_type": "Jeans"}, "2026-11-02T10:00:00Z")])])))
    imported = cli(["labels", "import", str(export)], env)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.splitlines() == [
        f"{export}: 2 tasks, 2 annotations (0 cancelled ignored), 2 answers; 1 labels written (master_category 0, "
        "sub_category 0, article_type 1), 0 superseded by newer answers; 1 unknown product ids skipped (999)",
        "Recorded as a materialisation of asset `labels`"]
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("labels"))
        recorded = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    assert (recorded["labels_article_type"], recorded["unknown_ids"], recorded["imported_written"]) == (1, 1, 1)
