"""One new version of the classifier: read the catalog, train from scratch (or import a model),
evaluate on the validation products, save it in the store and move ``LATEST``. Plain module: no
Dagster; ``assets.fashion_classifier`` wires it in and reports what :class:`BuildResult` holds.

Training and an imported model go through the same steps after the model exists: the same
decoded images, the same label encoding (``labels.encode_targets``), the same validation split,
the same evaluation, so their figures compare.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import sqlalchemy as sa

from .. import layout
from ..catalog.tables import product_images, products
from ..core.storage import ObjectStore
from .labels import DEFAULT_MIN_EXAMPLES, HEADS, build_vocabularies, encode_targets, vocabularies_from_classes


class NotEnoughImages(ValueError):
    """The catalog has too few images with a product to train or evaluate on."""


@dataclass
class BuildSettings:
    """What a user chooses (the asset's config); the rest of the recipe is ``train.TrainConfig``."""

    image_size: int = 64
    epochs: int = 30
    batch_size: int = 64
    min_examples: int = DEFAULT_MIN_EXAMPLES
    validation_fraction: float = 0.15
    seed: int = 20261123
    model_uri: str | None = None  # import this model instead of training


@dataclass
class BuildResult:
    version: str
    image_size: int
    classes: dict[str, list[str]]
    metrics: dict[str, dict[str, float]]  # head -> accuracy, top5 (on the validation products)
    predicted: dict[str, np.ndarray]  # head -> predicted class index per validation image
    truth: dict[str, np.ndarray]  # head -> catalog class index per validation image
    catalog_images: int
    validation_images: int
    training_images: int
    uris: dict[str, str]
    confusion_png: bytes
    parameters: int = 0
    epochs_run: int = 0
    training_seconds: float = 0.0
    history: dict[str, list[float]] = field(default_factory=dict)

    @property
    def lowest_accuracy(self) -> float:
        return min(self.metrics[h]["accuracy"] for h in HEADS)


def catalog_rows(engine: sa.Engine) -> list[dict]:
    """(id, key, master_category, sub_category, article_type) of every catalog image with a
    product, in id order."""
    query = (
        sa.select(product_images.c.id, product_images.c.key, *[products.c[h] for h in HEADS])
        .select_from(product_images.join(products, products.c.id == product_images.c.id))
        .order_by(product_images.c.id)
    )
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def use_gpu_if_any(log: Callable[[str], None]) -> None:
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        keras.mixed_precision.set_global_policy("mixed_float16")  # the heads stay float32 (network.py)
        log(f"Training on {len(gpus)} GPU(s) with mixed precision")
    else:
        log("No GPU visible: training on the CPU")


def build_version(
    store: ObjectStore,
    rows: list[dict],
    settings: BuildSettings,
    io_workers: int = 16,
    s3_client=None,
    log: Callable[[str], None] = print,
) -> BuildResult:
    """Train (or import ``settings.model_uri``), evaluate, save as a new version, move LATEST."""
    from . import artifacts
    from .data import StoreImages, predict_in_order
    from .evaluate import confusion_png, head_metrics
    from .train import TrainConfig, split_by_product, train_classifier

    if len(rows) < 2:
        raise NotEnoughImages(
            f"only {len(rows)} catalog images with a product: materialise products and product_images")
    ids = [r["id"] for r in rows]
    use_gpu_if_any(log)

    with tempfile.TemporaryDirectory(prefix="fashion-classifier-") as workdir:
        model, seconds, epochs_run, history = None, 0.0, 0, {}
        if settings.model_uri:
            imported_from = artifacts.fetch_to_local(settings.model_uri, workdir, s3_client)
            loaded = artifacts.load_local(imported_from)
            image_size = loaded.image_size
            vocabularies = vocabularies_from_classes({h: loaded.classes(h) for h in HEADS})
            model, predict = loaded.keras_model, loaded.predict
            _, val_index = split_by_product(ids, settings.validation_fraction, settings.seed)
            log(f"Imported {settings.model_uri} ({image_size}px)")
        else:
            image_size = settings.image_size
            vocabularies = build_vocabularies(rows, settings.min_examples)
        classes = {h: list(vocabularies[h].classes) for h in HEADS}

        # Streamed from the store, decoded as needed: memory does not grow with the catalog.
        images = StoreImages(store.get_bytes, [r["key"] for r in rows], image_size, io_workers)
        targets = encode_targets(rows, vocabularies)

        if not settings.model_uri:
            train_config = TrainConfig(image_size=image_size, epochs=settings.epochs, batch_size=settings.batch_size,
                                       validation_fraction=settings.validation_fraction, seed=settings.seed)
            result = train_classifier(images, targets, ids, vocabularies, train_config, log=log)
            model, seconds, epochs_run, history = result.model, result.seconds, result.epochs_run, result.history
            val_index = result.val_index
            predict = artifacts.keras_predict(model)

        evaluate_on = val_index if len(val_index) else np.arange(len(rows))
        probs = predict_in_order(images, evaluate_on, predict, HEADS)
        truth = {h: targets[h][evaluate_on] for h in HEADS}
        metrics = head_metrics(probs, truth)
        for head in HEADS:
            log(f"validation {head}: accuracy {metrics[head]['accuracy']:.4f}, top-5 {metrics[head]['top5']:.4f}")

        version = artifacts.new_version()
        labels = artifacts.labels_document_from_classes(classes, image_size, {
            "version": version, "validation_metrics": metrics, "trained_on_images": len(rows),
            "imported_from": settings.model_uri,
        })
        if model is not None:
            uris = artifacts.save_model(store, model, labels, version)
        else:  # an imported SavedModel is kept as it is
            uris = artifacts.save_saved_model_folder(store, imported_from, labels, version)

    predicted = {h: probs[h].argmax(1) for h in HEADS}
    confusion = confusion_png(predicted["article_type"], truth["article_type"], classes["article_type"])
    store.put_bytes(layout.model_confusion(version), confusion, "image/png")
    return BuildResult(
        version=version, image_size=image_size, classes=classes, metrics=metrics, predicted=predicted, truth=truth,
        catalog_images=len(rows), validation_images=len(evaluate_on),
        training_images=len(rows) - len(evaluate_on) if not settings.model_uri else 0,
        uris=uris, confusion_png=confusion, parameters=model.count_params() if model is not None else 0,
        epochs_run=epochs_run, training_seconds=seconds,
        history={k: [float(v) for v in vs] for k, vs in history.items()},
    )
