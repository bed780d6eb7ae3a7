"""Augmented copies of an image set in the store, in three parts like ``image_sets.export``:
``plan_augmentation`` finds what needs (re)augmenting and writes it as shards of work,
``augment_shard`` augments one shard on every core, ``commit_augmentation`` writes the manifest,
removes stale variants, moves the ``LATEST`` pointer and draws the contact sheet.

Layout (``fashion_assets.layout``): ``image-sets/<name>/augmented/<spec-hash>/<id>_<k>.jpg`` +
``manifest.parquet`` + ``contact_sheet.png``, and ``image-sets/<name>/augmented/LATEST`` holding
the newest spec hash. Plain module: no Dagster.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .. import layout
from ..core.parallel import chunked_map
from ..core.parquet import read_parquet, write_parquet
from ..core.progress import peak_rss_mb
from ..core.shards import Shard, ShardPlan, ShardStats, ShardWriter, delete_listed, in_plan_order, write_keys
from ..core.storage import ObjectStore, remove_prefix
from ..image_sets.export import read_manifest
from ..image_sets.versions import read_version, resolve, stamp
from .augment import augment_in_parallel, contact_sheet, spec_hash

AUGMENTED_SCHEMA = pa.schema([
    ("id", pa.int64()), ("variant", pa.int32()), ("key", pa.string()), ("source_key", pa.string()),
    ("source_md5", pa.string()),
])
WORK_SCHEMA = pa.schema([("id", pa.int64()), ("key", pa.string()), ("md5", pa.string())])
CONTACT_SHEET_ROWS = 6


def latest_digest(store: ObjectStore, name: str) -> str:
    """The spec hash of the newest augmented set of a query (what ``LATEST`` holds)."""
    return store.get_bytes(layout.augmented_latest(name)).decode().strip()


def read_augmented_manifest(store: ObjectStore, name: str, digest: str | None = None) -> pa.Table:
    """The manifest of one spec's augmented set; by default the newest."""
    return read_parquet(store, layout.augmented_manifest(name, digest or latest_digest(store, name)))


@dataclass(kw_only=True)
class AugmentPlan(ShardPlan):
    digest: str  # of spec + seed: names the output folder
    variants: int
    source_images: int = 0
    set_version: int = 0  # the image set's version the variants are made from
    set_digest: str = ""

    @property
    def prefix(self) -> str:
        return layout.augmented(self.name, self.digest)

    def variant_key(self, product_id: int, k: int) -> str:
        return layout.variant(self.name, self.digest, product_id, k)

    @property
    def todo(self) -> int:
        return sum(s.items for s in self.shards)


@dataclass
class AugmentShardResult(ShardStats):
    bytes_written: int = 0


@dataclass
class AugmentResult:
    plan: AugmentPlan
    shards: list[AugmentShardResult]
    rows: int = 0
    removed: int = 0
    contact_sheet: bytes = b""


def plan_augmentation(
    store: ObjectStore, name: str, spec: Sequence[Mapping] | Mapping, seed: int, variants: int,
    work_prefix: str, shard_size: int, set_version: str | int | None = None,
) -> AugmentPlan:
    """Every image of the set (at ``set_version``, default the newest) whose variants are
    missing or were made from another version of the image goes into the work lists; the rest
    are up to date and kept."""
    started = time.monotonic()
    version = resolve(store, name, set_version)
    plan = AugmentPlan(name=name, digest=spec_hash(spec, seed), variants=variants, work_prefix=work_prefix,
                       set_version=version.seq, set_digest=version.digest)
    source = read_version(store, version, columns=["id", "key", "md5"]).to_pylist()
    plan.source_images = len(source)
    previous: dict[tuple[int, int], str] = {}
    if store.exists(layout.augmented_manifest(name, plan.digest)):
        for row in read_augmented_manifest(store, name, plan.digest).to_pylist():
            previous[(row["id"], row["variant"])] = row["source_md5"]
    existing = {obj.key for obj in store.list(plan.prefix) if obj.key.endswith(".jpg")}

    def up_to_date(row: dict) -> bool:
        return all(plan.variant_key(row["id"], k) in existing and previous.get((row["id"], k)) == row["md5"]
                   for k in range(variants))

    writer = ShardWriter(store, work_prefix, WORK_SCHEMA, shard_size)
    writer.add(row for row in source if not up_to_date(row))
    plan.shards = writer.close()
    # Variants of images no longer in the set (or beyond `variants`): removed after the manifest.
    # Found here, from the one listing the plan makes, not by listing the set again at commit.
    wanted = {plan.variant_key(row["id"], k) for row in source for k in range(variants)}
    write_keys(store, plan.stale_key, existing - wanted)
    plan.seconds = time.monotonic() - started
    plan.peak_rss_mb = peak_rss_mb()
    return plan


def augment_shard(
    store: ObjectStore, plan: AugmentPlan, shard: Shard, spec: Sequence[Mapping] | Mapping, seed: int,
    workers: int | None, io_workers: int, on_progress: Callable[[int], None] = lambda n: None,
) -> AugmentShardResult:
    """Read, augment (a process per core) and write one shard's images, streaming: memory holds
    only the images in flight."""
    result = AugmentShardResult(index=shard.index)
    started = time.monotonic()
    rows = read_parquet(store, shard.key).to_pylist()

    def read(row: dict) -> tuple[int, bytes]:
        return row["id"], store.get_bytes(row["key"])

    def write(item: tuple[int, list[bytes]]) -> int:
        product_id, outputs = item
        for k, data in enumerate(outputs):
            store.put_bytes(plan.variant_key(product_id, k), data, "image/jpeg")
        return sum(map(len, outputs))

    # Reads and writes in chunks a thread (chunked_map): this process's Python competes with the
    # augmenting processes for the cores.
    augmented = augment_in_parallel(chunked_map(read, rows, io_workers), spec, plan.variants, seed, workers=workers)
    for size in chunked_map(write, augmented, io_workers, chunk=8):
        result.bytes_written += size
        result.images += 1
        on_progress(1)
    result.seconds = time.monotonic() - started
    result.peak_rss_mb = peak_rss_mb()
    return result


def commit_augmentation(
    store: ObjectStore, plan: AugmentPlan, shards: list[AugmentShardResult], io_workers: int
) -> AugmentResult:
    """The manifest lists every variant of every image of the set; it goes in once every shard
    is done, then stale variants go, then ``LATEST`` moves to this spec."""
    done = in_plan_order(plan.shards, shards, f"augmented set {plan.name!r}")
    source = read_manifest(store, plan.name, plan.set_digest).select(["id", "key", "md5"])
    # One row per (image, variant): row i of the set, variant k, at i * variants + k.
    repeated = source.take(pa.array(np.repeat(np.arange(source.num_rows), plan.variants)))
    variant = pa.array(np.tile(np.arange(plan.variants, dtype=np.int32), source.num_rows))
    keys = [plan.variant_key(product_id, k)
            for product_id, k in zip(repeated.column("id").to_pylist(), variant.to_pylist(), strict=True)]
    table = pa.table({"id": repeated.column("id"), "variant": variant, "key": pa.array(keys, pa.string()),
                      "source_key": repeated.column("key"), "source_md5": repeated.column("md5")},
                     schema=AUGMENTED_SCHEMA)
    table = table.cast(stamp(table.schema, plan.set_digest))
    write_parquet(store, layout.augmented_manifest(plan.name, plan.digest), table)
    removed = delete_listed(store, plan.stale_key, io_workers)
    store.put_bytes(layout.augmented_latest(plan.name), plan.digest.encode(), "text/plain")
    remove_prefix(store, plan.work_prefix, io_workers)

    sample = source.slice(0, CONTACT_SHEET_ROWS).to_pylist()
    sheet = contact_sheet([(store.get_bytes(r["key"]),
                            [store.get_bytes(plan.variant_key(r["id"], k)) for k in range(plan.variants)])
                           for r in sample])
    store.put_bytes(layout.augmented_contact_sheet(plan.name, plan.digest), sheet, "image/png")
    return AugmentResult(plan=plan, shards=done, rows=table.num_rows, removed=removed, contact_sheet=sheet)
