"""``fashion_classifier``: trained from scratch on the catalog's own images, or imported (thin
wiring around ``build``)."""

import base64
from typing import Literal

import dagster as dg

from ..catalog.assets import product_images, products
from ..core.placement import GPU_POOL, gpu_op_tags
from ..core.reporting import markdown_table
from ..labelling.assets import labels
from ..resources import CatalogDatabase, ObjectStoreResource, S3StoreResource
from .build import BuildSettings, NotEnoughImages, build_version, catalog_rows, prefer_human_labels, set_rows
from .evaluate import per_class_rows
from .labels import HEADS


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
    unseen_fraction: float = BuildSettings.unseen_fraction
    """Share of the newest product ids held out of training for the harsher 'unseen range' figure."""
    seed: int = BuildSettings.seed
    image_set: str | None = None
    """Train on this image set (an image_set partition: a user's SQL selection) instead of the whole catalog."""
    use_augmented: bool = False
    """With image_set: also train on its newest augmented set."""
    model_uri: str | None = None
    """Import this model (.keras file or SavedModel folder; local path or s3://) instead of training."""
    accuracy_floor: float = 0.5
    """The asset check fails when a head's validation accuracy is below this."""
    human_labels: bool = True
    """Train on the labels people gave (table `labels`, `fashion-assets labels import`) where there
    are any, the catalog's elsewhere; false: the catalog's only."""


@dg.asset(
    group_name="model",
    deps=[products, product_images, labels],
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
            s3_client=store.get_client() if isinstance(store, S3StoreResource) else None, log=context.log.info,
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
            "validation_images": result.validation_images,
            "unseen_images": result.unseen_images,
            "figures": dg.MetadataValue.md(
                "*validation*: products of groups of near-duplicates the model never saw, drawn from the whole "
                f"catalog ({config.validation_fraction:.0%} of the groups). *unseen range*: the newest "
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
