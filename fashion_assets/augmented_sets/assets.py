"""``augmented_set``: each image set, augmented from a declarative spec (thin wiring around
``build``: plan, one step per shard, commit)."""

import base64
import time
from typing import Any

import dagster as dg
from pydantic import Field, field_validator

from .. import layout
from ..core.placement import partition_lease, plan_prefix, same_config_for, shard_outputs, step_figures
from ..core.progress import Progress
from ..core.shards import Shard, remove_leftovers
from ..image_sets.assets import image_queries
from ..image_sets.export import read_manifest
from ..image_sets.versions import made_from
from ..resources import CatalogDatabase, ObjectStoreResource
from .augment import DEFAULT_SPEC, SpecError, build_pipeline, spec_hash
from .build import (
    AugmentPlan,
    AugmentShardResult,
    augment_shard,
    commit_augmentation,
    latest_digest,
    plan_augmentation,
    read_augmented_manifest,
)

ASSET = "augmented_set"


class AugmentConfig(dg.Config):
    spec: list[dict[str, Any]] = DEFAULT_SPEC
    """Ordered albumentations transforms: [{"HorizontalFlip": {"p": 0.5}}, {"Affine": {"rotate": [-15, 15]}}]."""
    variants: int = 2
    """Augmented copies per image."""
    seed: int = 0
    """Same spec + seed + image = byte-identical output."""
    workers: int | None = None
    """Processes per shard step; default: every core."""
    shard_size: int = Field(default=20_000, ge=1)
    """Images per shard: each shard is one step (one pod on Kubernetes)."""
    set_version: str | None = None
    """Augment this version of the image set (its number or digest: ``fashion-assets set
    versions``); default: the newest."""

    @field_validator("spec")
    @classmethod
    def _spec_is_valid(cls, spec):
        try:
            build_pipeline(spec)
        except SpecError as exc:
            raise ValueError(f"augmentation spec: {exc}") from None
        return spec

    @field_validator("variants")
    @classmethod
    def _variants_positive(cls, variants):
        if not 1 <= variants <= 100:
            raise ValueError("variants must be between 1 and 100")
        return variants


@dg.op(ins={"image_set": dg.In(dg.Nothing)}, out={"shards": dg.DynamicOut(Shard), "plan": dg.Out(AugmentPlan)})
def plan_augmentation_shards(context: dg.OpExecutionContext, config: AugmentConfig, catalog_db: CatalogDatabase,
                             store: ObjectStoreResource):
    """Takes the partition's lease, finds the images whose variants are missing or stale and
    writes them as work lists."""
    name = context.partition_key
    store_ = store.get_store()
    with partition_lease(context, catalog_db, ASSET):
        folder = layout.augmented(name, spec_hash(config.spec, config.seed))
        remove_leftovers(store_, ASSET, name, context.run_id, [folder], store.max_concurrency)
        plan = plan_augmentation(store_, name, config.spec, config.seed, config.variants,
                                 plan_prefix(context, ASSET), config.shard_size, config.set_version)
    context.log.info(f"{plan.source_images:,} images in set {name!r} version {plan.set_version}; {plan.todo:,} to augment x{config.variants} "
                     f"in {len(plan.shards)} shard(s), spec {plan.digest}, into {store_.uri(plan.prefix)}")
    yield from shard_outputs(plan.shards)
    yield dg.Output(plan, output_name="plan")


@dg.op
def augment_shard_images(context: dg.OpExecutionContext, config: AugmentConfig, catalog_db: CatalogDatabase,
                         store: ObjectStoreResource, plan: AugmentPlan, shard: Shard) -> AugmentShardResult:
    """Augments one shard on every core of its step."""
    progress = Progress(f"augmented_set[{plan.name}] shard {shard.index}", shard.items, context.log.info,
                        every_items=1_000)
    with partition_lease(context, catalog_db, ASSET):
        result = augment_shard(store.get_store(), plan, shard, config.spec, config.seed, config.workers,
                               store.max_concurrency, progress.advance)
    progress.finish()
    return result


@dg.op
def write_augmented_manifest(context: dg.OpExecutionContext, config: AugmentConfig, catalog_db: CatalogDatabase,
                             store: ObjectStoreResource, plan: AugmentPlan,
                             shards: list[AugmentShardResult]) -> dg.Output[None]:
    """Writes the manifest once every shard is done, removes stale variants, moves LATEST, gives
    the partition's lease back."""
    store_ = store.get_store()
    started = time.monotonic()
    with partition_lease(context, catalog_db, ASSET, release=True):
        result = commit_augmentation(store_, plan, shards, store.max_concurrency)
    seconds = sum(s.seconds for s in result.shards)
    return dg.Output(None, metadata={
        "dagster/row_count": result.rows,
        "spec_hash": plan.digest,
        "spec": dg.MetadataValue.json({"spec": config.spec, "seed": config.seed, "variants": config.variants}),
        "source_images": plan.source_images,
        "set_version": plan.set_version,
        "set_version_digest": plan.set_digest,
        "augmented_now": plan.todo,
        "up_to_date": plan.source_images - plan.todo,
        "variants_written": plan.todo * plan.variants,
        "removed": result.removed,
        "bytes_written": dg.MetadataValue.int(sum(s.bytes_written for s in result.shards)),
        "rate_images_per_s": dg.MetadataValue.float(round(plan.todo / seconds, 1) if seconds else 0.0),
        **step_figures(plan, started, result.shards),
        "location": store_.uri(plan.prefix),
        "contact_sheet": dg.MetadataValue.md(
            f"Originals (left) and their variants.\n\n![contact sheet](data:image/png;base64,"
            f"{base64.b64encode(result.contact_sheet).decode()})\n\n"
            f"Stored at `{store_.uri(layout.augmented_contact_sheet(plan.name, plan.digest))}`"
        ),
    })


@dg.graph_asset(
    partitions_def=image_queries,
    group_name="image_sets",
    ins={"image_set": dg.AssetIn(dagster_type=dg.Nothing)},
    kinds={"s3", "parquet"},
    config=same_config_for(AugmentConfig, "plan_augmentation_shards", "augment_shard_images",
                           "write_augmented_manifest"),
    # Follows its image set: a new or changed set is augmented without anyone asking (under the
    # daemon; see sensors.fashion_automation).
    # ... once its inputs' blocking checks pass: a set whose manifest lies is not built on.
    automation_condition=dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed(),
)
def augmented_set(image_set):
    """``variants`` augmented copies of every image of the set, as
    ``image-sets/<name>/augmented/<spec-hash>/<id>_<k>.jpg`` plus ``manifest.parquet`` and a
    contact sheet. Incremental: a variant already there for an unchanged source image is kept.
    Split into shards of ``shard_size`` images, one step each."""
    shards, plan = plan_augmentation_shards(image_set=image_set)
    return write_augmented_manifest(plan, shards.map(lambda shard: augment_shard_images(plan, shard)).collect())


@dg.asset_check(asset=augmented_set, description="Augmented images = set size x variants, all in the store.")
def augmented_count_matches(context: dg.AssetCheckExecutionContext, store: ObjectStoreResource) -> dg.AssetCheckResult:
    name = context.partition_key
    store_ = store.get_store()
    digest = latest_digest(store_, name)
    prefix = layout.augmented(name, digest)
    manifest = read_augmented_manifest(store_, name, digest)
    set_size = read_manifest(store_, name, made_from(manifest.schema)).num_rows
    variants = len(set(manifest.column("variant").to_pylist())) if manifest.num_rows else 0
    stored = {obj.key for obj in store_.list(prefix) if obj.key.endswith(".jpg")}
    missing = [k for k in manifest.column("key").to_pylist() if k not in stored]
    return dg.AssetCheckResult(
        passed=manifest.num_rows == set_size * variants and not missing,
        metadata={"set_size": set_size, "variants": variants, "augmented": manifest.num_rows, "missing": len(missing)},
    )
