"""The gateway's near-duplicate index (``serving/near_duplicates.py``) on its own: exact distances
on hashes built bit by bit, real catalog photos and their resized copies, and the refresh against a
real catalog database on both backends (SQLite, PostgreSQL)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from fashion_assets import layout
from fashion_assets.catalog.duplicates import MAX_DISTANCE, perceptual_hash
from fashion_assets.catalog.tables import product_images
from fashion_assets.serving.near_duplicates import CatalogIndex, NearDuplicateIndex, fingerprint, image_hash

SAMPLE_IMAGES = Path(__file__).resolve().parents[1] / "examples" / "sample-catalog" / "images"
BASE = "0123456789abcdef" * 4  # 64 hex digits, 256 bits


def flipped(phash: str, bits: list[int]) -> str:
    """``phash`` with the given bit positions (0 = most significant) inverted."""
    value = int(phash, 16)
    for bit in bits:
        value ^= 1 << (255 - bit)
    return f"{value:064x}"


def test_lookup_finds_exactly_the_hashes_within_the_threshold_closest_first():
    rows = [
        (5, flipped(BASE, list(range(0, 256, 16)))),  # 16 bits, one per 16: at the threshold
        (1, BASE),
        (7, flipped(BASE, [3, 100, 200])),  # 3 bits, across three words
        (3, flipped(BASE, list(range(17)))),  # 17 bits: one too many
        (9, f"{int(BASE, 16) ^ (2 ** 256 - 1):064x}"),  # every bit: 256, more than a uint8 counts
        (2, BASE),  # the same photo under another product: tie at 0, by id
        (4, flipped(BASE, [255])),  # the last bit, which no block of duplicates.py covers
    ]
    index = NearDuplicateIndex(rows)
    assert (len(index), index.max_distance) == (7, MAX_DISTANCE)
    assert index.lookup(BASE) == [{"id": 1, "distance": 0}, {"id": 2, "distance": 0}, {"id": 4, "distance": 1},
                                  {"id": 7, "distance": 3}, {"id": 5, "distance": 16}]
    assert index.distances(BASE).tolist() == [16, 0, 3, 17, 256, 0, 1]
    assert index.lookup(flipped(BASE, list(range(17)))) == [{"id": 3, "distance": 0}]  # the others: 17 bits or more


def test_lookup_is_capped_and_an_empty_or_odd_index_is_harmless():
    many = NearDuplicateIndex([(i, flipped(BASE, [i])) for i in range(30)], limit=10)
    assert many.lookup(BASE) == [{"id": i, "distance": 1} for i in range(10)]
    assert NearDuplicateIndex([]).lookup(BASE) == []
    odd = NearDuplicateIndex([(1, "abc"), (2, "zz" * 32), (3, None), (4, BASE)])
    assert (len(odd), odd.skipped, odd.lookup(BASE)) == (1, 3, [{"id": 4, "distance": 0}])


def test_real_photos_their_resized_copies_and_unrelated_ones():
    """The hash of uploaded bytes is the catalog's (``perceptual_hash`` of the Pillow image); a
    photo resized 224 -> 160 px and re-encoded is found, other products' photos are not."""
    paths = sorted(SAMPLE_IMAGES.glob("*.jpg"))[:60]
    datas = {int(p.stem): p.read_bytes() for p in paths}
    with Image.open(paths[0]) as img:
        assert image_hash(datas[int(paths[0].stem)]) == perceptual_hash(img)
    indexed = dict(list(datas.items())[:40])
    index = NearDuplicateIndex((pid, image_hash(data)) for pid, data in indexed.items())
    for product_id, data in indexed.items():
        assert index.lookup(image_hash(data))[0] == {"id": product_id, "distance": 0}
        with Image.open(io.BytesIO(data)) as img:
            out = io.BytesIO()
            img.resize((160, 160), Image.Resampling.LANCZOS).save(out, "JPEG", quality=75)
        found = index.lookup(image_hash(out.getvalue()))
        assert found[0]["id"] == product_id and found[0]["distance"] <= MAX_DISTANCE, (product_id, found)
    others = {pid: index.lookup(image_hash(data)) for pid, data in list(datas.items())[40:]}
    assert others == {pid: [] for pid in others}  # none of these 20 is a near-copy of the first 40


def test_image_hash_refuses_what_pillow_cannot_decode():
    data = (SAMPLE_IMAGES / "10000.jpg").read_bytes()
    with pytest.raises(OSError):
        image_hash(data[: len(data) // 2])


def _row(product_id: int, phash: str | None, size: int = 1000) -> dict:
    return {"id": product_id, "key": layout.catalog_image(product_id), "width": 224, "height": 224, "mode": "RGB",
            "format": "JPEG", "bytes": size, "md5": f"{product_id:032x}", "phash": phash}


def test_the_catalog_index_reloads_only_when_product_images_changes(backend):
    """Against a real catalog database (SQLite file, PostgreSQL server): the first refresh loads
    the hashed rows; a poll with nothing changed reads no rows; a new row, a replaced photo (of
    another size) and a removed row each reload."""
    engine = backend.engine()
    with engine.begin() as conn:
        conn.execute(product_images.insert(), [_row(10, BASE), _row(11, flipped(BASE, [1, 2])), _row(12, None)])
    catalog = CatalogIndex(engine)
    assert catalog.lookup(BASE) == []  # nothing loaded yet
    loaded = catalog.refresh()
    assert (loaded.changed, loaded.photos) == (True, 2)
    with engine.connect() as conn:
        assert fingerprint(conn) == (3, 12, 33, 3000, 2)
    assert catalog.lookup(BASE) == [{"id": 10, "distance": 0}, {"id": 11, "distance": 2}]
    assert catalog.refresh().changed is False

    with engine.begin() as conn:
        conn.execute(product_images.insert(), [_row(13, flipped(BASE, [0]))])
    assert (catalog.refresh().changed, catalog.lookup(BASE)) == (
        True, [{"id": 10, "distance": 0}, {"id": 13, "distance": 1}, {"id": 11, "distance": 2}])
    with engine.begin() as conn:  # product 11's photo replaced by another one
        conn.execute(product_images.update().where(product_images.c.id == 11)
                     .values(phash=flipped(BASE, list(range(40))), bytes=1234))
    assert (catalog.refresh().changed, catalog.lookup(BASE)) == (
        True, [{"id": 10, "distance": 0}, {"id": 13, "distance": 1}])
    with engine.begin() as conn:
        conn.execute(product_images.delete().where(product_images.c.id == 10))
    assert (catalog.refresh().changed, catalog.lookup(BASE)) == (True, [{"id": 13, "distance": 1}])
    assert catalog.refresh().changed is False
    with engine.connect() as conn:
        assert fingerprint(conn) == (3, 13, 36, 3234, 2)
    engine.dispose()
