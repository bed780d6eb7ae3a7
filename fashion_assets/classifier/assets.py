"""``fashion_classifier``: trained from scratch on the catalog's own images, or imported (thin
wiring around ``build``)."""

import base64
from typing import Literal

import dagster as dg

from .. import layout
from ..catalog.assets import product_images, products
from ..core.placement import GPU_POOL, gpu_op_tags, partition_lease
from ..core.reporting import markdown_table
from ..labelling.assets import labels
from ..resources import CatalogDatabase, ObjectStoreResource
from .build import BuildSettings, build_version
from .cache import DEFAULT_IDS_PER_SHARD, build_cache, catalog_photos
from .evaluate import per_class_rows
from .labels import HEADS
from .rows import NotEnoughImages, catalog_rows, prefer_human_labels, set_rows


class ClassifierConfig(dg.Config):
    """The user's choices; defaults are ``build.BuildSettings``'s (the recipe's one source)."""

    preset: Literal["default", "quality"] = "default"
    """The recipe: 'default' (about 11 min on 2 CPU cores for the 8,448-image catalog) or 'quality'
    (96 px, a larger network, 60 epochs: for a GPU or a long run). Fields below override it."""
    image_size: int | None = None
    """Input size in pixels (square); default: the preset's (64 / 96)."""
    epochs: int | None = None
    batch_size: int | None = None
    min_examples: int = BuildSettings.min_examples
    """Classes with fewer training images are folded into 'other'."""
    validation_fraction: float = BuildSettings.validation_fraction
    """Share of the groups of near-duplicates held out for the validation figure."""
    split_block: int = BuildSettings.split_block
    """The validation split keeps blocks of this many consecutive product ids whole (a style's
    colours get neighbouring ids and are not always alike enough to be grouped); 1: groups only."""
    unseen_fraction: float = BuildSettings.unseen_fraction
    """Share of the newest product ids held out of training for the harsher 'unseen range' figure."""
    seed: int = BuildSettings.seed
    image_set: str | None = None
    """Train on this image set (an image_set partition: a user's SQL selection) instead of the whole
    catalog; ``name@3`` (or ``name@<digest>``) trains on that set version, even after newer ones."""
    use_augmented: bool = False
    """With image_set: also train on its newest augmented set."""
    model_uri: str | None = None
    """Import this model (.keras file or SavedModel folder; local path or s3://) instead of training."""
    autotag_precision: float = BuildSettings.autotag_precision
    """Per head, tags are automatic (applied without a person) above the lowest calibrated
    confidence at which the validation precision reaches this."""
    accuracy_floor: float = 0.5
    """The asset check fails when a head's validation accuracy is below this."""
    human_labels: bool = True
    """Train on the labels people gave (table `labels`, `fashion-assets labels import`) where there
    are any, the catalog's elsewhere; false: the catalog's only."""


class InputsConfig(dg.Config):
    image_size: int = 64
    """The size photos are decoded to: the recipe's input size (default preset 64, quality 96)."""
    ids_per_shard: int = DEFAULT_IDS_PER_SHARD
    """Product ids per shard: a re-run rewrites the shards whose photos changed."""


@dg.asset(
    group_name="model",
    deps=[product_images],
    kinds={"tensorflow"},
    automation_condition=dg.AutomationCondition.eager(),
)
def classifier_inputs(context: dg.AssetExecutionContext, config: InputsConfig, catalog_db: CatalogDatabase,
                      store: ObjectStoreResource) -> dg.MaterializeResult:
    """Every catalog photo decoded and resized once to the recipe's input size, in shards of raw
    uint8 pixels (``models/inputs/<size>px/``), so ``fashion_classifier``'s epochs read compact
    shards instead of decoding JPEGs. Incremental: a re-run decodes only new or changed photos
    (by MD5) and rewrites only the shards that hold them."""
    store_ = store.get_store()
    photos = catalog_photos(catalog_db.engine)
    with partition_lease(context, catalog_db, "classifier_inputs", release=True, partition=f"{config.image_size}px"):
        stats = build_cache(store_, photos, config.image_size, config.ids_per_shard, store.max_concurrency,
                            log=context.log.info)
    context.log.info(f"classifier_inputs {config.image_size}px: {stats.images:,} photos in {stats.shards} shards, "
                     f"{stats.encoded:,} decoded, {stats.copied:,} copied, {stats.shards_written} shard(s) written, "
                     f"{stats.seconds:.1f}s")
    return dg.MaterializeResult(metadata={
        "image_size": stats.image_size,
        "dagster/row_count": stats.images,
        "images_decoded": stats.encoded,
        "images_copied": stats.copied,
        "images_removed": stats.removed,
        "shards": stats.shards,
        "shards_written": stats.shards_written,
        "shards_deleted": stats.shards_deleted,
        "bytes": dg.MetadataValue.int(stats.bytes),
        "seconds": dg.MetadataValue.float(round(stats.seconds, 2)),
        "decode_rate_images_per_s": dg.MetadataValue.float(round(stats.rate, 1)),
        "index": store_.uri(layout.model_inputs_index(config.image_size)),
    })


@dg.asset(
    group_name="model",
    deps=[products, product_images, labels, classifier_inputs],
    kinds={"tensorflow", "keras"},
    op_tags=gpu_op_tags(),
    pool=GPU_POOL,
    check_specs=[dg.AssetCheckSpec("validation_accuracy_above_floor", asset="fashion_classifier")],
)
def fashion_classifier(
    context: dg.AssetExecutionContext, config: ClassifierConfig, catalog_db: CatalogDatabase, store: ObjectStoreResource
) -> dg.MaterializeResult:
    """One network, three heads (master_category, sub_category, article_type), trained from
    scratch on ``product_images`` joined with ``products`` (or on one image set: config
    ``image_set``); saved as ``.keras`` + SavedModel under ``models/fashion_classifier/<version>/``
    with ``LATEST`` pointing at it. Its accuracy is measured twice: on held-out groups of
    near-duplicates (*validation*) and on the newest product ids (*unseen range*)."""
    settings = BuildSettings(**config.model_dump(exclude={"accuracy_floor", "image_set", "use_augmented",
                                                             "human_labels"}))
    store_ = store.get_store()
    try:
        if config.image_set:
            training = set_rows(store_, config.image_set, config.use_augmented, catalog_db.engine)
        elif config.use_augmented:
            raise NotEnoughImages("use_augmented needs image_set: the augmented copies are those of one image set")
        else:
            training = catalog_rows(catalog_db.engine)
        if config.human_labels:
            training = prefer_human_labels(training, catalog_db.engine)
            context.log.info("Labels of the original images, people / catalog: " + ", ".join(
                f"{h} {n['human']:,} / {n['catalog']:,}" for h, n in training.label_sources.items()))
        result = build_version(
            store_, training, settings, io_workers=store.max_concurrency,
            s3_client=store.s3_client(), log=context.log.info,
        )
    except NotEnoughImages as exc:
        raise dg.Failure(str(exc)) from None
    metrics, classes = result.metrics, result.classes
    return dg.MaterializeResult(
        metadata={
            "version": result.version,
            **{f"{h}_accuracy": dg.MetadataValue.float(round(metrics[h]["accuracy"], 4)) for h in HEADS},
            **{f"{h}_top5": dg.MetadataValue.float(round(metrics[h]["top5"], 4)) for h in HEADS},
            **{f"unseen_{h}_accuracy": dg.MetadataValue.float(round(result.unseen_metrics[h]["accuracy"], 4))
               for h in HEADS if result.unseen_metrics},
            **trust_metadata(result),
            "input_source": result.input_source,
            "validation_ids_md5": result.validation_ids_md5,
            "validation_images": result.validation_images,
            "unseen_images": result.unseen_images,
            "figures": dg.MetadataValue.md(
                "*validation*: products of groups of near-duplicates the model never saw, drawn from the whole "
                f"catalog ({config.validation_fraction:.0%} of the groups, in blocks of {config.split_block} "
                "consecutive ids); temperatures and auto-tag thresholds are fitted on it. *unseen range*: the newest "
                f"{config.unseen_fraction:.0%} of product ids (>= {result.unseen_first_id:,}), never trained on: "
                "the harsher figure, closer to what new products get."),
            "trained_on": dg.MetadataValue.json({**result.source, "images": result.training_images}),
            "training_images": result.training_images,
            # Where the labels came from (original images): people (table `labels`) or the catalog.
            **{f"labels_from_people_{h}": n["human"] for h, n in training.label_sources.items()},
            **{f"labels_from_catalog_{h}": n["catalog"] for h, n in training.label_sources.items()},
            "classes": dg.MetadataValue.json({h: len(classes[h]) for h in HEADS}),
            "parameters": result.parameters,
            "image_size": result.image_size,
            "preset": config.preset,
            "epochs_run": result.epochs_run,
            "training_seconds": dg.MetadataValue.float(round(result.training_seconds, 1)),
            "history": dg.MetadataValue.json({k: [round(v, 4) for v in vs] for k, vs in result.history.items()
                                              if k.startswith("val_") and k.endswith("accuracy")}),
            "per_class_article_type": dg.MetadataValue.md(markdown_table(
                ["class", "support", "precision", "recall", "f1"],
                per_class_rows(result.predicted["article_type"], result.truth["article_type"],
                               classes["article_type"]), limit=60)),
            "confusion_article_type": dg.MetadataValue.md(
                f"![confusion](data:image/png;base64,{base64.b64encode(result.confusion_png).decode()})"),
            "model_keras": result.uris["keras"],
            "saved_model": result.uris["saved_model"],
            "labels": result.uris["labels"],
        },
        check_results=[dg.AssetCheckResult(
            check_name="validation_accuracy_above_floor",
            passed=result.lowest_accuracy >= config.accuracy_floor,
            metadata={"lowest_head_accuracy": round(result.lowest_accuracy, 4), "floor": config.accuracy_floor},
        )],
    )


def trust_metadata(result) -> dict:
    """Calibration and auto-tagging, per head: temperature, threshold, and on each part the
    expected calibration error before/after and the precision and coverage of automatic tags."""
    out: dict = {"calibration": dg.MetadataValue.json(result.calibration or {})}
    rows = []
    for head in HEADS:
        for part, f in result.trust.get(head, {}).items():
            rows.append((head, part, f["images"], f["ece_before"], f["ece_after"],
                         "-" if f["precision"] is None else f["precision"], f["coverage"]))
            if part == "unseen_range":
                out[f"unseen_{head}_auto_coverage"] = dg.MetadataValue.float(f["coverage"])
                if f["precision"] is not None:
                    out[f"unseen_{head}_auto_precision"] = dg.MetadataValue.float(f["precision"])
                out[f"unseen_{head}_ece_after"] = dg.MetadataValue.float(f["ece_after"])
    out["trust"] = dg.MetadataValue.md(markdown_table(
        ["head", "part", "images", "ECE before", "ECE after", "auto precision", "auto coverage"], rows))
    if result.precision_coverage_png:
        out["precision_coverage"] = dg.MetadataValue.md(
            f"![precision and coverage](data:image/png;base64,{base64.b64encode(result.precision_coverage_png).decode()})")
    return out
