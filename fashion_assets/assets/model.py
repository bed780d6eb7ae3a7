"""``fashion_classifier``: trained from scratch on the catalog's own images, or imported."""

import base64
import tempfile
import time

import dagster as dg
import numpy as np
import sqlalchemy as sa

from ..catalog_db import product_images as images_table
from ..catalog_db import products as products_table
from ..k8s import GPU_POOL, gpu_op_tags
from ..ml.labels import DEFAULT_MIN_EXAMPLES, HEADS, build_vocabularies
from ..parallel import bounded_map
from ..reporting import markdown_table
from ..resources import CatalogDatabase, ObjectStoreResource, S3StoreResource
from .catalog import product_images, products


class ClassifierConfig(dg.Config):
    image_size: int = 64
    """Input size in pixels (square); the catalog's originals are 60x80."""
    epochs: int = 30
    batch_size: int = 64
    min_examples: int = DEFAULT_MIN_EXAMPLES
    """Classes with fewer training images are folded into 'other'."""
    validation_fraction: float = 0.15
    seed: int = 20261123
    model_uri: str | None = None
    """Import this model (.keras file or SavedModel folder; local path or s3://) instead of training."""
    accuracy_floor: float = 0.5
    """The asset check fails when a head's validation accuracy is below this."""


def _use_gpu_if_any(log) -> None:
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        keras.mixed_precision.set_global_policy("mixed_float16")  # the heads stay float32 (model.py)
        log(f"Training on {len(gpus)} GPU(s) with mixed precision")
    else:
        log("No GPU visible: training on the CPU")


@dg.asset(
    group_name="model",
    deps=[products, product_images],
    kinds={"tensorflow", "keras"},
    op_tags=gpu_op_tags(),
    pool=GPU_POOL,
    check_specs=[dg.AssetCheckSpec("validation_accuracy_above_floor", asset="fashion_classifier")],
)
def fashion_classifier(
    context: dg.AssetExecutionContext, config: ClassifierConfig, catalog_db: CatalogDatabase, store: ObjectStoreResource
) -> dg.MaterializeResult:
    """One network, three heads (master_category, sub_category, article_type), trained from
    scratch on ``product_images`` joined with ``products``; saved as ``.keras`` + SavedModel under
    ``models/fashion_classifier/<version>/`` with ``LATEST`` pointing at it."""
    from ..ml import artifacts
    from ..ml.evaluate import confusion_png, head_metrics, per_class_rows
    from ..ml.images import load_array
    from ..ml.train import TrainConfig, split_by_product, train_classifier

    store_ = store.get_store()
    query = (
        sa.select(images_table.c.id, images_table.c.key, *[products_table.c[h] for h in HEADS])
        .select_from(images_table.join(products_table, products_table.c.id == images_table.c.id))
        .order_by(images_table.c.id)
    )
    with catalog_db.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(query).mappings()]
    if len(rows) < 2:
        raise dg.Failure(f"only {len(rows)} catalog images with a product: materialise products and product_images")
    ids = [r["id"] for r in rows]
    _use_gpu_if_any(context.log.info)

    with tempfile.TemporaryDirectory(prefix="fashion-classifier-") as workdir:
        if config.model_uri:
            client = store.get_client() if isinstance(store, S3StoreResource) else None
            imported_from = artifacts.fetch_to_local(config.model_uri, workdir, client)
            loaded = artifacts.load_local(imported_from)
            image_size = loaded.image_size
            classes = {h: loaded.classes(h) for h in HEADS}
            model, seconds, epochs_run, history = loaded.keras_model, 0.0, 0, {}
            predict = loaded.predict
            _, val_index = split_by_product(ids, config.validation_fraction, config.seed)
            context.log.info(f"Imported {config.model_uri} ({image_size}px)")
        else:
            image_size = config.image_size
            vocabularies = build_vocabularies(rows, config.min_examples)
            classes = {h: list(vocabularies[h].classes) for h in HEADS}

        started = time.monotonic()
        x = load_array(
            bounded_map(lambda item: (item[0], store_.get_bytes(item[1]["key"])), enumerate(rows), store.max_concurrency),
            len(rows), image_size,
        )
        context.log.info(f"Decoded {len(rows):,} images at {image_size}px in {time.monotonic() - started:.1f}s")
        targets = {h: np.array([classes[h].index(r[h]) if r[h] in classes[h] else
                                (classes[h].index("other") if "other" in classes[h] else -1) for r in rows])
                   for h in HEADS}

        if not config.model_uri:
            train_config = TrainConfig(image_size=image_size, epochs=config.epochs, batch_size=config.batch_size,
                                       validation_fraction=config.validation_fraction, seed=config.seed)
            result = train_classifier(x, targets, ids, vocabularies, train_config, log=context.log.info)
            model, seconds, epochs_run, history = result.model, result.seconds, result.epochs_run, result.history
            val_index = result.val_index
            predict = artifacts.keras_predict(model)

        evaluate_on = val_index if len(val_index) else np.arange(len(rows))
        chunks = [predict(x[evaluate_on[i:i + 256]]) for i in range(0, len(evaluate_on), 256)]
        probs = {h: np.concatenate([c[h] for c in chunks]) for h in HEADS}
        truth = {h: targets[h][evaluate_on] for h in HEADS}
        metrics = head_metrics(probs, truth)
        for head in HEADS:
            context.log.info(f"validation {head}: accuracy {metrics[head]['accuracy']:.4f}, "
                             f"top-5 {metrics[head]['top5']:.4f}")

        version = artifacts.new_version()
        labels = artifacts.labels_document_from_classes(classes, image_size, {
            "version": version, "validation_metrics": metrics, "trained_on_images": len(rows),
            "imported_from": config.model_uri,
        })
        if model is not None:
            uris = artifacts.save_model(store_, model, labels, version)
        else:  # an imported SavedModel is kept as it is
            uris = artifacts.save_saved_model_folder(store_, imported_from, labels, version)

    article_pred = probs["article_type"].argmax(1)
    confusion = confusion_png(article_pred, truth["article_type"], classes["article_type"])
    store_.put_bytes(f"{artifacts.MODEL_PREFIX}{version}/confusion_article_type.png", confusion, "image/png")
    worst = min(metrics[h]["accuracy"] for h in HEADS)
    return dg.MaterializeResult(
        metadata={
            "version": version,
            **{f"{h}_accuracy": dg.MetadataValue.float(round(metrics[h]["accuracy"], 4)) for h in HEADS},
            **{f"{h}_top5": dg.MetadataValue.float(round(metrics[h]["top5"], 4)) for h in HEADS},
            "validation_images": len(evaluate_on),
            "training_images": len(rows) - len(evaluate_on) if not config.model_uri else 0,
            "classes": dg.MetadataValue.json({h: len(classes[h]) for h in HEADS}),
            "parameters": model.count_params() if model is not None else 0,
            "image_size": image_size,
            "epochs_run": epochs_run,
            "training_seconds": dg.MetadataValue.float(round(seconds, 1)),
            "history": dg.MetadataValue.json({k: [round(float(v), 4) for v in vs] for k, vs in history.items()
                                              if k.startswith("val_") and k.endswith("accuracy")}),
            "per_class_article_type": dg.MetadataValue.md(markdown_table(
                ["class", "support", "precision", "recall", "f1"],
                per_class_rows(article_pred, truth["article_type"], classes["article_type"]), limit=60)),
            "confusion_article_type": dg.MetadataValue.md(
                f"![confusion](data:image/png;base64,{base64.b64encode(confusion).decode()})"),
            "model_keras": uris["keras"],
            "saved_model": uris["saved_model"],
            "labels": uris["labels"],
        },
        check_results=[dg.AssetCheckResult(
            check_name="validation_accuracy_above_floor",
            passed=worst >= config.accuracy_floor,
            metadata={"lowest_head_accuracy": round(worst, 4), "floor": config.accuracy_floor},
        )],
    )
