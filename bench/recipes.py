"""Benchmark: classifier recipes on the honest split (groups of near-duplicates + the unseen
range of the newest ids), never a random split; by hand, not in CI.

    .venv/bin/python bench/recipes.py [--store DIR] [--recipes default,ema,...] [--out results.jsonl]

Ingests the shared catalog once into a local store (or reuses ``--store``, a folder this
script made before), builds ``classifier_inputs`` at each size a recipe needs, then trains each
recipe with ``fashion_classifier``'s own code (``build.build_version``: the same split, the same
calibration and thresholds) and prints per head: validation and unseen-range accuracy, ECE on
the unseen range before/after the temperature, and the unseen range's precision and coverage at
the auto-tag threshold; plus training minutes and the machine's load. One JSON line per recipe
goes to ``--out``. The recipes tried are below (``RECIPES``); the chosen one is ``default`` in
``fashion_assets/classifier/train.py``.
"""

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import dagster as dg
from common import DEFAULT_DATASET, QUIET

from fashion_assets.classifier import train
from fashion_assets.classifier.build import BuildSettings, build_version
from fashion_assets.classifier.rows import catalog_rows
from fashion_assets.classifier.cache import build_cache, catalog_photos
from fashion_assets.classifier.labels import HEADS

BASE = train.PRESETS["default"]
# Each is the default recipe with some fields changed (train.TrainConfig's fields).
RECIPES = {
    "default": {},
    "v1-default": dict(image_size=64, epochs=30, ema=0.0, mixup=0.0),  # the recipe before issue 19
    "ema": dict(ema=0.99),
    "ema-80px": dict(ema=0.99, image_size=80),
    "ema-96px": dict(ema=0.99, image_size=96),
    "ema-96px-mixup": dict(ema=0.99, image_size=96, mixup=0.2),
    "ema-80px-wide": dict(ema=0.99, image_size=80, widths=(32, 64, 128, 256)),
    "ema-64px-45ep": dict(ema=0.99, epochs=45, patience=12),
    "ema-balanced": dict(ema=0.99, balance=0.5),
    "ema-balanced-mixup": dict(ema=0.99, balance=0.5, mixup=0.2),
    "balanced": dict(balance=0.5),
    "mixup-45ep": dict(mixup=0.2, epochs=45, patience=12),
    "quality": "quality",
}


def ingest(dataset: str, work: Path) -> dict:
    from fashion_assets.catalog.assets import product_images, products
    from fashion_assets.resources import CatalogDatabase, CatalogSource, LocalStoreResource

    resources = {
        "catalog_source": CatalogSource(dataset_dir=str(dataset)),
        "catalog_db": CatalogDatabase(url=f"sqlite:///{work / 'catalog.sqlite'}"),
        "store": LocalStoreResource(path=str(work / "store")),
    }
    if not (work / "catalog.sqlite").exists():
        work.mkdir(parents=True, exist_ok=True)
        assert dg.materialize([products, product_images], resources=resources, run_config=QUIET).success
    return resources


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(DEFAULT_DATASET))
    parser.add_argument("--store", default="/tmp/fashion-bench-recipes", help="work folder, reused if it exists")
    parser.add_argument("--recipes", default="default")
    parser.add_argument("--out", default="-")
    args = parser.parse_args()
    resources = ingest(args.dataset, Path(args.store))
    store, engine = resources["store"].get_store(), resources["catalog_db"].engine
    out = sys.stdout if args.out == "-" else open(args.out, "a")
    for name in args.recipes.split(","):
        spec = RECIPES[name]
        config = train.PRESETS["quality"] if spec == "quality" else replace(BASE, **spec)
        train.PRESETS[f"bench-{name}"] = config
        cache = build_cache(store, catalog_photos(engine), config.image_size, log=lambda m: None)
        started = time.monotonic()
        result = build_version(store, catalog_rows(engine), BuildSettings(preset=f"bench-{name}"),
                               log=lambda m: print(f"[{name}] {m}", file=sys.stderr, flush=True))
        minutes = (time.monotonic() - started) / 60
        figures = {
            "recipe": name, "config": {k: v for k, v in asdict(config).items() if k != "loss_weights"},
            "minutes": round(minutes, 2), "training_minutes": round(result.training_seconds / 60, 2),
            "epochs_run": result.epochs_run, "parameters": result.parameters, "load": os.getloadavg(),
            "cache": {"seconds": round(cache.seconds, 1), "bytes": cache.bytes, "decoded": cache.encoded},
            "validation": {h: round(result.metrics[h]["accuracy"], 4) for h in HEADS},
            "unseen": {h: round(result.unseen_metrics[h]["accuracy"], 4) for h in HEADS},
            "trust": {h: result.trust[h]["unseen_range"] for h in HEADS},
            "calibration": result.calibration, "input_source": result.input_source, "version": result.version,
        }
        print(json.dumps(figures), file=out, flush=True)
        print(f"{name}: {minutes:.1f} min; unseen " + ", ".join(
            f"{h} {figures['unseen'][h]:.4f} (ECE {figures['trust'][h]['ece_before']:.3f}->"
            f"{figures['trust'][h]['ece_after']:.3f}, auto {figures['trust'][h]['precision']} on "
            f"{figures['trust'][h]['coverage']:.1%})" for h in HEADS) + f"; load {os.getloadavg()[0]:.2f}",
            file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
