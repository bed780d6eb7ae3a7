"""Export an image set: run a query in the sandbox, copy the selected catalog images to
``image-sets/<name>/images/<id>.jpg`` and write ``image-sets/<name>/manifest.parquet``.

Incremental: an image already there with the catalog's MD5 is not copied again, and images no
longer selected are removed. Order matters so that a failed run never leaves a manifest that
lies: copy first (adds and overwrites only), then write the new manifest, then remove what is
no longer selected. If a run dies while copying, the previous manifest still describes objects
that are all there. Plain module: no Dagster.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from .catalog_db import product_images, products
from .parallel import bounded_map
from .queries import image_set_prefix
from .sql_sandbox import QueryStats, SqlRejected, SqlSandbox
from .storage import ObjectStore

PRODUCT_COLUMNS = [c.name for c in products.columns if c.name != "id"]
MANIFEST_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("key", pa.string()),  # where the image is in this set
        ("source_key", pa.string()),  # where it came from in the catalog
        ("md5", pa.string()),
        ("bytes", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("mode", pa.string()),
        ("format", pa.string()),
        *[(c, pa.int32() if c == "year" else pa.string()) for c in PRODUCT_COLUMNS],
    ]
)
LOOKUP_BATCH = 1_000  # ids per IN (...) lookup: well under SQLite's and PostgreSQL's parameter limits


def manifest_key(name: str) -> str:
    return image_set_prefix(name) + "manifest.parquet"


def set_image_key(name: str, product_id: int) -> str:
    return f"{image_set_prefix(name)}images/{product_id}.jpg"


@dataclass
class ExportResult:
    name: str
    columns: list[str] = field(default_factory=list)  # what the query returned
    selected: int = 0  # distinct ids the query returned
    exported: int = 0  # of those, with an image: the set's size
    copied: int = 0
    unchanged: int = 0
    removed: int = 0
    missing: int = 0  # selected ids without a catalog image
    missing_ids: list[int] = field(default_factory=list)  # the first 100 of them
    bytes_copied: int = 0
    bytes_total: int = 0
    seconds: float = 0.0
    query: QueryStats = field(default_factory=QueryStats)
    preview: list[dict] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.exported / self.seconds if self.seconds else 0.0


def _lookup(engine: sa.Engine, ids: list[int]) -> dict[int, dict]:
    """Catalog image + product columns for ``ids`` that have an image."""
    query = (
        sa.select(product_images, *[products.c[c] for c in PRODUCT_COLUMNS])
        .select_from(product_images.outerjoin(products, products.c.id == product_images.c.id))
        .where(product_images.c.id.in_(sa.bindparam("ids", expanding=True)))
    )
    found = {}
    with engine.connect() as conn:
        for start in range(0, len(ids), LOOKUP_BATCH):
            for row in conn.execute(query, {"ids": ids[start : start + LOOKUP_BATCH]}).mappings():
                found[row["id"]] = dict(row)
    return found


def _as_id(value: object) -> int:
    try:
        product_id = int(value)  # type: ignore[arg-type]
        if product_id == value or str(product_id) == str(value).strip():
            return product_id
    except (TypeError, ValueError):
        pass
    raise SqlRejected(f"the id column must hold product ids (integers); it returned {value!r}")


def export_image_set(
    name: str,
    sql: str,
    sandbox: SqlSandbox,
    store: ObjectStore,
    workers: int,
    on_progress: Callable[[int], None] = lambda n: None,
) -> ExportResult:
    result = ExportResult(name=name)
    started = time.monotonic()
    prefix = image_set_prefix(name)
    images_prefix = prefix + "images/"
    existing = {obj.key: obj.md5 for obj in store.list(images_prefix)}
    selected_ids: set[int] = set()

    def copy_one(item: dict) -> tuple[dict, bool]:
        if existing.get(item["key"]) == item["md5"]:
            return item, False
        store.copy(item["source_key"], item["key"])
        return item, True

    buffer = io.BytesIO()
    with pq.ParquetWriter(buffer, MANIFEST_SCHEMA, compression="zstd") as writer:
        for columns, rows in sandbox.stream(sql, result.query):
            result.columns = columns
            id_at = columns.index("id")
            ids = []
            for row in rows:
                product_id = _as_id(row[id_at])
                if product_id not in selected_ids:  # a query may return an id twice (joins)
                    selected_ids.add(product_id)
                    ids.append(product_id)
            found = _lookup(sandbox.engine, ids)
            items = []
            for product_id in ids:
                image = found.get(product_id)
                if image is None:
                    result.missing += 1
                    if len(result.missing_ids) < 100:
                        result.missing_ids.append(product_id)
                    continue
                item = {"id": product_id, "key": set_image_key(name, product_id), "source_key": image["key"]}
                item.update({c: image[c] for c in MANIFEST_SCHEMA.names if c not in item})
                items.append(item)
            for item, copied in bounded_map(copy_one, items, workers):
                if copied:
                    result.copied += 1
                    result.bytes_copied += item["bytes"]
                else:
                    result.unchanged += 1
                result.bytes_total += item["bytes"]
            result.exported += len(items)
            if len(result.preview) < 10:
                result.preview += items[: 10 - len(result.preview)]
            if items:
                writer.write_table(pa.Table.from_pylist(items, schema=MANIFEST_SCHEMA))
            on_progress(len(ids))
    result.selected = len(selected_ids)

    # The manifest goes in only once every image it lists is there...
    store.put_bytes(manifest_key(name), buffer.getvalue(), "application/vnd.apache.parquet")
    # ...and images no longer selected go only after it: a failure here leaves extra files, not lies.
    stale = [key for key in existing if _id_of(key, images_prefix) not in selected_ids]
    for _ in bounded_map(store.delete, stale, workers):
        result.removed += 1
    result.seconds = time.monotonic() - started
    return result


def _id_of(key: str, images_prefix: str) -> int | None:
    stem = key[len(images_prefix):].removesuffix(".jpg")
    return int(stem) if stem.isdigit() else None


def read_manifest(store: ObjectStore, name: str) -> pa.Table:
    return pq.read_table(io.BytesIO(store.get_bytes(manifest_key(name))))


def purge_image_set(store: ObjectStore, name: str, workers: int = 16) -> int:
    """Delete everything under ``image-sets/<name>/``; returns the number of objects removed."""
    keys: Iterable[str] = [obj.key for obj in store.list(image_set_prefix(name))]
    return sum(1 for _ in bounded_map(store.delete, keys, workers))
