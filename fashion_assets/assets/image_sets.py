"""``image_set``: one dynamic partition per query in ``queries/<name>.sql``.

Thin wiring around ``image_export.export_image_set``; the query runs in ``sql_sandbox``.
"""

import collections

import dagster as dg

from ..image_export import export_image_set, manifest_key, read_manifest
from ..progress import Progress
from ..queries import QueryRegistry
from ..reporting import markdown_table
from ..resources import CatalogDatabase, ObjectStoreResource
from ..sql_sandbox import DEFAULT_TIMEOUT_S, SqlSandbox
from .catalog import product_images, products

image_queries = dg.DynamicPartitionsDefinition(name="image_queries")


class ImageSetConfig(dg.Config):
    query_timeout_s: float = DEFAULT_TIMEOUT_S
    """Stop the query after this many seconds."""
    workers: int | None = None
    """Parallel copies; default: the store's max_concurrency."""


@dg.asset(
    partitions_def=image_queries,
    group_name="image_sets",
    deps=[products, product_images],
    kinds={"s3", "parquet"},
)
def image_set(
    context: dg.AssetExecutionContext,
    config: ImageSetConfig,
    catalog_db: CatalogDatabase,
    store: ObjectStoreResource,
) -> dg.MaterializeResult:
    """The images a query selects, copied to ``image-sets/<name>/images/<id>.jpg``, with
    ``image-sets/<name>/manifest.parquet`` (id, key, md5, product columns) written last.

    The query is ``queries/<name>.sql`` in the store (``fashion-assets query add``). It runs
    read-only with a timeout and is streamed in chunks. Re-materialising copies only what
    changed and removes images no longer selected; selected ids without an image are listed.
    """
    name = context.partition_key
    store_ = store.get_store()
    sql = QueryRegistry(store_).get(name)
    sandbox = SqlSandbox(catalog_db.engine, timeout_s=config.query_timeout_s)
    workers = config.workers or store.max_concurrency
    context.log.info(f"Query {name!r}:\n{sql}")

    progress = Progress(f"image_set[{name}] ids", None, context.log.info, every_items=5_000)
    result = export_image_set(name, sql, sandbox, store_, workers, on_progress=progress.advance)
    progress.finish()
    context.log.info(
        f"{result.exported:,} images in the set: {result.copied:,} copied, {result.unchanged:,} unchanged, "
        f"{result.removed:,} removed, {result.missing:,} selected ids without an image"
    )
    preview_columns = ["id", "article_type", "base_colour", "gender", "product_display_name", "key"]
    return dg.MaterializeResult(
        metadata={
            "sql": dg.MetadataValue.md(f"```sql\n{sql.strip()}\n```"),
            "dagster/row_count": result.exported,
            "selected": result.selected,
            "copied": result.copied,
            "unchanged": result.unchanged,
            "removed": result.removed,
            "missing": result.missing,
            "missing_ids": dg.MetadataValue.text(", ".join(map(str, result.missing_ids)) or "none"),
            "bytes": dg.MetadataValue.int(result.bytes_total),
            "bytes_copied": dg.MetadataValue.int(result.bytes_copied),
            "rate_images_per_s": dg.MetadataValue.float(round(result.rate, 1)),
            "query_seconds": dg.MetadataValue.float(round(result.query.seconds, 3)),
            "query_chunks": result.query.chunks,
            "query_columns": ", ".join(result.columns),
            "manifest": store_.uri(manifest_key(name)),
            "preview": dg.MetadataValue.md(
                markdown_table(preview_columns, [[row.get(c) for c in preview_columns] for row in result.preview])
            ),
        }
    )


@dg.asset_check(asset=image_set, description="Every image the manifest lists is in the store with its MD5.")
def image_set_matches_manifest(context: dg.AssetCheckExecutionContext, store: ObjectStoreResource) -> dg.AssetCheckResult:
    name = context.partition_key if context.has_partition_key else None
    store_ = store.get_store()
    names = [name] if name else [n for n in QueryRegistry(store_).checksums() if store_.exists(manifest_key(n))]
    problems: collections.Counter = collections.Counter()
    checked = 0
    examples = []
    for set_name in names:
        manifest = read_manifest(store_, set_name).select(["key", "md5"]).to_pylist()
        stored = {obj.key: obj.md5 for obj in store_.list(f"image-sets/{set_name}/images/")}
        for row in manifest:
            checked += 1
            if row["key"] not in stored:
                problems["missing"] += 1
                examples.append((row["key"], "missing"))
            elif stored[row["key"]] not in (None, row["md5"]):
                problems["md5 differs"] += 1
                examples.append((row["key"], "md5 differs"))
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "images_checked": checked,
            "problems": dg.MetadataValue.md(markdown_table(["key", "problem"], examples)),
            **{k.replace(" ", "_"): v for k, v in problems.items()},
        },
    )
