"""What a new set version costs, at scale (run by hand, not in CI).

    .venv/bin/python bench/set_versions.py [--images 100000] [--changed 0.01] [--work DIR]

Builds a catalog of ``--images`` products in SQLite with one small JPEG each in a local store
(the rows ``product_images`` would hold; no decode, hash or model involved), exports one set
selecting all of them with the project's own export (``plan_export``, ``export_shard``,
``commit_export``), gives ``--changed`` of the products a new photo, exports again, and
garbage-collects keeping one version. It prints, per step, the seconds, the objects and bytes
written into the set, and the machine's load; the ratio to look at is objects written by the
second version against the set's size.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fashion_assets import layout  # noqa: E402
from fashion_assets.catalog.tables import product_images, products  # noqa: E402
from fashion_assets.core.database import metadata  # noqa: E402
from fashion_assets.core.storage import LocalObjectStore, md5_hex  # noqa: E402
from fashion_assets.image_sets.export import commit_export, export_shard, plan_export  # noqa: E402
from fashion_assets.image_sets.sandbox import SqlSandbox  # noqa: E402
from fashion_assets.image_sets.versions import collect  # noqa: E402

SHARD = 25_000


def photo(seed: int) -> bytes:
    """A real 96x128 JPEG, one per seed (a few KB, like a small product photo)."""
    import io

    image = Image.new("RGB", (96, 128), ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def put_catalog(engine, store, ids: list[int], seed_of) -> None:
    rows = []
    for i in ids:
        data = photo(seed_of(i)) + i.to_bytes(8, "big")  # a distinct file per product
        store.put_bytes(layout.catalog_image(i), data)
        rows.append({"id": i, "key": layout.catalog_image(i), "width": 96, "height": 128, "mode": "RGB",
                     "format": "JPEG", "bytes": len(data), "md5": md5_hex(data)})
    with engine.begin() as conn:
        conn.execute(product_images.delete().where(product_images.c.id.in_(ids)))
        for start in range(0, len(rows), 10_000):
            conn.execute(product_images.insert(), rows[start:start + 10_000])


def export(name: str, engine, store, run: str) -> dict:
    started = time.monotonic()
    plan = plan_export(name, "SELECT id FROM products", SqlSandbox(engine), store, layout.work(run, "image_set", name),
                       SHARD)
    shards = [export_shard(store, shard, workers=8) for shard in plan.shards]
    result = commit_export(store, plan, shards, workers=8)
    return {"seconds": round(time.monotonic() - started, 1), "version": result.version.seq,
            "objects_written": sum(s.copied for s in shards), "bytes_written": sum(s.bytes_copied for s in shards),
            "images": plan.exported, "set_bytes": sum(s.bytes_total for s in shards)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--changed", type=float, default=0.01)
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="set-versions-"))
    work.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(f"sqlite:///{work / 'catalog.db'}")
    metadata.create_all(engine)
    store = LocalObjectStore(work / "store")
    ids = list(range(1, args.images + 1))
    started = time.monotonic()
    with engine.begin() as conn:
        conn.execute(products.insert(), [{"id": i, "article_type": "Tshirts"} for i in ids])
    put_catalog(engine, store, ids, seed_of=lambda i: i % 50)
    print(f"catalog: {args.images:,} products in {time.monotonic() - started:.1f}s, load {os.getloadavg()[0]:.2f}")

    first = export("all", engine, store, "run-1")
    print(f"version {first['version']}: {first}  load {os.getloadavg()[0]:.2f}")
    changed = ids[:: max(1, round(1 / args.changed))]
    put_catalog(engine, store, changed, seed_of=lambda i: i % 50 + 1000)
    second = export("all", engine, store, "run-2")
    print(f"version {second['version']} ({len(changed):,} products with a new photo): {second}  "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"objects written by version 2: {second['objects_written']:,} = "
          f"{second['objects_written'] / second['images']:.2%} of the set; bytes "
          f"{second['bytes_written']:,} = {second['bytes_written'] / second['set_bytes']:.2%}")
    dry = collect(store, "all", keep=1, dry_run=True)
    done = collect(store, "all", keep=1)
    print(f"gc --keep 1: dry run {dry.seconds:.1f}s; deleted {done.deleted:,} of {done.objects:,} photos "
          f"({done.deleted_bytes:,} bytes) in {done.seconds:.1f}s, load {os.getloadavg()[0]:.2f}")
    print(f"work folder: {work}")


if __name__ == "__main__":
    main()
