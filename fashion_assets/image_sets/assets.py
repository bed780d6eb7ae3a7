"""``image_set``: one dynamic partition per query in ``queries/<name>.sql``.

Thin wiring around ``export`` (plan, shards, commit); the query runs in ``sandbox``.
"""

import base64
import collections
import time

import dagster as dg
from pydantic import Field

from .. import layout
from ..core.placement import partition_lease, plan_prefix, same_config_for, shard_outputs, step_figures
from ..core.progress import Progress
from ..core.reporting import drawn, markdown_table
from ..core.shards import Shard, remove_leftovers
from ..core.storage import md5_hex
from ..catalog.tables import fingerprint
from ..labelling.pictures import set_contact_sheet
from ..resources import CatalogDatabase, ObjectStoreResource
from .export import ExportPlan, ExportShardResult, commit_export, export_shard, plan_export, read_manifest
from .registry import QueryRegistry
from .sandbox import DEFAULT_TIMEOUT_S, SqlSandbox
from .versions import DEFAULT_KEEP, WRITER, collect

image_queries = dg.DynamicPartitionsDefinition(name="image_queries")
ASSET = WRITER  # "image_set": the versions module knows whose work lists to respect
SQL_MD5 = "sql_md5"

# Sets follow the catalog: when products or product_images are re-ingested, every set is
# re-materialised (incrementally: only images whose selection or bytes changed move). New
# partitions are not this condition's business: image_query_sensor requests their first run.
FOLLOWS_THE_CATALOG = (
    dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.any_deps_missing()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("follows the catalog")


class ImageSetConfig(dg.Config):
    query_timeout_s: float = DEFAULT_TIMEOUT_S
    """Stop the query after this many seconds."""
    workers: int | None = None
    """Parallel copies per shard; default: the store's max_concurrency."""
    shard_size: int = Field(default=50_000, ge=1)
    """Images per shard: each shard is one step (one pod on Kubernetes)."""
    keep_versions: int = Field(default=DEFAULT_KEEP, ge=1)
    """After a new version, keep this many of the newest (and every version a model names);
    the photos only dropped versions held are deleted (``fashion-assets set gc`` does the same)."""


@dg.op(
    ins={"products": dg.In(dg.Nothing), "product_images": dg.In(dg.Nothing)},  # the catalog comes first
    out={"shards": dg.DynamicOut(Shard), "plan": dg.Out(ExportPlan)},
)
def select_images(context: dg.OpExecutionContext, config: ImageSetConfig, catalog_db: CatalogDatabase,
                  store: ObjectStoreResource):
    """Takes the partition's lease, runs the query in the sandbox (read-only, with a timeout,
    streamed) and writes the work lists."""
    name = context.partition_key
    store_ = store.get_store()
    with partition_lease(context, catalog_db, ASSET):
        removed = remove_leftovers(store_, ASSET, name, context.run_id, [layout.set_images(name)],
                                   store.max_concurrency)
        if removed:
            context.log.info(f"Removed {removed:,} work lists and temporary files that earlier, killed runs left")
        sql = QueryRegistry(store_).get(name)
        context.log.info(f"Query {name!r}:\n{sql}")
        sandbox = SqlSandbox(catalog_db.query_engine, timeout_s=config.query_timeout_s)
        progress = Progress(f"image_set[{name}] ids", None, context.log.info, every_items=50_000)
        plan = plan_export(name, sql, sandbox, store_, plan_prefix(context, ASSET), config.shard_size,
                           on_progress=progress.advance)
        progress.finish()
    context.log.info(f"{plan.selected:,} ids selected, {plan.exported:,} with an image, in "
                     f"{len(plan.shards)} shard(s) of up to {config.shard_size:,}; {plan.missing:,} without an image")
    yield from shard_outputs(plan.shards)
    yield dg.Output(plan, output_name="plan")


@dg.op
def copy_image_shard(context: dg.OpExecutionContext, config: ImageSetConfig, catalog_db: CatalogDatabase,
                     store: ObjectStoreResource, shard: Shard) -> ExportShardResult:
    """Copies one shard's images into the set: server-side on S3, hard links locally."""
    progress = Progress(f"image_set[{context.partition_key}] shard {shard.index}", shard.items, context.log.info)
    with partition_lease(context, catalog_db, ASSET):
        result = export_shard(store.get_store(), shard, config.workers or store.max_concurrency, progress.advance)
    progress.finish()
    return result


@dg.op
def write_image_manifest(context: dg.OpExecutionContext, config: ImageSetConfig, catalog_db: CatalogDatabase,
                         store: ObjectStoreResource, plan: ExportPlan,
                         shards: list[ExportShardResult]) -> dg.Output[None]:
    """Commits the set version once every shard is in place (a new one only for new content),
    collects the photos no kept version names, then gives the partition's lease back."""
    store_ = store.get_store()
    started = time.monotonic()
    with catalog_db.engine.connect() as conn:
        catalog_state = fingerprint(conn)
    record = {"sql_md5": md5_hex(plan.sql.encode("utf-8")), "run_id": context.run_id,
              "catalog": dict(zip(["images", "max_id", "id_sum", "bytes_sum", "hashed"], catalog_state))}
    with partition_lease(context, catalog_db, ASSET, release=True):
        result = commit_export(store_, plan, shards, config.workers or store.max_concurrency, record)
        collected = (collect(store_, plan.name, config.keep_versions, workers=config.workers or store.max_concurrency)
                     if result.new_version else None)
    copied, unchanged = result.total("copied"), result.total("unchanged")
    version = result.version
    context.log.info(f"{plan.exported:,} images in the set: {copied:,} copied, {unchanged:,} unchanged, "
                     f"{plan.stale:,} no longer selected, {plan.missing:,} selected ids without an image; "
                     + (f"new version {version.seq} ({version.digest})" if result.new_version
                        else f"same content as version {version.seq} ({version.digest}): no new version"))
    if collected and (collected.dropped or collected.deleted):
        context.log.info(f"Kept versions {collected.kept}, dropped {collected.dropped}; deleted "
                         f"{collected.deleted:,} photos ({collected.deleted_bytes:,} bytes) no kept version names")
    seconds = plan.seconds + sum(s.seconds for s in result.shards)
    sheet, sheet_error = drawn(context.log.warning, "contact sheet", set_contact_sheet, store_, plan.name,
                               workers=config.workers or store.max_concurrency, version=version.digest)
    preview_columns = ["id", "article_type", "base_colour", "gender", "product_display_name", "key"]
    return dg.Output(None, data_version=dg.DataVersion(version.digest), metadata={
        "version": version.seq,
        "version_digest": version.digest,
        "new_version": result.new_version,
        "versions_deleted": len(collected.dropped) if collected else 0,
        "photos_deleted": collected.deleted if collected else 0,
        "sql": dg.MetadataValue.md(f"```sql\n{plan.sql.strip()}\n```"),
        # What the sensor compares a query file with (see sensors.py): the MD5 of the SQL as stored.
        SQL_MD5: md5_hex(plan.sql.encode("utf-8")),
        "dagster/row_count": plan.exported,
        "selected": plan.selected,
        "copied": copied,
        "unchanged": unchanged,
        "removed": plan.stale,  # ids of the previous version no longer selected
        "missing": plan.missing,
        "missing_ids": dg.MetadataValue.text(", ".join(map(str, plan.missing_ids)) or "none"),
        "bytes": dg.MetadataValue.int(result.total("bytes_total")),
        "bytes_copied": dg.MetadataValue.int(result.total("bytes_copied")),
        # Images per second of step time (query + shards); with shards in parallel the wall
        # clock is shorter.
        "rate_images_per_s": dg.MetadataValue.float(round(plan.exported / seconds, 1) if seconds else 0.0),
        "query_seconds": dg.MetadataValue.float(round(plan.query.seconds, 3)),
        "query_chunks": plan.query.chunks,
        "query_columns": ", ".join(plan.columns),
        **step_figures(plan, started, result.shards),
        "manifest": store_.uri(layout.manifest(plan.name)),  # the newest version's, copied
        "version_manifest": store_.uri(version.manifest_key),
        "preview": dg.MetadataValue.md(
            markdown_table(preview_columns, [[row.get(c) for c in preview_columns] for row in plan.preview])
        ),
        "contact_sheet": dg.MetadataValue.md(
            f"{sheet.shown:,} of {sheet.total:,} images (lowest ids first), captioned with their product id."
            f"\n\n![contact sheet](data:image/png;base64,{base64.b64encode(sheet.png).decode()})\n\n"
            f"Stored at `{sheet.uri}`" if sheet else sheet_error or "_an empty set: no images_"),
    })


@dg.graph_asset(
    partitions_def=image_queries,
    group_name="image_sets",
    ins={"products": dg.AssetIn(dagster_type=dg.Nothing), "product_images": dg.AssetIn(dagster_type=dg.Nothing)},
    kinds={"s3", "parquet"},
    config=same_config_for(ImageSetConfig, "select_images", "copy_image_shard", "write_image_manifest"),
    automation_condition=FOLLOWS_THE_CATALOG,
)
def image_set(products, product_images):
    """The images a query selects, as an immutable set version: photos copied once to
    ``image-sets/<name>/images/``, the version's manifest (id, key, md5, product columns) under
    ``image-sets/<name>/versions/<seq>-<digest>/``, and a copy of it at
    ``image-sets/<name>/manifest.parquet``.

    The query is ``queries/<name>.sql`` in the store (``fashion-assets query add``). It runs
    read-only with a timeout and is streamed in chunks; the copying is split into shards of
    ``shard_size`` images, one step each. Re-materialising copies only photos no version holds;
    the same content makes no new version, so the ``DataVersion`` (the version's digest), and
    with it the staleness of what reads the set, follows content. The newest ``keep_versions``
    and every version a model names are kept; selected ids without an image are listed.
    """
    shards, plan = select_images(products=products, product_images=product_images)
    return write_image_manifest(plan, shards.map(copy_image_shard).collect())


# Blocking: a set whose manifest lies is not augmented or predicted in the same run, and
# declarative automation waits for a passing check (all_deps_blocking_checks_passed).
@dg.asset_check(asset=image_set, blocking=True,
                description="Every image the manifest lists is in the store, with its size (and its MD5 where "
                            "the store reports one).")
def image_set_matches_manifest(context: dg.AssetCheckExecutionContext, store: ObjectStoreResource) -> dg.AssetCheckResult:
    """Every image the manifest lists is in the store with the manifest's size (``bytes``), and
    with its MD5 where the store knows an object's MD5 without reading it (a plain S3 ETag; not
    a local folder, a multipart or an SSE-KMS object). Nothing is read or hashed: one listing
    per set. Metadata: ``images_checked``, the counts ``missing``, ``wrong_size`` and
    ``md5_differs`` (0 when none), ``md5_verified`` (images whose MD5 the store could confirm)
    and the first problems."""
    name = context.partition_key if context.has_partition_key else None
    store_ = store.get_store()
    names = [name] if name else [n for n in QueryRegistry(store_).checksums() if store_.exists(layout.manifest(n))]
    problems: collections.Counter = collections.Counter()
    checked = verified = 0
    examples = []
    for set_name in names:
        manifest = read_manifest(store_, set_name).select(["key", "md5", "bytes"]).to_pylist()
        stored = {obj.key: obj for obj in store_.list(layout.set_images(set_name))}
        for row in manifest:
            checked += 1
            obj = stored.get(row["key"])
            if obj is None:
                problem, detail = "missing", "missing"
            elif obj.size != row["bytes"]:
                problem, detail = "wrong size", f"wrong size: {obj.size:,} bytes, not {row['bytes']:,}"
            elif obj.md5 is not None and obj.md5 != row["md5"]:
                problem, detail = "md5 differs", "md5 differs"
            else:
                verified += obj.md5 is not None
                continue
            problems[problem] += 1
            examples.append((row["key"], detail))
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "images_checked": checked,
            "problems": dg.MetadataValue.md(markdown_table(["key", "problem"], examples)),
            **{k.replace(" ", "_"): problems[k] for k in ("missing", "wrong size", "md5 differs")},
            "md5_verified": verified,
        },
    )
