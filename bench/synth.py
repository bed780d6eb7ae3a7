"""A synthetic catalog, and a scale-out rehearsal on it (run by hand, not in CI).

    .venv/bin/python bench/synth.py generate --out /tmp/synth [--products 100000]
    .venv/bin/python bench/synth.py rehearse --dataset /tmp/synth [--shard-size 25000] [--model-uri M]

``generate`` writes ``styles.csv`` and ``images/<id>.jpg``: label combinations drawn from the
repository's own sample catalog, and a 224x224 JPEG per product (a shape per article type in
the product's colour, jittered, on white: about the size of a real product photo).

``rehearse`` runs the pipeline as a user would, with the Dagster CLI and the multiprocess
executor, on the embedded backend: ingest the catalog, import a model (``--model-uri``; else
train one epoch), register one query selecting every product, and materialise ``image_set``,
``augmented_set`` and ``predictions`` for it with ``--shard-size`` images per shard. It prints
each step's wall time and, from the materialisations' metadata, the plan, per-shard and commit
figures (seconds, images/s, peak memory) that docs/scaling.md projects from, and saves them as
JSON in the work folder.
"""

import argparse
import csv
import hashlib
import io
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TEMPLATES = REPO / "examples" / "sample-catalog" / "styles.csv"
COLUMNS = ["id", "gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "year", "usage",
           "productDisplayName"]
COLOURS = {"Black": (20, 20, 20), "White": (235, 235, 235), "Blue": (40, 70, 180), "Navy Blue": (20, 30, 90),
           "Red": (190, 30, 40), "Green": (40, 140, 60), "Grey": (128, 128, 128), "Brown": (110, 70, 40),
           "Pink": (230, 130, 170), "Yellow": (230, 200, 40), "Purple": (110, 50, 140), "Silver": (190, 190, 200),
           "Beige": (220, 200, 160), "Gold": (200, 160, 50), "Orange": (240, 130, 30), "Maroon": (110, 20, 40)}
FIRST_ID = 1_000_000


# -- generate ----------------------------------------------------------------------------------

def _colour(name: str) -> tuple[int, int, int]:
    if name in COLOURS:
        return COLOURS[name]
    digest = hashlib.md5(name.encode()).digest()
    return digest[0], digest[1], digest[2]


def _image(product_id: int, article_type: str, colour: str) -> bytes:
    import random

    from PIL import Image, ImageDraw, ImageFilter

    rng = random.Random(product_id)
    shape = int(hashlib.md5(article_type.encode()).hexdigest(), 16)
    img = Image.new("RGB", (224, 224), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    fill = tuple(max(0, min(255, c + rng.randint(-25, 25))) for c in _colour(colour))
    cx, cy, r = 112 + rng.randint(-12, 12), 112 + rng.randint(-12, 12), 55 + rng.randint(-10, 25)
    sides = 3 + shape % 6  # the shape says the article type, roughly, as a silhouette would
    if shape % 7 == 0:
        draw.ellipse((cx - r, cy - int(r * 1.3), cx + r, cy + int(r * 1.3)), fill=fill)
    else:
        draw.regular_polygon((cx, cy, r), sides, rotation=rng.randint(0, 30) + (shape >> 8) % 60, fill=fill)
    bar = (shape >> 16) % 4
    if bar:
        draw.rectangle((cx - r, cy + r // 2, cx + r, cy + r // 2 + 6 * bar), fill=tuple(c // 2 for c in fill))
    img = img.filter(ImageFilter.GaussianBlur(0.8))
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


def _write_images(job: tuple[str, list[tuple[int, str, str]]]) -> int:
    folder, items = job
    for product_id, article_type, colour in items:
        Path(folder, f"{product_id}.jpg").write_bytes(_image(product_id, article_type, colour))
    return len(items)


def generate(out: Path, products: int, seed: int, workers: int) -> None:
    import random

    rng = random.Random(seed)
    with TEMPLATES.open(encoding="utf-8") as f:
        templates = [row for row in csv.DictReader(f)]
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(products):
        row = dict(rng.choice(templates))
        row["id"] = str(FIRST_ID + i)
        row["productDisplayName"] = f"Synthetic {row['baseColour']} {row['articleType']} {i}"
        rows.append(row)
    with (out / "styles.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    items = [(int(r["id"]), r["articleType"], r["baseColour"]) for r in rows]
    jobs = [(str(out / "images"), items[i:i + 1000]) for i in range(0, len(items), 1000)]
    started, done = time.monotonic(), 0
    with multiprocessing.get_context("forkserver").Pool(workers) as pool:
        for n in pool.imap_unordered(_write_images, jobs):
            done += n
            if done % 20_000 < 1000:
                print(f"  {done:,}/{products:,} images, {done / (time.monotonic() - started):,.0f}/s", flush=True)
    size = sum(p.stat().st_size for p in (out / "images").iterdir())
    print(f"{products:,} products and images in {out} ({size / 1e6:,.0f} MB) in {time.monotonic() - started:.0f}s")


# -- rehearse ----------------------------------------------------------------------------------

def _materialize(env: dict, selection: str, partition: str | None = None, config: dict | None = None,
                 work: Path | None = None) -> float:
    command = [str(BIN / "dagster"), "asset", "materialize", "-m", "fashion_assets.definitions", "--select", selection]
    if partition:
        command += ["--partition", partition]
    if config:
        path = Path(work, f"{selection}.json")
        path.write_text(json.dumps(config))
        command += ["-c", str(path)]
    started = time.monotonic()
    run = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if run.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{run.stdout[-3000:]}\n{run.stderr[-5000:]}")
    print(f"  {selection:<30} {seconds:8.1f} s wall", flush=True)
    return seconds


def _metadata(asset: str, partition: str | None) -> dict:
    import dagster as dg

    from fashion_assets.cli import latest_metadata

    with dg.DagsterInstance.get() as instance:
        return latest_metadata(instance, asset, partition)


def _decode_rate(store_dir: Path, image_size: int, n: int = 5000) -> float:
    """Read + decode + resize only, through the same tf.data pipeline the predictions use: what
    a GPU pod's CPUs must keep up with."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from fashion_assets.classifier.images import batches

    keys = sorted((store_dir / "catalog" / "images").iterdir())[:n]
    started = time.monotonic()
    count = sum(len(tags) for tags, _ in batches(((i, p.read_bytes()) for i, p in enumerate(keys)), image_size, 128))
    return count / (time.monotonic() - started)


def rehearse(dataset: Path, shard_size: int, model_uri: str | None, work: Path) -> None:
    home = work / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "FASHION_DATASET_DIR": str(dataset),
           "FASHION_CATALOG_URL": f"sqlite:///{work / 'catalog.sqlite'}", "FASHION_STORE_URL": str(work / "store"),
           # Shards as processes, as pods would be (the local default runs steps in one process).
           "FASHION_EXECUTOR": "multiprocess"}
    os.environ.update(env)
    print(f"Rehearsal in {work}: {dataset}, {shard_size:,} images per shard, multiprocess executor, "
          f"{os.cpu_count()} cores", flush=True)
    walls = {"catalog": _materialize(env, "products,product_images")}
    model_config = {"model_uri": model_uri} if model_uri else {"epochs": 1}
    walls["fashion_classifier"] = _materialize(env, "fashion_classifier",
                                               config={"ops": {"fashion_classifier": {"config": model_config}}},
                                               work=work)
    subprocess.run([str(BIN / "fashion-assets"), "query", "add", "everything", "--replace", "--sql",
                    "SELECT id FROM products"],
                   env=env, check=True, capture_output=True)
    sharded = {"shard_size": shard_size}
    for asset in ("image_set", "augmented_set", "predictions"):
        walls[asset] = _materialize(env, asset, "everything", {"ops": {asset: {"config": sharded}}}, work)

    figures = {"shard_size": shard_size, "cores": os.cpu_count(), "wall_seconds": walls}
    catalog = _metadata("product_images", None)
    figures["catalog"] = {k: catalog.get(k) for k in ("images_stored", "rate_images_per_s", "bytes_stored")}
    for asset in ("image_set", "augmented_set", "predictions"):
        m = _metadata(asset, "everything")
        figures[asset] = {k: m.get(k) for k in ("dagster/row_count", "shards", "plan_seconds", "plan_peak_rss_mb",
                                                "shard_seconds_max", "shard_peak_rss_mb_max", "commit_seconds",
                                                "commit_peak_rss_mb", "rate_images_per_s", "model_load_seconds")
                          if k in m}
        figures[asset]["shard_rates"] = m["shard_rates"]
    model = _metadata("fashion_classifier", None)
    figures["decode_images_per_s_per_process"] = round(_decode_rate(work / "store", int(model["image_size"])), 1)

    for asset in ("image_set", "augmented_set", "predictions"):
        f = figures[asset]
        print(f"\n{asset}: {f['dagster/row_count']:,} rows in {f['shards']} shards, {walls[asset]:.0f}s wall "
              f"(plan {f['plan_seconds']:.1f}s, peak {f['plan_peak_rss_mb']:.0f} MB; commit {f['commit_seconds']:.1f}s, "
              f"peak {f['commit_peak_rss_mb']:.0f} MB)")
        print(f["shard_rates"])
    print(f"\nread+decode+resize alone: {figures['decode_images_per_s_per_process']:,} images/s")
    out = work / "rehearsal.json"
    out.write_text(json.dumps(figures, indent=2, default=str))
    print(f"\nfigures saved to {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="write a synthetic catalog")
    gen.add_argument("--out", type=Path, required=True)
    gen.add_argument("--products", type=int, default=100_000)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--workers", type=int, default=os.cpu_count())
    reh = commands.add_parser("rehearse", help="run the pipeline on it, sharded, and print the figures")
    reh.add_argument("--dataset", type=Path, required=True)
    reh.add_argument("--shard-size", type=int, default=25_000)
    reh.add_argument("--model-uri", help="a .keras file or SavedModel folder to import (default: train one epoch)")
    reh.add_argument("--work", type=Path, help="work folder (default: a new temporary one)")
    args = parser.parse_args()
    if args.command == "generate":
        generate(args.out, args.products, args.seed, args.workers)
    else:
        work = args.work or Path(tempfile.mkdtemp(prefix="fashion-rehearsal-"))
        rehearse(args.dataset.resolve(), args.shard_size, args.model_uri, work.resolve())


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
