"""Duplicate listings at upload: the catalog products whose photo is within the near-duplicate
group threshold of an uploaded one. Plain module: no Dagster.

The hash and the threshold are ``catalog/duplicates.py``'s (``perceptual_hash``, 256 bits;
``MAX_DISTANCE``, 16 bits), so an upload is "a near-duplicate of product 15970" exactly when
ingesting it would have put it in 15970's group by photo. The index holds every hash of table
``product_images`` as four 64-bit words per photo, stored word by word (four contiguous
``uint64`` arrays): a lookup is one vectorised XOR + popcount of the first word over the whole
catalog, then the other three words of only the photos the first leaves within reach (linear: a
catalog of millions would want the pigeonhole block index of ``duplicates.close_pairs`` instead).

``CatalogIndex`` keeps the index current: ``refresh`` reads a cheap fingerprint of the table
(row count, largest and summed id, summed bytes, hashed rows) and reloads the hashes only when it
changed, so a new ingest (a product added, removed, or its photo replaced by one of another size)
is picked up by the next poll. The gateway runs it off the event loop.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa
from PIL import Image

from ..catalog.duplicates import HASH_SIZE, MAX_DISTANCE, perceptual_hash
from ..catalog.tables import fingerprint, product_images

LIMIT = 10  # near-duplicates in one answer, closest first
WORDS = HASH_SIZE * HASH_SIZE // 64  # 4 words of 64 bits
HASH_BYTES = WORDS * 8


def image_hash(data: bytes) -> str:
    """``perceptual_hash`` of image bytes, decoded as the catalog's ingest decodes them (Pillow,
    fully loaded). ``OSError`` for data Pillow cannot decode in full."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return perceptual_hash(img)


def _words(hashes: list[bytes]) -> np.ndarray:
    """``[WORDS, n]`` uint64: word ``k`` of every hash, contiguous."""
    raw = np.frombuffer(b"".join(hashes), dtype=">u8").reshape(len(hashes), WORDS)
    return np.ascontiguousarray(raw.T.astype(np.uint64))


class NearDuplicateIndex:
    """Product ids and their photos' hashes; ``lookup`` finds those within ``max_distance`` bits."""

    def __init__(self, rows: Iterable[tuple[int, str]], max_distance: int = MAX_DISTANCE, limit: int = LIMIT):
        ids, hashes = [], []
        self.skipped = 0  # rows whose hash is not 64 hex digits
        for product_id, phash in rows:
            try:
                raw = bytes.fromhex(phash)
            except (TypeError, ValueError):
                raw = b""
            if len(raw) != HASH_BYTES:
                self.skipped += 1
                continue
            ids.append(int(product_id))
            hashes.append(raw)
        self.ids = np.asarray(ids, dtype=np.int64)
        self.words = _words(hashes) if hashes else np.zeros((WORDS, 0), np.uint64)
        self.max_distance = max_distance
        self.limit = limit

    def __len__(self) -> int:
        return len(self.ids)

    def distances(self, phash: str, rows: np.ndarray | None = None) -> np.ndarray:
        """Bits between ``phash`` and every indexed hash (or those at positions ``rows``), ``uint16``."""
        query = _words([bytes.fromhex(phash)])[:, 0]
        words = self.words if rows is None else self.words[:, rows]
        # uint16: four words can differ in 256 bits, one more than uint8 holds.
        distance = np.bitwise_count(words[0] ^ query[0]).astype(np.uint16)
        for k in range(1, WORDS):
            distance += np.bitwise_count(words[k] ^ query[k])
        return distance

    def lookup(self, phash: str) -> list[dict]:
        """``[{"id", "distance"}]`` of the products within ``max_distance`` bits of ``phash``,
        closest first (then by id), at most ``limit``."""
        if not len(self.ids):
            return []
        # The first word's distance is a lower bound of the whole: only the photos it keeps
        # within reach are compared in full (few, even in a catalog of similar photos).
        first = np.uint64(int(phash[:16], 16))
        close = np.flatnonzero(np.bitwise_count(self.words[0] ^ first) <= self.max_distance)
        distance = self.distances(phash, close)
        within = distance <= self.max_distance
        close, distance = close[within], distance[within]
        order = np.lexsort((self.ids[close], distance))[: self.limit]
        return [{"id": int(self.ids[close[i]]), "distance": int(distance[i])} for i in order]


def read_index(conn: sa.Connection, max_distance: int = MAX_DISTANCE, limit: int = LIMIT) -> NearDuplicateIndex:
    """Every hashed photo of ``product_images`` (rows ingested before hashes existed have none)."""
    t = product_images.c
    rows = conn.execute(sa.select(t.id, t.phash).where(t.phash.is_not(None)).order_by(t.id))
    return NearDuplicateIndex(rows, max_distance, limit)


@dataclass
class Refreshed:
    changed: bool
    photos: int
    skipped: int = 0


class CatalogIndex:
    """The index of a catalog database, reloaded when its ``product_images`` changes."""

    def __init__(self, engine: sa.Engine, max_distance: int = MAX_DISTANCE, limit: int = LIMIT):
        self.engine = engine
        self.max_distance = max_distance
        self.limit = limit
        self.index: NearDuplicateIndex | None = None  # None until the first load
        self._fingerprint: tuple[int, ...] | None = None

    def refresh(self) -> Refreshed:
        """Reload when the table's fingerprint differs from the loaded one (blocking: run it in a
        thread). The fingerprint is read before the rows: a change in between only makes the next
        poll reload again. The new index replaces the old in one assignment."""
        with self.engine.connect() as conn:
            now = fingerprint(conn)
            if self.index is not None and now == self._fingerprint:
                return Refreshed(False, len(self.index))
            index = read_index(conn, self.max_distance, self.limit)
        self.index, self._fingerprint = index, now
        return Refreshed(True, len(index), index.skipped)

    def lookup(self, phash: str) -> list[dict]:
        index = self.index
        return index.lookup(phash) if index is not None else []
