"""An export with a labelling queue (``--queue doubt|random --limit N``) of a materialised set:
only the queue's images, in its order, each carrying its rank, margin and reason, in every
format, on both backends; and the command line as a user runs it. The queue's rules alone:
test_queue.py."""

from __future__ import annotations

import csv
import datetime as dt
import json

import dagster as dg
import sqlalchemy as sa

from fashion_assets.catalog.assets import product_images, products
from fashion_assets.catalog.tables import product_images as product_images_table
from fashion_assets.classifier.labels import HEADS
from fashion_assets.image_sets.assets import image_queries, image_set
from fashion_assets.image_sets.registry import QueryRegistry
from fashion_assets.labelling.export import export_set
from fashion_assets.predictions.table import predictions as predictions_table

from .catalog_files import make_dataset
from .test_labelling import QUIET, cli, image_set_all  # noqa: F401 - image_set_all is a fixture
from .test_labelling import catalog_labels as catalog_of

MODEL = "v-queue"
# id -> the article type's top-2 and whether it is automatic; master and sub category are the
# catalog's, automatic. 9 has no prediction; 1 and 8 are automatic on every head.
ARTICLE = {1: ([["Jeans", 0.9], ["Tshirts", 0.05]], True), 2: ([["Heels", 0.6], ["Tshirts", 0.3]], False),
           3: ([["Tshirts", 0.5], ["Watches", 0.4]], False), 4: ([["Tshirts", 0.4], ["Jeans", 0.35]], False),
           5: ([["Jeans", 0.45], ["Tshirts", 0.44]], False), 6: ([["Heels", 0.41], ["Jeans", 0.4]], False),
           7: ([["Heels", 0.7], ["Watches", 0.2]], False), 8: ([["Tshirts", 0.95], ["Jeans", 0.02]], True)}
DOUBT = [3, 7, 5, 6, 4]  # disagreements (3, 7) first, then least margin; 2 is a near-duplicate of 6
REASONS = {
    3: "disagrees with catalog: article_type Tshirts (catalog Watches); "
       "margin 0.100 on article_type (Tshirts 0.500 vs Watches 0.400)",
    7: "disagrees with catalog: article_type Heels (catalog Watches); "
       "margin 0.500 on article_type (Heels 0.700 vs Watches 0.200)",
    5: "margin 0.010 on article_type (Jeans 0.450 vs Tshirts 0.440)",
    6: "margin 0.010 on article_type (Heels 0.410 vs Jeans 0.400)",
}
MARGINS = {3: 0.1, 7: 0.5, 5: 0.01, 6: 0.01}


def prepare(engine, name: str) -> None:
    """The set's predictions (ARTICLE), and near-duplicate groups: only 2 and 6 are one group."""
    rows = []
    for product_id, (top, auto) in ARTICLE.items():
        tops = {h: [[catalog_of(product_id)[h], 0.99], ["other", 0.01]] for h in HEADS[:2]} | {"article_type": top}
        rows.append({"image_set": name, "source": "original", "id": product_id, "variant": 0,
                     "model_version": MODEL, **{f"{h}_label": tops[h][0][0] for h in HEADS},
                     **{f"{h}_confidence": tops[h][0][1] for h in HEADS},
                     **{f"{h}_top5": json.dumps(tops[h]) for h in HEADS},
                     "master_category_auto": True, "sub_category_auto": True, "article_type_auto": auto,
                     "created_at": dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)})
    groups = product_images_table.c.near_duplicate_group
    with engine.begin() as conn:
        conn.execute(predictions_table.insert(), rows)
        conn.execute(product_images_table.update().values(near_duplicate_group=None))
        conn.execute(product_images_table.update().where(product_images_table.c.id.in_([2, 6]))
                     .values(near_duplicate_group=2))
        assert conn.execute(sa.select(sa.func.count()).where(groups.is_not(None))).scalar() == 2


def test_a_queued_export_in_every_format(image_set_all, tmp_path):  # noqa: F811 - the fixture
    backend, _, _ = image_set_all
    store, engine = backend.store(), backend.engine()
    prepare(engine, "all")
    out = tmp_path / "doubt.json"
    result = export_set(store, engine, "all", "label-studio", out, document_root=tmp_path, queue="doubt", limit=4)
    assert (result.tasks, result.with_predictions) == (4, 4)
    assert (result.queue.considered, result.queue.automatic, result.queue.unpredicted,
            result.queue.duplicates_left_out, result.queue.disagreeing) == (6, 2, 1, 1, 2)
    tasks = json.loads(out.read_text())
    assert [t["data"]["product_id"] for t in tasks] == DOUBT[:4]
    assert [(t["data"]["rank"], t["data"]["margin"], t["data"]["queue_reason"]) for t in tasks] == [
        (n, MARGINS[i], REASONS[i]) for n, i in enumerate(DOUBT[:4], 1)]
    assert [t["predictions"][0]["score"] for t in tasks] == [0.5, 0.7, 0.45, 0.41]

    export_set(store, engine, "all", "coco", tmp_path / "doubt.coco.json", queue="doubt")
    coco = json.loads((tmp_path / "doubt.coco.json").read_text())
    assert [(i["id"], i["rank"]) for i in coco["images"]] == [(i, n) for n, i in enumerate(DOUBT, 1)]
    assert coco["images"][0]["queue_reason"] == REASONS[3] and coco["images"][4]["margin"] == 0.05
    assert sorted({a["image_id"] for a in coco["annotations"]}) == sorted(DOUBT)

    export_set(store, engine, "all", "csv", tmp_path / "random.csv", queue="random", limit=3, seed=0)
    rows = list(csv.DictReader((tmp_path / "random.csv").open()))
    # Random(0) orders the ids 8, 6, 2, 4, ...; 2 is 6's near-duplicate.
    assert [(r["id"], r["rank"], r["margin"]) for r in rows] == [("8", "1", ""), ("6", "2", "0.01"), ("4", "3", "0.05")]
    assert rows[0]["queue_reason"] == "random sample (seed 0); every head automatic"
    assert list(rows[0])[-3:] == ["rank", "margin", "queue_reason"]

    export_set(store, engine, "all", "csv", tmp_path / "all.csv")  # without a queue: every image, no queue columns
    plain = list(csv.DictReader((tmp_path / "all.csv").open()))
    assert [r["id"] for r in plain] == [str(i) for i in range(1, 10)] and "rank" not in plain[0]


def test_the_queue_on_the_command_line(tmp_path):
    """`fashion-assets export all --queue doubt --limit 3` as a user runs it (embedded backend)."""
    from .conftest import embedded_backend

    backend = embedded_backend(tmp_path)
    env = {**backend.env(make_dataset(tmp_path / "ds")), "DAGSTER_HOME": str(tmp_path / "home")}
    (tmp_path / "home").mkdir()
    resources = backend.resources(env["FASHION_DATASET_DIR"])
    assert dg.materialize([products, product_images], resources=resources, run_config=QUIET).success
    registry = QueryRegistry(backend.store())
    registry.put("all", "SELECT id FROM products")
    registry.put("unpredicted", "SELECT id FROM products WHERE id < 4")
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(image_queries.name, ["all", "unpredicted"])
        for name in ("all", "unpredicted"):
            assert dg.materialize([image_set], partition_key=name, resources=resources, instance=instance,
                                  run_config=QUIET).success
    prepare(backend.engine(), "all")

    out = tmp_path / "queue.json"
    done = cli(["export", "all", "--format", "label-studio", "--out", str(out), "--queue", "doubt", "--limit", "3"],
               env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:2] == [
        f"3 images of 'all' (version 1) written to {out} (label-studio, 3 with pre-annotations of model {MODEL}).",
        "Queue doubt: 3 of 6 images not tagged automatically, most doubtful first (2 disagree with the catalog); "
        "left out: 2 tagged automatically, 1 without a prediction, 1 near-duplicate of an image ahead of it."]
    assert [(t["data"]["product_id"], t["data"]["rank"], t["data"]["queue_reason"])
            for t in json.loads(out.read_text())] == [(i, n, REASONS[i]) for n, i in enumerate(DOUBT[:3], 1)]

    drawn = cli(["export", "all", "--format", "csv", "--out", str(tmp_path / "r.csv"), "--queue", "random",
                 "--limit", "3", "--seed", "0"], env)
    assert drawn.stdout.splitlines()[1] == ("Queue random (seed 0): 3 of 9 images; left out: 1 near-duplicate of "
                                            "an image ahead of it."), drawn.stderr

    for args, message in [
        (["unpredicted", "--queue", "doubt"],
         "image set 'unpredicted' has no predictions of its images (table predictions): the doubt queue ranks by "
         "the model's confidence; materialise predictions[unpredicted] first"),
        (["all", "--limit", "3"], "a limit (3) needs a queue: --queue doubt or --queue random"),
        (["all", "--queue", "doubt", "--limit", "0"], "the limit must be a positive number of images, not 0"),
    ]:
        bad = cli(["export", *args, "--format", "label-studio", "--out", str(tmp_path / "bad.json")], env)
        assert (bad.returncode, bad.stderr) == (2, f"fashion-assets: {message}\n")
    assert not (tmp_path / "bad.json").exists() and not (tmp_path / "bad.xml").exists()
