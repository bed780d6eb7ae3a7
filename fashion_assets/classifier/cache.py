"""The classifier's input cache (asset ``classifier_inputs``): every catalog photo decoded and
resized once, to one input size, into shards of raw ``uint8`` pixels in the store, so that an
epoch reads compact shards instead of decoding JPEGs. Plain module: no Dagster.

Format (``layout.model_inputs``), one folder per input size::

    models/inputs/<S>px/shard-<bucket>-<digest>.u8   fixed-length records, in id order
    models/inputs/<S>px/index.parquet                id, md5 (of the JPEG), shard key, position

A record is 8 bytes of little-endian int64 product id, then ``S*S*3`` bytes of RGB pixels, row
by row: ``np.frombuffer(data, record_dtype(S))`` or ``tf.data.FixedLengthRecordDataset`` reads it
with no parser. A shard holds the photos of one range of product ids (``ids_per_shard`` wide),
and is named by its content: a re-run rewrites only the shards whose photos changed, copies the
unchanged records of those shards as bytes, and decodes only the new or changed photos (by the
JPEG's MD5, recorded in ``product_images``). The index is written last: a reader that has read it
finds every shard it names. Shards a re-run replaced are deleted one run later, so a training that
read the previous index still finds its shards.

Pixels are made by ``images.decode_and_resize``, the function training and inference decode with,
so a model trained from the cache sees exactly what one trained from the JPEGs would.
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import sqlalchemy as sa

from .. import layout
from ..catalog.tables import product_images
from ..core import tf_runtime
from ..core.parallel import bounded_map, chunked_map
from ..core.parquet import read_parquet, write_parquet
from ..core.storage import ObjectStore, delete_keys

INDEX_SCHEMA = pa.schema([("id", pa.int64()), ("md5", pa.string()), ("shard", pa.string()),
                          ("position", pa.int32())])
DEFAULT_IDS_PER_SHARD = 2048  # ~25 MB shards at 64 px: a few per epoch in memory at once
SHUFFLE_BUFFER = 8192  # images: ~100 MB at 64 px, whatever the catalog's size


class CacheMiss(LookupError):
    """The cache lacks (or holds an older version of) photos a training asked for."""


def record_dtype(image_size: int) -> np.dtype:
    return np.dtype([("id", "<i8"), ("pixels", "u1", (image_size, image_size, 3))])


@dataclass(frozen=True)
class Photo:
    id: int
    key: str  # the JPEG in the store
    md5: str


@dataclass
class CacheStats:
    image_size: int
    images: int = 0
    encoded: int = 0  # decoded from JPEG this run (new or changed photos)
    copied: int = 0  # records of rewritten shards copied as bytes
    removed: int = 0  # photos no longer in the catalog
    shards: int = 0
    shards_written: int = 0
    shards_deleted: int = 0
    bytes: int = 0  # the cache's size
    seconds: float = 0.0
    encode_seconds: float = 0.0
    written_keys: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.encoded / self.encode_seconds if self.encode_seconds else 0.0


def catalog_photos(engine: sa.Engine) -> list[Photo]:
    """Every photo of table ``product_images``, in id order."""
    query = sa.select(product_images.c.id, product_images.c.key, product_images.c.md5).order_by(product_images.c.id)
    with engine.connect() as conn:
        return [Photo(int(i), k, m) for i, k, m in conn.execute(query)]


def read_index(store: ObjectStore, image_size: int) -> pa.Table | None:
    key = layout.model_inputs_index(image_size)
    return read_parquet(store, key) if store.exists(key) else None


def _shard_digest(photos: Sequence[Photo]) -> str:
    h = hashlib.md5()
    for p in photos:
        h.update(f"{p.id}:{p.md5}\n".encode())
    return h.hexdigest()[:16]


def _decode(store: ObjectStore, photos: Sequence[Photo], image_size: int, io_workers: int) -> np.ndarray:
    """The photos' pixels, in order, by the training pipeline's own decode."""
    from .images import load_array

    if not photos:
        return np.empty((0, image_size, image_size, 3), dtype=np.uint8)
    items = chunked_map(lambda i: (i, store.get_bytes(photos[i].key)), range(len(photos)), io_workers)
    return load_array(items, len(photos), image_size)


def build_cache(store: ObjectStore, photos: Sequence[Photo], image_size: int,
                ids_per_shard: int = DEFAULT_IDS_PER_SHARD, io_workers: int = 16,
                log: Callable[[str], None] = print) -> CacheStats:
    """Bring the cache at ``image_size`` up to date with ``photos``: rewrite the shards whose
    photos changed, decode only new or changed photos, write the index, delete the shards that
    the index before the previous one named."""
    started = time.monotonic()
    stats = CacheStats(image_size)
    dtype = record_dtype(image_size)
    previous = read_index(store, image_size)
    had: dict[int, list[dict]] = defaultdict(list)
    if previous is not None:
        for row in previous.to_pylist():
            had[row["id"] // ids_per_shard].append(row)
    want: dict[int, list[Photo]] = defaultdict(list)
    for photo in sorted(photos, key=lambda p: p.id):
        want[photo.id // ids_per_shard].append(photo)
    wanted_ids = {p.id for p in photos}
    stats.removed = sum(1 for rows in had.values() for r in rows if r["id"] not in wanted_ids)

    index_rows: list[dict] = []
    for bucket in sorted(want):
        photos_here = want[bucket]
        old = {r["id"]: r for r in had.get(bucket, [])}
        unchanged = [p for p in photos_here if p.id in old and old[p.id]["md5"] == p.md5]
        digest = _shard_digest(photos_here)
        key = layout.model_inputs_shard(image_size, bucket, digest)
        same_shard = len(unchanged) == len(photos_here) == len(old) and {r["shard"] for r in old.values()} == {key}
        if not same_shard:
            records = np.zeros(len(photos_here), dtype=dtype)
            records["id"] = [p.id for p in photos_here]
            position = {p.id: i for i, p in enumerate(photos_here)}
            if unchanged:  # copy what is still right, as bytes, from the shards that hold it
                by_shard: dict[str, list[Photo]] = defaultdict(list)
                for p in unchanged:
                    by_shard[old[p.id]["shard"]].append(p)
                for shard_key, kept in by_shard.items():
                    existing = np.frombuffer(store.get_bytes(shard_key), dtype=dtype)
                    records["pixels"][[position[p.id] for p in kept]] = existing["pixels"][
                        [old[p.id]["position"] for p in kept]]
            fresh = [p for p in photos_here if not (p.id in old and old[p.id]["md5"] == p.md5)]
            t0 = time.monotonic()
            if fresh:
                records["pixels"][[position[p.id] for p in fresh]] = _decode(store, fresh, image_size, io_workers)
            stats.encode_seconds += time.monotonic() - t0
            stats.encoded += len(fresh)
            stats.copied += len(unchanged)
            store.put_bytes(key, records.tobytes(), "application/octet-stream")
            stats.shards_written += 1
            stats.written_keys.append(key)
            log(f"classifier_inputs {image_size}px: shard {bucket} written ({len(fresh):,} decoded, "
                f"{len(unchanged):,} copied); {stats.encoded:,} decoded so far"
                f"{f' at {stats.rate:,.0f}/s' if stats.encode_seconds else ''}")
        index_rows += [{"id": p.id, "md5": p.md5, "shard": key, "position": i} for i, p in enumerate(photos_here)]
        stats.bytes += len(photos_here) * dtype.itemsize
    stats.images, stats.shards = len(index_rows), len(want)
    write_parquet(store, layout.model_inputs_index(image_size), pa.Table.from_pylist(index_rows, schema=INDEX_SCHEMA))

    # Kept: what this index and the previous one name (a training may have read that one).
    keep = {r["shard"] for r in index_rows}
    if previous is not None:
        keep |= set(previous.column("shard").to_pylist())
    prefix = layout.model_inputs(image_size)
    stale = [o.key for o in store.list(prefix) if o.key.endswith(".u8") and o.key not in keep]
    stats.shards_deleted = delete_keys(store, stale, io_workers)
    stats.seconds = time.monotonic() - started
    return stats


class CachedImages:
    """The ``data.Images`` source over the cache: ``(row index, uint8 image)`` for the rows
    asked for, read shard by shard (only the shards that hold them), reshuffled every pass when
    asked. Raises :class:`CacheMiss` at construction when a row's photo is not in the cache as
    it is now (missing, or an older MD5)."""

    def __init__(self, store: ObjectStore, image_size: int, ids: Sequence[int], md5s: Sequence[str]):
        self.store, self.image_size = store, image_size
        index = read_index(store, image_size)
        if index is None:
            raise CacheMiss(f"no input cache at {image_size}px ({store.uri(layout.model_inputs_index(image_size))}):"
                            " materialise classifier_inputs")
        where = {i: (s, p, m) for i, m, s, p in zip(*(index.column(c).to_pylist()
                                                       for c in ("id", "md5", "shard", "position")), strict=True)}
        self.shard_of = np.empty(len(ids), dtype=object)
        self.position = np.empty(len(ids), dtype=np.int64)
        stale = 0
        for row, (product_id, md5) in enumerate(zip(ids, md5s, strict=True)):
            found = where.get(product_id)
            if found is None or found[2] != md5:
                stale += 1
                continue
            self.shard_of[row], self.position[row] = found[0], found[1]
        if stale:
            raise CacheMiss(f"the input cache at {image_size}px lacks {stale:,} of {len(ids):,} photos (new or "
                            "changed since it was built): materialise classifier_inputs")
        self.dtype = record_dtype(image_size)

    def _chunks(self, indices: np.ndarray, rng: np.random.Generator | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        by_shard: dict[str, list[int]] = defaultdict(list)
        for row in indices.tolist():
            by_shard[self.shard_of[row]].append(row)
        shards = sorted(by_shard)
        if rng is not None:
            shards = [shards[i] for i in rng.permutation(len(shards))]
        # Two shards in flight at most: the next one is read while this one is handed over.
        reads = bounded_map(lambda key: (key, self.store.get_bytes(key)), shards, 1)
        for key, data in reads:
            rows = np.asarray(by_shard[key], dtype=np.int64)
            records = np.frombuffer(data, dtype=self.dtype)
            yield rows, records["pixels"][self.position[rows]]

    def dataset(self, indices: np.ndarray, shuffle_seed: int | None = None):
        tf = tf_runtime.tensorflow()

        indices = np.asarray(indices, dtype=np.int64)
        rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
        size = self.image_size
        ds = tf.data.Dataset.from_generator(
            lambda: self._chunks(indices, rng),
            output_signature=(tf.TensorSpec((None,), tf.int64), tf.TensorSpec((None, size, size, 3), tf.uint8)),
        ).unbatch()
        if shuffle_seed is not None:
            ds = ds.shuffle(min(len(indices), SHUFFLE_BUFFER), seed=shuffle_seed, reshuffle_each_iteration=True)
        return ds.apply(tf.data.experimental.assert_cardinality(len(indices)))


def training_images(store: ObjectStore, rows: list[dict], image_size: int, io_workers: int,
                    log: Callable[[str], None]):
    """The rows' images and where they come from: the input cache (``classifier_inputs``) when
    it holds every row's photo as it is now, else streamed from the store and decoded as needed
    (an image set's augmented copies, a size the cache was not built at, a stale cache). Either
    way memory does not grow with the catalog."""
    from .data import StoreImages

    if rows and all(r.get("md5") and r["variant"] == 0 for r in rows):
        try:
            images = CachedImages(store, image_size, [r["id"] for r in rows], [r["md5"] for r in rows])
            log(f"Reading the images from the input cache at {image_size}px "
                f"({store.uri(layout.model_inputs(image_size))})")
            return images, f"classifier_inputs {image_size}px"
        except CacheMiss as exc:
            log(f"Decoding the JPEGs instead of reading the input cache: {exc}")
    return StoreImages(store.get_bytes, [r["key"] for r in rows], image_size, io_workers), "store JPEGs"
