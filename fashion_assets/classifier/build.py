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
from ..core.storage import ObjectStore, md5_hex
from .labels import DEFAULT_MIN_EXAMPLES, HEADS, build_vocabularies, encode_targets, vocabularies_from_classes


class NotEnoughImages(ValueError):
    """The catalog has too few images with a product to train or evaluate on."""


@dataclass
class BuildSettings:
    """What a user chooses (the asset's config); the rest of the recipe is ``train.TrainConfig``."""

    preset: str = "default"  # train.PRESETS: the recipe
    image_size: int | None = None  # None: the preset's
    epochs: int | None = None
    batch_size: int | None = None
    min_examples: int = DEFAULT_MIN_EXAMPLES
    validation_fraction: float = 0.15
    unseen_fraction: float = 0.1  # the newest product ids, held out of training for the harsher figure
    seed: int = 20261123
    model_uri: str | None = None  # import this model instead of training
    # Per head, the auto-tag threshold is the lowest calibrated confidence at which the
    # validation precision reaches this (classifier.calibration).
    autotag_precision: float = 0.97


@dataclass
class TrainingRows:
    """The rows a model learns from and is measured on, and where they came from (lineage).

    Each row: ``id``, ``key`` (its image in the store), the three head labels, ``variant`` (0
    for an original image, k for an augmented copy) and ``group`` (near-duplicates share one;
    default the product id)."""

    rows: list[dict]
    source: dict  # {"source": "catalog"} or {"source": "image_set", "image_set": ..., ...}
    # head -> {"human": n, "catalog": n}: where the original images' labels came from
    # (``prefer_human_labels``); empty until it ran.
    label_sources: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def describe(self) -> str:
        if self.source["source"] == "catalog":
            return "the catalog"
        extra = f" + augmented set {self.source['augmented_spec']}" if self.source.get("augmented_spec") else ""
        return f"image set {self.source['image_set']!r}{extra}"


@dataclass
class BuildResult:
    version: str
    image_size: int
    classes: dict[str, list[str]]
    metrics: dict[str, dict[str, float]]  # head -> accuracy, top5 (on the validation groups)
    unseen_metrics: dict[str, dict[str, float]] | None  # the same on the held-out newest ids
    predicted: dict[str, np.ndarray]  # head -> predicted class index per validation image
    truth: dict[str, np.ndarray]  # head -> catalog class index per validation image
    catalog_images: int  # rows offered, originals and augmented copies
    validation_images: int
    unseen_images: int
    unseen_first_id: int
    training_images: int
    source: dict
    uris: dict[str, str]
    confusion_png: bytes
    parameters: int = 0
    epochs_run: int = 0
    training_seconds: float = 0.0
    history: dict[str, list[float]] = field(default_factory=dict)
    calibration: dict[str, dict] | None = None  # labels.json's "calibration"; None: never automatic
    # head -> {"validation"/"unseen_range": {"ece_before", "ece_after", "precision", "coverage"}}
    trust: dict[str, dict[str, dict]] = field(default_factory=dict)
    precision_coverage_png: bytes = b""
    input_source: str = ""  # where the training images were read from
    validation_ids_md5: str = ""

    @property
    def lowest_accuracy(self) -> float:
        return min(self.metrics[h]["accuracy"] for h in HEADS)


def catalog_rows(engine: sa.Engine) -> TrainingRows:
    """Every catalog image with a product, in id order."""
    group = sa.func.coalesce(product_images.c.near_duplicate_group, product_images.c.id).label("group")
    query = (
        sa.select(product_images.c.id, product_images.c.key, product_images.c.md5, *[products.c[h] for h in HEADS],
                  group)
        .select_from(product_images.join(products, products.c.id == product_images.c.id))
        .order_by(product_images.c.id)
    )
    with engine.connect() as conn:
        rows = [dict(r, variant=0) for r in conn.execute(query).mappings()]
    return TrainingRows(rows, {"source": "catalog"})


def prefer_human_labels(training: TrainingRows, engine: sa.Engine) -> TrainingRows:
    """Each row's label per head from table ``labels`` (what people said, imported from a
    labelling tool) where there is one, the catalog's otherwise; an augmented copy takes its
    original's. Counts, on original images, how many labels of each kind (``label_sources``)."""
    from ..labelling.table import human_labels

    human = human_labels(engine)
    counts = {h: {"human": 0, "catalog": 0} for h in HEADS}
    rows = []
    for row in training.rows:
        row = dict(row)
        for head in HEADS:
            label = human.get((row["id"], head))
            if label is not None:
                row[head] = label
            if row["variant"] == 0:
                counts[head]["human" if label is not None else "catalog"] += 1
        rows.append(row)
    return TrainingRows(rows, training.source, counts)


def near_duplicate_groups_of(engine: sa.Engine, ids: list[int]) -> dict[int, int]:
    """The group of near-duplicates of each of ``ids`` (table product_images; its own id if none)."""
    query = sa.select(product_images.c.id, product_images.c.near_duplicate_group).where(
        product_images.c.id.in_(sa.bindparam("ids", expanding=True)))
    found: dict[int, int] = {}
    with engine.connect() as conn:
        for start in range(0, len(ids), 1000):
            for product_id, group in conn.execute(query, {"ids": ids[start:start + 1000]}):
                if group is not None:
                    found[product_id] = group
    return {i: found.get(i, i) for i in ids}


def set_rows(store: ObjectStore, name: str, use_augmented: bool = False,
             engine: sa.Engine | None = None) -> TrainingRows:
    """The images of one image set (what a user's SQL selected), and with ``use_augmented`` its
    newest augmented copies, labelled from the set's manifest; a copy is in its source's group,
    so it is never on the other side of the split from its original."""
    from ..augmented_sets.build import latest_digest, read_augmented_manifest
    from ..image_sets.export import read_manifest

    if not store.exists(layout.manifest(name)):
        raise NotEnoughImages(f"image set {name!r} has no manifest ({store.uri(layout.manifest(name))}): "
                              f"materialise image_set[{name}] first")
    manifest_bytes = store.get_bytes(layout.manifest(name))
    manifest = read_manifest(store, name).select(["id", "key", *HEADS]).to_pylist()
    groups = near_duplicate_groups_of(engine, [r["id"] for r in manifest]) if engine is not None else {}
    rows = [dict(r, variant=0, group=groups.get(r["id"], r["id"])) for r in manifest]
    source = {"source": "image_set", "image_set": name, "manifest_md5": md5_hex(manifest_bytes),
              "augmented_spec": None}
    if use_augmented:
        if not store.exists(layout.augmented_latest(name)):
            raise NotEnoughImages(f"image set {name!r} has no augmented set: materialise augmented_set[{name}] first")
        digest = latest_digest(store, name)
        labels = {r["id"]: r for r in manifest}
        for copy in read_augmented_manifest(store, name, digest).select(["id", "variant", "key"]).to_pylist():
            if copy["id"] in labels:
                rows.append({**labels[copy["id"]], "key": copy["key"], "variant": copy["variant"] + 1,
                             "group": groups.get(copy["id"], copy["id"])})
        source["augmented_spec"] = digest
    return TrainingRows(rows, source)


def training_images(store: ObjectStore, rows: list[dict], image_size: int, io_workers: int,
                    log: Callable[[str], None]):
    """The rows' images and where they come from: the input cache (``classifier_inputs``) when
    it holds every row's photo as it is now, else streamed from the store and decoded as needed
    (an image set's augmented copies, a size the cache was not built at, a stale cache). Either
    way memory does not grow with the catalog."""
    from .cache import CacheMiss, CachedImages
    from .data import StoreImages

    if rows and all(r.get("md5") and r["variant"] == 0 for r in rows):
        try:
            images = CachedImages(store, image_size, [r["id"] for r in rows], [r["md5"] for r in rows])
            log(f"Reading the images from the input cache at {image_size}px "
                f"({store.uri(layout.model_inputs(image_size))})")
            return images, f"classifier_inputs {image_size}px"
        except CacheMiss as exc:
            log(f"Decoding the JPEGs instead of reading the input cache: {exc}")
    return StoreImages(store.get_bytes, [r["key"] for r in rows], image_size, io_workers), "store JPEGs"


def trust_figures(calibration: dict | None, parts: dict[str, tuple[dict, dict]]) -> dict[str, dict[str, dict]]:
    """Per head and part (validation, unseen range): the expected calibration error before and
    after the temperature, and the precision and coverage of the automatic tags."""
    from .calibration import automatic, expected_calibration_error

    labels = {"calibration": calibration} if calibration else {}
    out: dict[str, dict[str, dict]] = {h: {} for h in HEADS}
    for part, (probs, truth) in parts.items():
        for head in HEADS:
            keep = truth[head] >= 0
            raw, y = probs[head][keep], truth[head][keep]
            calibrated = _calibrated(raw, labels, head)
            auto = automatic(calibrated.max(1), labels, head)
            right = calibrated.argmax(1) == y
            out[head][part] = {
                "images": int(len(y)),
                "ece_before": round(expected_calibration_error(raw, y), 4),
                "ece_after": round(expected_calibration_error(calibrated, y), 4),
                "precision": round(float(right[auto].mean()), 4) if auto.any() else None,
                "coverage": round(float(auto.mean()), 4) if len(y) else 0.0,
            }
    return out


def _calibrated(p: np.ndarray, labels: dict, head: str) -> np.ndarray:
    from .calibration import calibrated

    return calibrated({head: p}, labels)[head]


def describe_trust(calibration: dict | None, trust: dict, head: str) -> str:
    entry = (calibration or {}).get(head) or {}
    parts = [f"temperature {entry.get('temperature', 1.0):.3f}",
             "never automatic" if entry.get("threshold") is None else f"auto-tag threshold {entry['threshold']:.4f}"]
    for part, f in trust[head].items():
        precision = "-" if f["precision"] is None else f"{f['precision']:.4f}"
        parts.append(f"{part}: ECE {f['ece_before']:.4f} -> {f['ece_after']:.4f}, auto precision {precision} "
                     f"on {f['coverage']:.1%}")
    return "; ".join(parts)


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
    training: TrainingRows,
    settings: BuildSettings,
    io_workers: int = 16,
    s3_client=None,
    log: Callable[[str], None] = print,
) -> BuildResult:
    """Train (or import ``settings.model_uri``), evaluate, save as a new version, move LATEST.

    Three disjoint parts of the rows: the newest ``unseen_fraction`` of product ids (with their
    groups) are never trained on and give the harsher *unseen range* figure; the rest is split by
    group into training and validation (the *validation* figure). Both are measured on original
    images only, never on augmented copies.
    """
    from . import artifacts
    from .calibration import fit_head
    from .data import predict_in_order
    from .evaluate import confusion_png, head_metrics, precision_coverage_png
    from .train import hold_out_newest, recipe, split_by_group, train_classifier

    rows = training.rows
    if len(rows) < 2:
        raise NotEnoughImages(
            f"only {len(rows)} images with a product in {training.describe}: materialise products and product_images")
    ids = [r["id"] for r in rows]
    groups = np.array([r["group"] for r in rows])
    original = np.array([r["variant"] == 0 for r in rows])
    kept, unseen, unseen_first_id = hold_out_newest(ids, groups, settings.unseen_fraction)
    log(f"Learning from {training.describe}: {len(rows):,} images; {int(original[unseen].sum()):,} held out "
        f"as the unseen range (product ids >= {unseen_first_id:,})")
    use_gpu_if_any(log)

    with tempfile.TemporaryDirectory(prefix="fashion-classifier-") as workdir:
        model, seconds, epochs_run, history = None, 0.0, 0, {}
        if settings.model_uri:
            imported_from = artifacts.fetch_to_local(settings.model_uri, workdir, s3_client)
            loaded = artifacts.load_local(imported_from)
            image_size = loaded.image_size
            vocabularies = vocabularies_from_classes({h: loaded.classes(h) for h in HEADS})
            model, predict = loaded.keras_model, loaded.predict
            _, val_pos = split_by_group(groups[kept].tolist(), settings.validation_fraction, settings.seed)
            train_index, val_index = np.array([], dtype=np.int64), kept[val_pos]
            log(f"Imported {settings.model_uri} ({image_size}px)")
        else:
            train_config = recipe(settings.preset, image_size=settings.image_size, epochs=settings.epochs,
                                  batch_size=settings.batch_size, validation_fraction=settings.validation_fraction,
                                  seed=settings.seed)
            image_size = train_config.image_size
            vocabularies = build_vocabularies([rows[i] for i in kept], settings.min_examples)
        classes = {h: list(vocabularies[h].classes) for h in HEADS}

        images, input_source = training_images(store, rows, image_size, io_workers, log)
        targets = encode_targets(rows, vocabularies)

        if not settings.model_uri:
            result = train_classifier(images, targets, ids, vocabularies, train_config, log=log, groups=groups,
                                      rows=kept)
            model, seconds, epochs_run, history = result.model, result.seconds, result.epochs_run, result.history
            train_index, val_index = result.train_index, result.val_index
            predict = artifacts.keras_predict(model)

        evaluate_on = val_index[original[val_index]] if len(val_index) else kept[original[kept]]
        probs = predict_in_order(images, evaluate_on, predict, HEADS)
        truth = {h: targets[h][evaluate_on] for h in HEADS}
        # Which products the validation figure is of, as one hash: two models with the same one
        # were measured on the same products (the split depends on groups and seed only).
        validation_ids_md5 = md5_hex(",".join(str(i) for i in sorted(ids[i] for i in evaluate_on)).encode())
        metrics = head_metrics(probs, truth)
        unseen_on = unseen[original[unseen]]
        unseen_metrics, unseen_probs = None, None
        if len(unseen_on):
            unseen_probs = predict_in_order(images, unseen_on, predict, HEADS)
            unseen_metrics = head_metrics(unseen_probs, {h: targets[h][unseen_on] for h in HEADS})
        for head in HEADS:
            unseen_text = f", unseen range {unseen_metrics[head]['accuracy']:.4f}" if unseen_metrics else ""
            log(f"{head}: validation accuracy {metrics[head]['accuracy']:.4f} (top-5 {metrics[head]['top5']:.4f})"
                f"{unseen_text}")
        if settings.model_uri:  # an imported model keeps its own calibration, if it has one
            calibration = (loaded.labels.get("calibration") or None)
        else:  # fitted on the validation groups, never on what the figures below are measured on
            calibration = {h: fit_head(probs[h], truth[h], settings.autotag_precision).to_json() for h in HEADS}
        unseen_truth = {h: targets[h][unseen_on] for h in HEADS} if len(unseen_on) else None
        trust = trust_figures(calibration, {"validation": (probs, truth),
                                            **({"unseen_range": (unseen_probs, unseen_truth)} if unseen_truth else {})})
        for head in HEADS:
            log(f"{head}: {describe_trust(calibration, trust, head)}")

        version = artifacts.new_version()
        labels = artifacts.labels_document_from_classes(classes, image_size, {
            "version": version,
            "validation_metrics": metrics,
            "validation_ids_md5": validation_ids_md5,
            "validation": f"{len(evaluate_on)} images of {settings.validation_fraction:.0%} of the groups of "
                          "near-duplicates, never trained on",
            "unseen_range_metrics": unseen_metrics,
            "unseen_range": f"{len(unseen_on)} images of product ids >= {unseen_first_id} (the newest "
                            f"{settings.unseen_fraction:.0%}), held out of training and validation",
            "trained_on": {**training.source, "images": int(len(train_index))},
            "trained_on_images": len(rows),
            "label_sources": training.label_sources or None,
            "imported_from": settings.model_uri,
            "calibration": calibration,
            "autotag": {"precision": settings.autotag_precision, "figures": trust,
                        "rule": "automatic where softmax(log(p) / temperature)'s top-1 >= threshold"},
            "input_source": input_source,
        })
        if model is not None:
            uris = artifacts.save_model(store, model, labels, version)
        else:  # an imported SavedModel is kept as it is
            uris = artifacts.save_saved_model_folder(store, imported_from, labels, version)

    predicted = {h: probs[h].argmax(1) for h in HEADS}
    confusion = confusion_png(predicted["article_type"], truth["article_type"], classes["article_type"])
    store.put_bytes(layout.model_confusion(version), confusion, "image/png")
    curves_on = (unseen_probs, unseen_truth) if unseen_truth else (probs, truth)
    coverage_png = precision_coverage_png(curves_on[0], curves_on[1], calibration, settings.autotag_precision,
                                          "unseen range" if unseen_truth else "validation")
    store.put_bytes(layout.model_precision_coverage(version), coverage_png, "image/png")
    return BuildResult(
        version=version, image_size=image_size, classes=classes, metrics=metrics, unseen_metrics=unseen_metrics,
        predicted=predicted, truth=truth, catalog_images=len(rows), validation_images=len(evaluate_on),
        unseen_images=len(unseen_on), unseen_first_id=unseen_first_id, training_images=int(len(train_index)),
        source=training.source, uris=uris, confusion_png=confusion,
        parameters=model.count_params() if model is not None else 0,
        epochs_run=epochs_run, training_seconds=seconds,
        history={k: [float(v) for v in vs] for k, vs in history.items()},
        calibration=calibration, trust=trust, precision_coverage_png=coverage_png, input_source=input_source,
        validation_ids_md5=validation_ids_md5,
    )
