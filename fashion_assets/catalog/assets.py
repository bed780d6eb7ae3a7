"""Catalog assets: ``styles.csv`` -> table ``products``; ``images/`` -> store + table ``product_images``.

Thin wiring: parsing lives in ``styles_csv``, image checks in ``images``, the tables in
``tables``, store keys in ``fashion_assets.layout``.
"""

import base64
import time
from collections import Counter
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from .. import layout
from ..core.database import replace_rows
from ..core.parallel import bounded_map
from ..core.progress import Progress
from ..core.reporting import csv_bytes, markdown_table
from ..core.storage import CONTENT_TYPES, StoredObject, holds_recorded
from ..resources import CatalogDatabase, CatalogSource, ObjectStoreResource
from .duplicates import Product, group_sizes, near_duplicate_groups
from .images import ImageInfo, ImageRejected, RejectedImage, find_images, inspect_image, thumbnail_sheet
from .styles_csv import ParseStats, parse_styles
from .tables import product_images as images_table
from .tables import products as products_table


def _column_schema(table: sa.Table) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[dg.TableColumn(c.name, str(c.type).lower(), description=c.comment) for c in table.columns]
    )


@dg.asset(
    group_name="catalog",
    kinds={"csv", "sql"},
    check_specs=[
        dg.AssetCheckSpec("no_rejected_rows", asset="products", description="Every CSV record became a row."),
    ],
    metadata={"dagster/column_schema": _column_schema(products_table), "table": "products"},
)
def products(
    context: dg.AssetExecutionContext,
    catalog_source: CatalogSource,
    catalog_db: CatalogDatabase,
    store: ObjectStoreResource,
) -> dg.MaterializeResult:
    """The product catalog as a SQL table, one row per product of ``styles.csv``.

    Rows that cannot be kept are listed with line number and reason in the metadata and in
    the store (``layout.PRODUCTS_REJECTED_REPORT``). The table is replaced in one transaction: a
    failed run leaves the previous catalog in place.
    """
    path = catalog_source.styles_csv()
    context.log.info(f"Reading {path} into {catalog_db.display_url} table products")
    stats = ParseStats()
    progress = Progress("products", None, context.log.info, every_items=10_000)
    with catalog_db.engine.begin() as conn:
        written = replace_rows(conn, products_table, parse_styles(path, stats), on_chunk=progress.advance)
        by_category = conn.execute(
            sa.select(products_table.c.master_category, sa.func.count())
            .group_by(products_table.c.master_category)
            .order_by(sa.func.count().desc())
        ).all()
        preview = conn.execute(sa.select(products_table).order_by(products_table.c.id).limit(10)).all()
    progress.finish()

    rejected_rows = [(r.line, r.reason, r.raw) for r in stats.rejected]
    store_ = store.get_store()
    report = csv_bytes(["line", "reason", "record"], rejected_rows)
    store_.put_bytes(layout.PRODUCTS_REJECTED_REPORT, report, "text/csv")

    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": written,
            "source": dg.MetadataValue.path(str(path)),
            "database": catalog_db.display_url,
            "records_read": stats.records,
            "rows_rejected": len(stats.rejected),
            "names_rejoined": dg.MetadataValue.int(stats.names_rejoined),
            "blank_lines": stats.blank_lines,
            "years_set_null": len(stats.notes),
            "rate_rows_per_s": dg.MetadataValue.float(round(progress.rate, 1)),
            "rejected": dg.MetadataValue.md(markdown_table(["line", "reason", "record"], rejected_rows)),
            "rejected_report": store_.uri(layout.PRODUCTS_REJECTED_REPORT),
            "notes": dg.MetadataValue.md(markdown_table(["line", "id", "note"], [(n.line, n.id, n.message) for n in stats.notes])),
            "by_master_category": dg.MetadataValue.md(markdown_table(["master_category", "products"], by_category)),
            "preview": dg.MetadataValue.md(markdown_table(list(products_table.columns.keys()), preview, limit=10)),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="no_rejected_rows",
                passed=not stats.rejected,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"rows_rejected": len(stats.rejected)},
            )
        ],
    )


class ProductImagesConfig(dg.Config):
    workers: int | None = None
    """Threads that read, check and upload images; default: the store's max_concurrency."""


def _recorded_images(catalog_db: CatalogDatabase) -> dict[str, tuple[str, int]]:
    """``{key: (md5, bytes)}`` of the images the previous run stored (table ``product_images``)."""
    with catalog_db.engine.connect() as conn:
        rows = conn.execute(sa.select(images_table.c.key, images_table.c.md5, images_table.c.bytes))
        return {key: (md5, size) for key, md5, size in rows}


def _near_duplicate_groups(catalog_db: CatalogDatabase, stored: list[ImageInfo]) -> dict[int, int]:
    """Each image's group of near-duplicates (catalog.duplicates), from its hash and its product."""
    columns = [products_table.c[c] for c in ("id", "product_display_name", "base_colour", "article_type")]
    with catalog_db.engine.connect() as conn:
        described = {row[0]: row[1:] for row in conn.execute(sa.select(*columns))}
    return near_duplicate_groups([Product(i.id, i.phash, *described.get(i.id, (None, None, None))) for i in stored])


def _groups_metadata(groups: dict[int, int], files: dict[int, Path], shown: int = 6) -> dict:
    largest = group_sizes(groups)
    sheet = thumbnail_sheet([[(str(pid), files[pid].read_bytes()) for pid in members[:8]]
                             for _, members in largest[:shown]], thumb=80) if largest else b""
    return {
        "near_duplicate_groups": len(largest),
        "products_in_groups": sum(len(m) for _, m in largest),
        "largest_groups": dg.MetadataValue.md(markdown_table(
            ["group", "products", "first ids"], [(g, len(m), ", ".join(map(str, m[:10]))) for g, m in largest])),
        "largest_groups_thumbnails": dg.MetadataValue.md(
            f"The {min(shown, len(largest))} largest groups of near-duplicates (up to 8 each), kept on one side of "
            f"the classifier's validation split.\n\n![groups](data:image/png;base64,{base64.b64encode(sheet).decode()})"
            if largest else "_none_"),
    }


def _exact_duplicates_check(stored: list[ImageInfo]) -> dg.AssetCheckResult:
    by_md5: dict[str, list[int]] = {}
    for info in stored:
        by_md5.setdefault(info.md5, []).append(info.id)
    duplicates = sorted((ids for ids in by_md5.values() if len(ids) > 1), key=lambda ids: (-len(ids), ids[0]))
    return dg.AssetCheckResult(
        check_name="no_exact_duplicates",
        passed=not duplicates,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"products_sharing_a_photo": sum(len(ids) for ids in duplicates), "photos": len(duplicates),
                  "examples": dg.MetadataValue.md(markdown_table(["products with the same bytes"],
                                                                 [[", ".join(map(str, ids))] for ids in duplicates]))},
    )


def _ingest_one(
    item: tuple[int, Path], recorded: dict[str, tuple[str, int]], listed: dict[str, StoredObject], store
) -> tuple[ImageInfo | RejectedImage, bool]:
    product_id, path = item
    try:
        data = path.read_bytes()
        info = inspect_image(product_id, data)
    except ImageRejected as exc:
        return RejectedImage(path.name, str(exc)), False
    except OSError as exc:
        return RejectedImage(path.name, f"cannot read file: {exc.strerror or exc}"), False
    md5, size = recorded.get(info.key, (None, None))
    if md5 == info.md5 and holds_recorded(listed.get(info.key), md5, size):
        return info, False  # already stored with the same bytes: a re-run moves nothing
    store.put_bytes(info.key, data, CONTENT_TYPES.get(info.format))
    return info, True


@dg.asset(
    group_name="catalog",
    deps=[products],
    kinds={"s3", "sql"},
    check_specs=[
        dg.AssetCheckSpec("all_images_readable", asset="product_images", description="No image file was rejected."),
        dg.AssetCheckSpec("every_image_has_product", asset="product_images", description="Each image's id is in products."),
        dg.AssetCheckSpec("no_exact_duplicates", asset="product_images",
                          description="No two products have byte-identical photos."),
    ],
    metadata={"dagster/column_schema": _column_schema(images_table), "table": "product_images"},
)
def product_images(
    context: dg.AssetExecutionContext,
    config: ProductImagesConfig,
    catalog_source: CatalogSource,
    catalog_db: CatalogDatabase,
    store: ObjectStoreResource,
) -> dg.MaterializeResult:
    """Every readable product photo, stored as ``catalog/images/<id>.jpg`` and described in table
    ``product_images`` (size, mode, format, bytes, md5).

    An image is not uploaded again when it is unchanged: the previous run recorded it in the
    table with the MD5 the file has now, and the store lists the object with the recorded size
    (and, where the store knows an object's MD5 cheaply, a plain S3 ETag, with that MD5). The
    store's ETags are never taken for MD5s on their own (a multipart or SSE-KMS ETag is not
    one), and nothing in the store is read or hashed.

    Unreadable files (empty, truncated, not an image, too many pixels) are skipped and listed;
    images in other modes or formats (grayscale, CMYK, a PNG named .jpg) are stored as they are
    and recorded as such.
    """
    folder = catalog_source.images_dir()
    store_ = store.get_store()
    started = time.monotonic()
    files, rejected = find_images(folder)
    # The state: what the previous run recorded (read before the table is replaced below),
    # and what the store holds now (sizes; MD5s only where they come cheaply).
    recorded = _recorded_images(catalog_db)
    listed = {obj.key: obj for obj in store_.list(layout.CATALOG_IMAGES)}
    context.log.info(f"{len(files):,} image files in {folder}; {len(listed):,} objects already in {store_.url}, "
                     f"{len(recorded):,} recorded in table product_images")

    workers = config.workers or store.max_concurrency
    progress = Progress("product_images", len(files), context.log.info)
    stored: list[ImageInfo] = []
    uploaded = uploaded_bytes = 0
    for result, did_upload in bounded_map(lambda item: _ingest_one(item, recorded, listed, store_), files, workers):
        if isinstance(result, RejectedImage):
            rejected.append(result)
        else:
            stored.append(result)
            if did_upload:
                uploaded += 1
                uploaded_bytes += result.bytes
        progress.advance()
    progress.finish()
    stored.sort(key=lambda info: info.id)
    rejected.sort(key=lambda r: r.file)

    groups = _near_duplicate_groups(catalog_db, stored)
    rows = [{**vars(info), "near_duplicate_group": groups[info.id]} for info in stored]
    with catalog_db.engine.begin() as conn:
        replace_rows(conn, images_table, rows)
        without_product = conn.execute(
            sa.select(images_table.c.id)
            .where(~images_table.c.id.in_(sa.select(products_table.c.id)))
            .order_by(images_table.c.id)
        ).scalars().all()
        products_without_image = conn.execute(
            sa.select(sa.func.count()).where(~products_table.c.id.in_(sa.select(images_table.c.id)))
        ).scalar_one()
    elapsed = time.monotonic() - started

    rejected_rows = [(r.file, r.reason) for r in rejected]
    store_.put_bytes(layout.IMAGES_REJECTED_REPORT, csv_bytes(["file", "reason"], rejected_rows), "text/csv")
    modes = Counter(f"{i.format}/{i.mode}" for i in stored)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(stored),
            "source": dg.MetadataValue.path(str(folder)),
            "store": store_.url,
            "database": catalog_db.display_url,
            "images_stored": len(stored),
            "images_uploaded": uploaded,
            "images_unchanged": len(stored) - uploaded,
            "images_skipped": len(rejected),
            "images_without_product": len(without_product),
            "products_without_image": products_without_image,
            "bytes_stored": dg.MetadataValue.int(sum(i.bytes for i in stored)),
            "bytes_uploaded": dg.MetadataValue.int(uploaded_bytes),
            "rate_images_per_s": dg.MetadataValue.float(round(len(files) / elapsed, 1) if elapsed else 0.0),
            "workers": workers,
            "skipped": dg.MetadataValue.md(markdown_table(["file", "reason"], rejected_rows)),
            "skipped_report": store_.uri(layout.IMAGES_REJECTED_REPORT),
            "formats": dg.MetadataValue.md(markdown_table(["format/mode", "images"], modes.most_common())),
            **_groups_metadata(groups, dict(files)),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="all_images_readable",
                passed=not rejected,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"images_skipped": len(rejected)},
            ),
            _exact_duplicates_check(stored),
            dg.AssetCheckResult(
                check_name="every_image_has_product",
                passed=not without_product,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"images_without_product": len(without_product), "first_ids": str(without_product[:20])},
            ),
        ],
    )
