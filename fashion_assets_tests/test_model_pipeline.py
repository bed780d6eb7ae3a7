"""augmented_set, fashion_classifier and predictions with real resources; the model round trip."""

import io
import json

import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from fashion_assets import layout
from fashion_assets.augmented_sets.assets import augmented_count_matches, augmented_set
from fashion_assets.catalog.assets import product_images, products
from fashion_assets.classifier import artifacts
from fashion_assets.classifier.assets import fashion_classifier
from fashion_assets.classifier.labels import HEADS, build_vocabularies, encode_targets, vocabularies_from_classes
from fashion_assets.classifier.train import TrainConfig, train_classifier
from fashion_assets.core.storage import LocalObjectStore
from fashion_assets.image_sets.assets import image_queries, image_set
from fashion_assets.image_sets.registry import QueryRegistry
from fashion_assets.predictions.assets import confidences_are_probabilities, one_row_per_input, predictions

from .catalog_files import make_dataset

TINY_MODEL = {"epochs": 1, "image_size": 32, "batch_size": 4, "min_examples": 1, "validation_fraction": 0.3}
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def tiny_training_set(n=48, size=32):
    """Three classes per head that differ by colour: learnable in one epoch, and fast."""
    rng = np.random.default_rng(0)
    labels = [["Apparel", "Topwear", "Tshirts"], ["Footwear", "Shoes", "Heels"], ["Accessories", "Watches", "Watches"]]
    x = np.full((n, size, size, 3), 255, dtype=np.uint8)
    rows = []
    for i in range(n):
        k = i % 3
        x[i, 8:24, 8:24, k] = rng.integers(0, 60)
        rows.append(dict(zip(HEADS, labels[k], strict=True)))
    return x, rows


def test_training_and_an_imported_model_encode_labels_the_same_way():
    """``encode_targets`` is the one path from catalog labels to class indices (fashion_classifier
    uses it for training and for evaluating an imported model); it agrees with ``Vocabulary.encode``."""
    rows = [dict(zip(HEADS, labels, strict=True)) for labels in [
        ("Apparel", "Topwear", "Tshirts"), ("Apparel", "Topwear", "Tshirts"), ("Apparel", "Bottomwear", "Jeans"),
        ("Footwear", "Shoes", "Heels"), (None, "", "Tshirts")]]
    vocab = build_vocabularies(rows, min_examples=2)
    assert vocab["master_category"].classes == ("Apparel", "other")
    assert vocab["article_type"].classes == ("Tshirts", "other")
    targets = encode_targets(rows, vocab)
    assert {h: targets[h].tolist() for h in HEADS} == {
        "master_category": [0, 0, 0, 1, 1], "sub_category": [0, 0, 1, 1, 1], "article_type": [0, 0, 1, 1, 0]}
    assert all(targets[h].tolist() == [vocab[h].encode(r[h]) for r in rows] for h in HEADS)

    imported = vocabularies_from_classes({"master_category": ["Apparel", "Footwear"],
                                          "sub_category": ["Topwear"], "article_type": ["Heels", "Tshirts"]})
    assert {h: encode_targets(rows, imported)[h].tolist() for h in HEADS} == {
        "master_category": [0, 0, 0, 1, -1], "sub_category": [0, 0, -1, -1, -1], "article_type": [1, 1, -1, 0, 1]}


def test_model_trains_saves_and_reloads_identically(tmp_path):
    x, rows = tiny_training_set()
    vocab = build_vocabularies(rows, min_examples=1)
    targets = {h: np.array([vocab[h].encode(r[h]) for r in rows]) for h in HEADS}
    config = TrainConfig(image_size=32, epochs=1, batch_size=8, widths=(8, 16, 16, 32), blocks=(1, 1, 1, 1))
    result = train_classifier(x, targets, list(range(len(rows))), vocab, config, log=lambda m: None)
    assert result.epochs_run == 1 and len(result.val_index) == 7  # 15% of 48, by product id

    store = LocalObjectStore(tmp_path / "store")
    classes = {h: list(vocab[h].classes) for h in HEADS}
    labels = artifacts.labels_document_from_classes(classes, 32)
    uris = artifacts.save_model(store, result.model, labels, "v1")
    assert store.get_bytes(layout.MODEL_LATEST) == b"v1"
    assert json.loads(store.get_bytes("models/fashion_classifier/v1/labels.json"))["heads"]["article_type"] == [
        "Heels", "Tshirts", "Watches"]

    from_keras = artifacts.load_local(uris["keras"], labels)
    from_saved = artifacts.load_local(uris["saved_model"], labels)
    from_latest = artifacts.load_latest(store, tmp_path / "work")
    a, b, c = from_keras.predict(x[:10]), from_saved.predict(x[:10]), from_latest.predict(x[:10])
    for head in HEADS:
        assert a[head].shape == (10, 3)
        np.testing.assert_allclose(a[head], b[head], atol=1e-5)
        np.testing.assert_allclose(a[head], c[head], atol=1e-6)
        np.testing.assert_allclose(a[head].sum(1), 1.0, atol=1e-5)


@pytest.fixture
def pipeline(backend, tmp_path):
    """Catalog + one query partition 'all' with its image set, in one instance."""
    resources = backend.resources(make_dataset(tmp_path / "ds"))
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([products, product_images], resources=resources, instance=instance, run_config=QUIET).success
    QueryRegistry(backend.store()).put("all", "SELECT id FROM products")
    instance.add_dynamic_partitions(image_queries.name, ["all"])
    assert dg.materialize([image_set], partition_key="all", resources=resources, instance=instance,
                          run_config=QUIET).success

    def run(assets, config=None, partition="all", raise_on_error=True):
        ops = {a.node_def.name: {"config": c} for a, c in (config or {}).items()}
        return dg.materialize(assets, partition_key=partition, resources=resources, instance=instance,
                              run_config={**QUIET, "ops": ops}, raise_on_error=raise_on_error)

    return backend, run


def meta(result, key):
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(key)]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def prediction_rows(backend):
    with backend.engine().connect() as conn:
        return conn.execute(sa.text("SELECT image_set, source, id, variant, model_version, article_type_confidence "
                                    "FROM predictions ORDER BY id, variant")).all()


def test_augment_train_predict(pipeline):
    backend, run = pipeline
    store = backend.store()
    aug = run([augmented_set, augmented_count_matches], {augmented_set: {"variants": 2, "seed": 3}})
    m = meta(aug, "augmented_set")
    assert (m["dagster/row_count"], m["augmented_now"], m["source_images"]) == (18, 9, 9)
    assert "data:image/png;base64," in m["contact_sheet"]
    assert [c.passed for c in aug.get_asset_check_evaluations()] == [True]
    prefix = f"image-sets/all/augmented/{m['spec_hash']}/"
    first = {o.key: o.md5 for o in store.list(prefix) if o.key.endswith(".jpg")}
    assert len(first) == 18 and store.exists(prefix + "contact_sheet.png")

    again = meta(run([augmented_set], {augmented_set: {"variants": 2, "seed": 3}}), "augmented_set")
    assert again["augmented_now"] == 0 and again["up_to_date"] == 9
    assert {o.key: o.md5 for o in store.list(prefix) if o.key.endswith(".jpg")} == first

    fewer = meta(run([augmented_set], {augmented_set: {"variants": 1, "seed": 3}}), "augmented_set")
    assert (fewer["dagster/row_count"], fewer["augmented_now"], fewer["removed"]) == (9, 0, 9)  # the _1 variants go
    assert len([o for o in store.list(prefix) if o.key.endswith(".jpg")]) == 9
    back = meta(run([augmented_set], {augmented_set: {"variants": 2, "seed": 3}}), "augmented_set")
    assert (back["dagster/row_count"], back["augmented_now"], back["removed"]) == (18, 9, 0)

    trained = run([fashion_classifier], {fashion_classifier: TINY_MODEL}, partition=None)
    model_meta = meta(trained, "fashion_classifier")
    assert model_meta["image_size"] == 32 and 0 <= model_meta["article_type_accuracy"] <= 1
    assert store.exists(f"models/fashion_classifier/{model_meta['version']}/saved_model/saved_model.pb")

    first_run = run([predictions, one_row_per_input, confidences_are_probabilities])
    p = meta(first_run, "predictions")
    assert p["dagster/row_count"] == 9 and p["model_version"] == model_meta["version"]
    checks = first_run.get_asset_check_evaluations()
    assert len(checks) == 2 and all(c.passed for c in checks)
    rows = prediction_rows(backend)
    assert len(rows) == 9 and {r.source for r in rows} == {"original"}
    with backend.engine().connect() as conn:  # the label-error candidates the gallery shows
        disagree = conn.execute(sa.text("SELECT count(*) FROM predictions r JOIN products p ON p.id = r.id "
                                        "WHERE r.article_type_label <> p.article_type")).scalar_one()
    assert p["disagreements"] == disagree
    assert ("data:image/png;base64," in p["disagreement_gallery"]) == (disagree > 0)
    assert store.exists(layout.prediction_disagreements("all")) == (disagree > 0)
    assert all(0 <= r.article_type_confidence <= 1 for r in rows)

    run([predictions])  # a re-run replaces the partition's rows, never duplicates them
    assert len(prediction_rows(backend)) == 9

    # The auto flag is the model's threshold on the calibrated confidence, per head.
    labels_key = layout.model_labels(model_meta["version"])
    labels_doc = json.loads(store.get_bytes(labels_key))
    assert set(labels_doc["calibration"]) == set(HEADS) and labels_doc["autotag"]["precision"] == 0.97
    def predicted_table(calibration):
        store.put_bytes(labels_key, json.dumps({**labels_doc, "calibration": calibration}).encode())
        run([predictions])
        with backend.engine().connect() as conn:
            return conn.execute(sa.text("SELECT article_type_confidence, article_type_auto, article_type_top5, "
                                        "master_category_auto FROM predictions ORDER BY id")).all()

    top = {}
    for temperature in (1.0, 2.0):
        calibration = {h: {"temperature": temperature, "threshold": None} for h in HEADS}
        table = predicted_table(calibration)
        confidences = [r.article_type_confidence for r in table]
        assert [json.loads(r.article_type_top5)[0][1] for r in table] == confidences  # calibrated, both
        assert not any(r.article_type_auto or r.master_category_auto for r in table)  # no threshold: never
        top[temperature] = max(confidences)
        calibration["article_type"]["threshold"] = sorted(confidences, reverse=True)[4]  # distinct here
        table = predicted_table(calibration)
        assert sum(bool(r.article_type_auto) for r in table) == 5
        assert all(bool(r.article_type_auto) == (r.article_type_confidence >= calibration["article_type"][
            "threshold"]) for r in table)
        assert not any(r.master_category_auto for r in table)
    assert top[2.0] < top[1.0]  # a temperature above 1 flattens the answer
    store.put_bytes(labels_key, json.dumps(labels_doc).encode())

    augmented = meta(run([predictions], {predictions: {"source": "augmented"}}), "predictions")
    assert augmented["dagster/row_count"] == 18
    rows = prediction_rows(backend)
    assert len(rows) == 18 and {r.variant for r in rows} == {0, 1} and {r.source for r in rows} == {"augmented"}
    parquet = pq.read_table(io.BytesIO(store.get_bytes(layout.predictions("all"))))
    assert parquet.num_rows == 18 and "article_type_top5" in parquet.column_names
    top5 = json.loads(parquet.column("article_type_top5")[0].as_py())
    assert len(top5) == min(5, len(json.loads(store.get_bytes(
        f"models/fashion_classifier/{model_meta['version']}/labels.json"))["heads"]["article_type"]))


def test_a_bad_spec_fails_before_any_work(pipeline):
    backend, run = pipeline
    result = run([augmented_set], {augmented_set: {"spec": [{"Affine": {"rotate": "lots"}}]}}, raise_on_error=False)
    assert not result.success
    text = "\n".join(repr(e) for e in result.all_events)
    assert "augmentation spec: step 1 (Affine)" in text
    assert not list(backend.store().list("image-sets/all/augmented/"))


@pytest.mark.parametrize("form", ["keras", "saved_model"])
def test_model_uri_imports_an_existing_model(pipeline, tmp_path, form):
    backend, run = pipeline
    x, rows = tiny_training_set()
    vocab = build_vocabularies(rows, min_examples=1)
    targets = {h: np.array([vocab[h].encode(r[h]) for r in rows]) for h in HEADS}
    config = TrainConfig(image_size=32, epochs=1, batch_size=8, widths=(8, 16, 16, 32), blocks=(1, 1, 1, 1))
    model = train_classifier(x, targets, list(range(len(rows))), vocab, config, log=lambda m: None).model
    outside = LocalObjectStore(tmp_path / "elsewhere")
    labels = artifacts.labels_document_from_classes({h: list(vocab[h].classes) for h in HEADS}, 32)
    uris = artifacts.save_model(outside, model, labels, "theirs")

    imported = meta(run([fashion_classifier], {fashion_classifier: {"model_uri": uris[form]}}, partition=None),
                    "fashion_classifier")
    assert imported["training_seconds"] == 0 and imported["image_size"] == 32
    version = imported["version"]
    store = backend.store()
    assert store.get_bytes(layout.MODEL_LATEST).decode() == version
    assert store.exists(f"models/fashion_classifier/{version}/saved_model/saved_model.pb")
    p = meta(run([predictions]), "predictions")
    assert p["dagster/row_count"] == 9 and p["model_version"] == version
