"""Groups of near-duplicate products, so a model is never validated on a near-copy of what it
trained on. Plain module: no Dagster.

The catalog is full of near-duplicates: the same item in another colour or another shot, often
with neighbouring ids. Two products are in one group when either

- their photos' perceptual hashes (``perceptual_hash``: a 256-bit DCT hash, ImageHash's pHash
  with ``hash_size=16``) differ in at most ``MAX_DISTANCE`` bits, or
- they share a name stem (the display name without its colour) and an article type
  ("Nike Men AS T90 Black Tshirts" and "... White Tshirts");

and groups are the connected components of those links.

Measured on the 8,448 photos of the shared catalog: a 64-bit pHash is too coarse for product
shots on white (pairs at distance 0 include a black sports shoe and a black formal shoe of other
brands, and linking within distance 4 chains 1,164 products into one group); at 256 bits the
nearest-neighbour distances have a clear gap, and within 16 bits there are 160 pairs, 99 % of
them of the same article type, in groups of at most 3. Name stems group 5,976 products into
1,256 groups of two or more (the largest, 102, is a generic "printed kurtas" name).

Finding the close hash pairs does not compare every pair: split into 17 blocks of 15 bits, two
hashes within 16 bits agree on at least one whole block (pigeonhole), so only hashes that share
a block value are compared.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

HASH_SIZE = 16  # 16 x 16 = 256 bits
MAX_DISTANCE = 16  # bits of 256
BLOCKS = MAX_DISTANCE + 1
BLOCK_BITS = (HASH_SIZE * HASH_SIZE) // BLOCKS  # 15; the last bit takes part in distances only
CHUNK = 2048  # rows compared at a time inside one large bucket


def perceptual_hash(img: Image.Image) -> str:
    """256-bit DCT hash of the photo, as 64 hex digits."""
    import imagehash

    return str(imagehash.phash(img, hash_size=HASH_SIZE))


def name_stem(name: str | None, colour: str | None) -> str:
    """The display name lower-cased, without punctuation and without its colour."""
    text = f" {' '.join(re.sub(r'[^a-z0-9]+', ' ', (name or '').lower()).split())} "
    colour_words = " ".join(re.sub(r"[^a-z0-9]+", " ", (colour or "").lower()).split())
    if colour_words:
        text = text.replace(f" {colour_words} ", " ")
    return " ".join(text.split())


@dataclass(frozen=True)
class Product:
    id: int
    phash: str | None
    name: str | None = None
    colour: str | None = None
    article_type: str | None = None


class _UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return int(a)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _bits(hashes: Sequence[str]) -> np.ndarray:
    """[n, 256] bits of hex hashes."""
    raw = np.frombuffer(b"".join(bytes.fromhex(h) for h in hashes), dtype=np.uint8)
    return np.unpackbits(raw.reshape(len(hashes), -1), axis=1)


def close_pairs(hashes: Sequence[str], max_distance: int = MAX_DISTANCE) -> Iterable[tuple[int, int]]:
    """Index pairs (i < j) of hashes within ``max_distance`` bits (pigeonhole on blocks)."""
    if len(hashes) < 2:
        return
    bits = _bits(hashes)
    words = np.packbits(bits, axis=1).view(">u8").astype(np.uint64)  # [n, 4] for distances
    weights = (1 << np.arange(BLOCK_BITS - 1, -1, -1)).astype(np.int64)
    seen: set[tuple[int, int]] = set()
    for block in range(max_distance + 1):
        values = bits[:, block * BLOCK_BITS:(block + 1) * BLOCK_BITS].astype(np.int64) @ weights
        order = np.argsort(values, kind="stable")
        starts = np.flatnonzero(np.r_[True, values[order][1:] != values[order][:-1]])
        ends = np.r_[starts[1:], len(order)]
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            if end - start < 2:
                continue
            members = order[start:end]
            for lo in range(0, len(members), CHUNK):
                rows = members[lo:lo + CHUNK]
                distance = sum(np.bitwise_count(words[rows, None, k] ^ words[None, members, k]) for k in range(4))
                for a, b in zip(*np.nonzero(distance <= max_distance), strict=True):
                    i, j = int(rows[a]), int(members[b])
                    if i < j and (i, j) not in seen:
                        seen.add((i, j))
                        yield i, j


def near_duplicate_groups(products: Sequence[Product], max_distance: int = MAX_DISTANCE) -> dict[int, int]:
    """Product id -> its group's id (the smallest product id in the group)."""
    union = _UnionFind(len(products))
    hashed = [i for i, p in enumerate(products) if p.phash]
    for a, b in close_pairs([products[i].phash for i in hashed], max_distance):
        union.union(hashed[a], hashed[b])
    by_stem: dict[tuple[str, str], int] = {}
    for i, p in enumerate(products):
        stem = name_stem(p.name, p.colour)
        if stem and p.article_type:
            first = by_stem.setdefault((stem, p.article_type), i)
            union.union(first, i)
    smallest: dict[int, int] = {}
    for i, p in enumerate(products):
        root = union.find(i)
        smallest[root] = min(smallest.get(root, p.id), p.id)
    return {p.id: smallest[union.find(i)] for i, p in enumerate(products)}


def group_sizes(groups: dict[int, int]) -> list[tuple[int, list[int]]]:
    """(group id, member ids) of every group of two or more, largest first."""
    members: dict[int, list[int]] = defaultdict(list)
    for product_id, group in groups.items():
        members[group].append(product_id)
    return sorted(((g, sorted(m)) for g, m in members.items() if len(m) > 1), key=lambda gm: (-len(gm[1]), gm[0]))
