"""Export an image set: run a query in the sandbox, put the selected catalog images in the
set's store of photos and commit the result as a set version (``versions``; keys:
``fashion_assets.layout``).

Incremental: a photo some version of the set already holds is not copied again, wherever it is
(the manifests say which key holds which id and MD5, the listing that it is still there as
recorded: ``holds_recorded``; nothing is read or hashed, and no store ETag is trusted to be an
MD5). A new photo goes to ``images/<id>.jpg`` unless a version names that key already, then to
``images/<id>-<md5>.jpg``: no object a version names is ever overwritten. Images no longer
selected stay while a kept version names them (``versions.collect`` removes the rest). Order
matters so that a failed run never leaves a version that lies: copy first, then commit the
version. If a run dies while copying, every version still describes objects that are all there.

The work comes in three parts so that a large set spreads over many steps (``core.shards``):
``plan_export`` runs the query and writes shards of work, ``export_shard`` puts one shard's
images in place, ``commit_export`` commits the version. Plain module: no Dagster.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
import sqlalchemy as sa

from .. import layout
from ..catalog.tables import product_images, products
from ..core.parallel import bounded_map
from ..core.parquet import concat_parquet, read_parquet
from ..core.progress import peak_rss_mb
from ..core.shards import Shard, ShardPlan, ShardStats, ShardWriter, in_plan_order
from ..core.storage import ObjectStore, holds_recorded, remove_prefix
from .sandbox import QueryStats, SqlSandbox, as_id
from .versions import SetVersion, commit_version, list_versions, read_version, resolve, stored_photos, upgrade

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


# A shard's work list: the manifest row plus the MD5 stored at its key now: the recorded MD5 when
# a version names the key and the listing shows the object as recorded (``holds_recorded``);
# None when it is not there or not known to be what was recorded (then it is copied).
WORK_SCHEMA = MANIFEST_SCHEMA.append(pa.field("stored_md5", pa.string()))


@dataclass(kw_only=True)
class ExportPlan(ShardPlan):
    """What the query selected, cut into shards of images to put in place."""

    sql: str
    columns: list[str] = field(default_factory=list)  # what the query returned
    selected: int = 0  # distinct ids the query returned
    exported: int = 0  # of those, with an image: the set's size
    missing: int = 0  # selected ids without a catalog image
    missing_ids: list[int] = field(default_factory=list)  # the first 100 of them
    stale: int = 0  # ids of the newest version no longer selected
    base: SetVersion | None = None  # the newest version when the plan was made
    query: QueryStats = field(default_factory=QueryStats)
    preview: list[dict] = field(default_factory=list)


@dataclass
class ExportShardResult(ShardStats):
    copied: int = 0
    unchanged: int = 0
    bytes_total: int = 0
    bytes_copied: int = 0


@dataclass
class ExportResult:
    plan: ExportPlan
    shards: list[ExportShardResult]
    version: SetVersion
    new_version: bool  # False: the content was the newest version's, and nothing was written

    def total(self, attribute: str) -> int:
        return sum(getattr(s, attribute) for s in self.shards)


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


def plan_export(
    name: str,
    sql: str,
    sandbox: SqlSandbox,
    store: ObjectStore,
    work_prefix: str,
    shard_size: int,
    on_progress: Callable[[int], None] = lambda n: None,
) -> ExportPlan:
    """Run the query (streamed), look up each selected image, and write the work lists.

    Holds the set's current keys and the selected ids in memory (about 0.4 KB an image,
    measured: docs/scaling.md; the previous manifest's keys, MD5s and sizes only while the
    listing is read), and at most one shard's rows. The sandbox's limits bound that: more
    distinct ids than ``max_ids``, or more growth than ``max_memory_mb``, stops the plan with
    :class:`~.sandbox.SelectionTooLarge` after the chunk that crossed the line, before its
    shards are committed to anything (the work lists are under the run's work prefix).
    """
    plan = ExportPlan(name=name, sql=sql, work_prefix=work_prefix)
    started = time.monotonic()
    guard = sandbox.guard()
    upgrade(store, name)  # a set from before versions becomes version 1 (no photo copied)
    versions = list_versions(store, name)
    plan.base = versions[-1] if versions else None
    base_ids = set(read_version(store, plan.base, columns=["id"])["id"].to_pylist()) if plan.base else set()
    # Which photo each key holds, from every version's manifest; kept only where the listing
    # shows the object as recorded. Nothing is read or hashed in the store.
    named = stored_photos(store, name)
    held: dict[tuple[int, str], str] = {}
    for obj in store.list(layout.set_images(name)):
        if obj.key in named:
            product_id, md5, size = named[obj.key]
            if holds_recorded(obj, md5, size):
                held[(product_id, md5)] = obj.key
    selected_ids: set[int] = set()
    writer = ShardWriter(store, work_prefix, WORK_SCHEMA, shard_size)
    for columns, rows in sandbox.stream(sql, plan.query):
        plan.columns = columns
        id_at = sandbox.id_index(columns)
        ids = []
        for row in rows:
            product_id = as_id(row[id_at])
            if product_id not in selected_ids:  # a query may return an id twice (joins)
                selected_ids.add(product_id)
                ids.append(product_id)
        guard.check(len(selected_ids))
        found = _lookup(sandbox.engine, ids)
        items = []
        for product_id in ids:
            image = found.get(product_id)
            if image is None:
                plan.missing += 1
                if len(plan.missing_ids) < 100:
                    plan.missing_ids.append(product_id)
                continue
            key = held.get((product_id, image["md5"]))
            if key is None:
                key = layout.set_image(name, product_id)
                # A version holds another photo there: never overwrite it. (The same photo,
                # damaged behind the set's back, is put back where its versions expect it.)
                if key in named and named[key][:2] != (product_id, image["md5"]):
                    key = layout.set_image_version(name, product_id, image["md5"])
            item = {"id": product_id, "key": key, "source_key": image["key"]}
            item.update({c: image[c] for c in MANIFEST_SCHEMA.names if c not in item})
            item["stored_md5"] = image["md5"] if held.get((product_id, image["md5"])) == key else None
            items.append(item)
        writer.add(items)
        plan.exported += len(items)
        if len(plan.preview) < 10:
            plan.preview += items[: 10 - len(plan.preview)]
        on_progress(len(ids))
    plan.shards = writer.close()
    plan.selected = len(selected_ids)
    plan.stale = len(base_ids - selected_ids)
    plan.seconds = time.monotonic() - started
    plan.peak_rss_mb = peak_rss_mb()
    return plan


def export_shard(
    store: ObjectStore, shard: Shard, workers: int, on_progress: Callable[[int], None] = lambda n: None
) -> ExportShardResult:
    """Put one shard's images in place (server-side copies on S3, hard links locally), skipping
    those already there with the catalog's MD5 (``stored_md5``, decided by the plan from the
    previous manifest and the listing). The work list is the shard's part of the
    manifest already: nothing else to write."""
    result = ExportShardResult(index=shard.index)
    started = time.monotonic()
    items = read_parquet(store, shard.key).to_pylist()

    def copy_one(item: dict) -> tuple[dict, bool]:
        if item["stored_md5"] == item["md5"]:
            return item, False
        try:
            store.copy(item["source_key"], item["key"])
        except Exception as exc:  # S3 says "NoSuchKey" without the key: name it
            raise RuntimeError(f"copying {store.uri(item['source_key'])} to {store.uri(item['key'])}: {exc}") from exc
        return item, True

    for item, copied in bounded_map(copy_one, items, workers):
        if copied:
            result.copied += 1
            result.bytes_copied += item["bytes"]
        else:
            result.unchanged += 1
        result.bytes_total += item["bytes"]
        on_progress(1)
    result.images = len(items)
    result.seconds = time.monotonic() - started
    result.peak_rss_mb = peak_rss_mb()
    return result


def commit_export(store: ObjectStore, plan: ExportPlan, shards: list[ExportShardResult], workers: int,
                  record: dict | None = None) -> ExportResult:
    """Commit the set version once every shard's images are in place (a new one only when the
    content differs from the newest: ``versions.commit_version``), then remove the work lists:
    a failure at any point leaves versions that tell the truth. ``record`` adds to the
    version's ``version.json`` (SQL hash, catalog state)."""
    done = in_plan_order(plan.shards, shards, f"image set {plan.name!r}")
    manifest = concat_parquet(store, [s.key for s in plan.shards], MANIFEST_SCHEMA)
    version, created = commit_version(store, plan.name, manifest, record or {})
    remove_prefix(store, plan.work_prefix, workers)
    return ExportResult(plan=plan, shards=done, version=version, new_version=created)


def read_manifest(store: ObjectStore, name: str, version: str | int | None = None) -> pa.Table:
    """The manifest of set ``name`` at ``version`` (its number or digest; None: the newest)."""
    return read_version(store, resolve(store, name, version))


def purge_image_set(store: ObjectStore, name: str, workers: int = 16) -> int:
    """Delete everything under ``image-sets/<name>/``, temporary files that killed writes or
    copies left on a local store included (listings do not show them); returns the number of
    objects and temporary files removed."""
    removed = remove_prefix(store, layout.image_set(name), workers)
    return removed + store.remove_temporary(layout.image_set(name), recursive=True)
