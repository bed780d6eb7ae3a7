"""fashion_classifier learns from people's labels (table ``labels``) where there are any, and says
how many of each kind it used."""

from __future__ import annotations

import json

import dagster as dg

from fashion_assets import layout
from fashion_assets.catalog.assets import product_images, products
from fashion_assets.labelling.importer import import_labels

from .catalog_files import make_dataset
from .test_labelling import QUIET, SET_IDS, annotation, meta, studio_export


def test_the_classifier_trains_on_peoples_labels_where_there_are_any(tmp_path):
    from fashion_assets.classifier.assets import fashion_classifier
    from fashion_assets.classifier.rows import catalog_rows, prefer_human_labels

    from .conftest import embedded_backend

    backend = embedded_backend(tmp_path)
    resources = backend.resources(make_dataset(tmp_path / "ds"))
    assert dg.materialize([products, product_images], resources=resources, run_config=QUIET).success
    engine = backend.engine()
    export = tmp_path / "export.json"
    export.write_text(json.dumps(studio_export([
        (1, 2, [annotation({"article_type": "Jeans", "sub_category": "Bottomwear"}, "2026-11-02T10:00:00Z")]),
        (2, 6, [annotation({"article_type": "Jeans"}, "2026-11-02T10:00:00Z")])])))
    import_labels(engine, export)

    rows = {r["id"]: r for r in prefer_human_labels(catalog_rows(engine), engine).rows}
    assert [rows[i]["article_type"] for i in SET_IDS] == [
        "Jeans", "Jeans", "Watches", "Tshirts", "Jeans", "Jeans", "Watches", "Tshirts", "Jeans"]
    assert rows[2]["sub_category"] == "Bottomwear" and rows[6]["sub_category"] == "Shoes"

    config = {"epochs": 1, "image_size": 32, "batch_size": 4, "min_examples": 1, "validation_fraction": 0.3}
    trained = dg.materialize([fashion_classifier], resources=resources,
                             run_config={**QUIET, "ops": {"fashion_classifier": {"config": config}}})
    metadata = meta(trained, "fashion_classifier")
    assert {k: v for k, v in metadata.items() if k.startswith("labels_from_")} == {
        "labels_from_people_master_category": 0, "labels_from_catalog_master_category": 9,
        "labels_from_people_sub_category": 1, "labels_from_catalog_sub_category": 8,
        "labels_from_people_article_type": 2, "labels_from_catalog_article_type": 7}
    document = json.loads(backend.store().get_bytes(layout.model_labels(metadata["version"])))
    assert document["label_sources"]["article_type"] == {"human": 2, "catalog": 7}
