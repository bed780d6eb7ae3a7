"""``predictions``: the classifier over a query's images, as a SQL table and Parquet (thin
wiring around ``build``: plan, one GPU step per shard, commit)."""

import base64
import time
from typing import Literal

import dagster as dg
import pyarrow.compute as pc
from pydantic import Field

from .. import layout
from ..classifier.labels import HEADS
from ..core.parquet import read_parquet
from ..core.placement import (
    GPU_POOL,
    gpu_op_tags,
    partition_lease,
    plan_prefix,
    same_config_for,
    shard_outputs,
    step_figures,
)
from ..core.progress import Progress
from ..core.reporting import drawn, markdown_table
from ..core.shards import Shard, remove_leftovers
from ..image_sets.assets import image_queries
from ..image_sets.versions import made_from
from ..labelling.pictures import disagreement_gallery, disagreements
from ..resources import CatalogDatabase, ObjectStoreResource
from .build import (
    PredictPlan,
    PredictShardResult,
    commit_predictions,
    input_table,
    plan_predictions,
    predict_shard,
)

ASSET = "predictions"


class PredictionsConfig(dg.Config):
    source: Literal["original", "augmented"] = "original"
    """Predict the set's images, or its newest augmented set."""
    batch_size: int = 128
    shard_size: int = Field(default=100_000, ge=1)
    """Images per shard: each shard is one step (one GPU pod on Kubernetes)."""
    set_version: str | None = None
    """Predict this version of the image set (its number or digest); default: the newest."""


@dg.op(
    ins={"image_set": dg.In(dg.Nothing), "augmented_set": dg.In(dg.Nothing), "fashion_classifier": dg.In(dg.Nothing)},
    out={"shards": dg.DynamicOut(Shard), "plan": dg.Out(PredictPlan)},
)
def plan_prediction_shards(context: dg.OpExecutionContext, config: PredictionsConfig, catalog_db: CatalogDatabase,
                           store: ObjectStoreResource):
    """Takes the partition's lease, picks the inputs and the model version (LATEST, now) and
    writes the work lists."""
    name, store_ = context.partition_key, store.get_store()
    with partition_lease(context, catalog_db, ASSET):
        remove_leftovers(store_, ASSET, name, context.run_id, [layout.predictions(name)], store.max_concurrency)
        plan = plan_predictions(store_, name, config.source, plan_prefix(context, ASSET), config.shard_size,
                                config.set_version)
    context.log.info(f"Predicting {plan.inputs:,} {config.source} images of {plan.name!r} with model "
                     f"{plan.model_version}, in {len(plan.shards)} shard(s)")
    yield from shard_outputs(plan.shards)
    yield dg.Output(plan, output_name="plan")


# The step that wants a GPU: on Kubernetes it lands on a GPU node (dagster-k8s/config), and the
# `gpu` pool caps how many run at once.
@dg.op(tags=gpu_op_tags(), pool=GPU_POOL)
def predict_shard_images(context: dg.OpExecutionContext, config: PredictionsConfig, catalog_db: CatalogDatabase,
                         store: ObjectStoreResource, plan: PredictPlan, shard: Shard) -> PredictShardResult:
    """Batched inference over one shard: a tf.data pipeline decodes in parallel and prefetches."""
    progress = Progress(f"predictions[{plan.name}] shard {shard.index}", shard.items, context.log.info,
                        every_items=5_000)
    with partition_lease(context, catalog_db, ASSET):
        result = predict_shard(store.get_store(), plan, shard, config.batch_size, store.max_concurrency,
                               progress.advance)
    progress.finish()
    return result


@dg.op
def write_predictions(context: dg.OpExecutionContext, config: PredictionsConfig, catalog_db: CatalogDatabase,
                      store: ObjectStoreResource, plan: PredictPlan, shards: list[PredictShardResult]) -> dg.Output[None]:
    """Replaces the partition's rows in one transaction, writes the Parquet copy, gives the
    partition's lease back."""
    store_ = store.get_store()
    started = time.monotonic()
    with partition_lease(context, catalog_db, ASSET, release=True):
        result = commit_predictions(catalog_db.engine, store_, plan, shards, store.max_concurrency)
    seconds = sum(s.seconds for s in result.shards)
    preview_columns = ["id", "variant", *[f"{h}_label" for h in HEADS], "article_type_confidence"]
    keys = {(r["id"], r["variant"]): r["key"] for r in input_table(store_, plan.name, plan.source, plan.set_digest).to_pylist()}
    found = disagreements(catalog_db.engine, plan.name)
    gallery, gallery_error = drawn(context.log.warning, "disagreement gallery", disagreement_gallery, store_, found,
                                   plan.name, keys, workers=store.max_concurrency)
    context.log.info(f"{len(found):,} images whose predicted article type is not the catalog's")
    return dg.Output(None, metadata={
        "dagster/row_count": result.rows,
        "source": plan.source,
        "model_version": plan.model_version,
        "set_version": plan.set_version,
        "set_version_digest": plan.set_digest,
        "rate_images_per_s": dg.MetadataValue.float(round(result.rows / seconds, 1) if seconds else 0.0),
        **step_figures(plan, started, result.shards),
        "model_load_seconds": dg.MetadataValue.float(round(max(s.model_load_seconds for s in result.shards), 2)
                                                     if result.shards else 0.0),
        **{f"agreement_{h}": dg.MetadataValue.float(round(a, 4)) for h, a in result.agreement.items() if a is not None},
        **{f"labels_{h}": dg.MetadataValue.md(markdown_table([h, "images"], result.distribution[h])) for h in HEADS},
        "preview": dg.MetadataValue.md(markdown_table(
            preview_columns,
            [[r[c] if c != "article_type_confidence" else round(r[c], 3) for c in preview_columns]
             for r in result.preview], limit=10)),
        "table": "predictions",
        "parquet": store_.uri(layout.predictions(plan.name)),
        "disagreements": len(found),
        "disagreement_gallery": dg.MetadataValue.md(
            f"Images whose predicted article type is not the catalog's, most confident first: label-error "
            f"candidates ({gallery.shown:,} of {gallery.total:,} shown). Each: id and confidence, the catalog's "
            f"label, the model's.\n\n![disagreements](data:image/png;base64,{base64.b64encode(gallery.png).decode()})"
            f"\n\nStored at `{gallery.uri}`" if gallery
            else gallery_error or "_none: the model agrees with the catalog on every image_"),
        "disagreement_list": dg.MetadataValue.md(markdown_table(
            ["id", "variant", "catalog article_type", "predicted", "confidence"],
            [(d.id, d.variant, d.catalog, d.predicted, round(d.confidence, 3)) for d in found], limit=20)),
    })


@dg.graph_asset(
    partitions_def=image_queries,
    group_name="model",
    ins={name: dg.AssetIn(dagster_type=dg.Nothing) for name in ("image_set", "augmented_set", "fashion_classifier")},
    kinds={"tensorflow", "sql", "parquet"},
    config=same_config_for(PredictionsConfig, "plan_prediction_shards", "predict_shard_images", "write_predictions"),
    # Re-tags a set when the set, its augmented copy or the model changes.
    # ... once its inputs' blocking checks pass: a set whose manifest lies is not built on.
    automation_condition=dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed(),
)
def predictions(image_set, augmented_set, fashion_classifier):
    """Master category, sub category and article type for every image of the set, with
    confidence and top-5, in table ``predictions`` (this partition's rows replaced in one
    transaction) and ``image-sets/<name>/predictions.parquet``."""
    shards, plan = plan_prediction_shards(image_set=image_set, augmented_set=augmented_set,
                                          fashion_classifier=fashion_classifier)
    return write_predictions(plan, shards.map(lambda shard: predict_shard_images(plan, shard)).collect())


def _stored_predictions(context: dg.AssetCheckExecutionContext, store: ObjectStoreResource, columns: list[str]):
    """Only the columns a check needs: the top-5 JSON makes up most of the file."""
    store_ = store.get_store()
    return store_, read_parquet(store_, layout.predictions(context.partition_key), columns)


@dg.asset_check(asset=predictions, blocking=True, description="One prediction row per input image.")
def one_row_per_input(context: dg.AssetCheckExecutionContext, store: ObjectStoreResource) -> dg.AssetCheckResult:
    store_, table = _stored_predictions(context, store, ["source"])
    source = table.column("source")[0].as_py() if table.num_rows else "original"
    inputs = input_table(store_, context.partition_key, source, made_from(table.schema)).num_rows
    return dg.AssetCheckResult(passed=table.num_rows == inputs, metadata={"rows": table.num_rows, "inputs": inputs})


@dg.asset_check(asset=predictions, description="Every confidence is a probability, in [0, 1].")
def confidences_are_probabilities(context: dg.AssetCheckExecutionContext,
                                  store: ObjectStoreResource) -> dg.AssetCheckResult:
    _, table = _stored_predictions(context, store, [f"{h}_confidence" for h in HEADS])
    columns = [table.column(f"{h}_confidence") for h in HEADS]
    low = min((pc.min(c).as_py() for c in columns if len(c)), default=0.0)
    high = max((pc.max(c).as_py() for c in columns if len(c)), default=0.0)
    return dg.AssetCheckResult(passed=0.0 <= low and high <= 1.0, metadata={"min": low, "max": high})
