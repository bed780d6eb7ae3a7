"""Benchmark: the `predictions` asset against bare `model.predict` on the same images preloaded
as one uint8 tensor, same model and batch size, in the same run (by hand, not in CI).

    .venv/bin/python bench/predict.py [--images 4000] [--batch-size 128] [--repeats 3]

Each repeat runs every baseline, then the asset, back to back; the ratios are of each repeat's
pair (their median), since on 2 shared cores the same loop's rate moves by up to 2x.

Uses the newest trained model if --model-dir points at a store that has one; otherwise an
untrained network of the production architecture (speed does not depend on the weights).
Goals (issue 21): asset >= 0.8x bare `model.predict` and >= 0.95x bare decode + predict. The asset also reads each image from the store, decodes and resizes
it (tf.data, in parallel), and writes the table and the Parquet file.
"""

import argparse
import os
import tempfile
import time

import dagster as dg
from common import (
    DEFAULT_DATASET,
    QUIET,
    add_json_argument,
    local_catalog,
    metadata,
    pairwise,
    ratios,
    summary,
    write_figures,
)

from fashion_assets.classifier import artifacts
from fashion_assets.classifier.images import batches, load_array
from fashion_assets.classifier.labels import HEADS
from fashion_assets.classifier.network import build_classifier
from fashion_assets.core.storage import LocalObjectStore
from fashion_assets.image_sets.export import read_manifest
from fashion_assets.predictions.assets import predictions


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(DEFAULT_DATASET))
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--model-dir", help="a store folder with models/fashion_classifier/LATEST")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    add_json_argument(parser)
    args = parser.parse_args()
    resources, instance, work = local_catalog(args.dataset, f"SELECT id FROM product_images ORDER BY id LIMIT {args.images}")
    store = resources["store"].get_store()
    if args.model_dir:
        with tempfile.TemporaryDirectory() as tmp:
            source = artifacts.load_latest(LocalObjectStore(args.model_dir), tmp)
            labels, model = source.labels, source.keras_model
    else:
        classes = {"master_category": 5, "sub_category": 21, "article_type": 40}
        model = build_classifier(classes, args.image_size)
        labels = artifacts.labels_document_from_classes({h: [f"{h}{i}" for i in range(n)] for h, n in classes.items()},
                                                        args.image_size)
    artifacts.save_model(store, model, labels, "bench")
    size = labels["image_size"]

    rows = read_manifest(store, "bench").select(["key"]).to_pylist()
    x = load_array(((i, store.get_bytes(r["key"])) for i, r in enumerate(rows)), len(rows), size)
    model.predict(x[: args.batch_size * 2], batch_size=args.batch_size, verbose=0)  # warm-up
    forward = artifacts.keras_predict(model)  # the compiled forward pass the asset uses
    datas = [store.get_bytes(r["key"]) for r in rows]
    bare, compiled, decode_predict, asset, whole = [], [], [], [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        model.predict(x, batch_size=args.batch_size, verbose=0)
        bare.append(len(x) / (time.perf_counter() - started))
        started = time.perf_counter()
        for i in range(0, len(x), args.batch_size):
            forward(x[i:i + args.batch_size])
        compiled.append(len(x) / (time.perf_counter() - started))
        # The bare batch path: the same bytes, decoded + resized by tf.data, then the compiled forward.
        started = time.perf_counter()
        for _, images in batches(enumerate(datas), size, args.batch_size):
            forward(images)
        decode_predict.append(len(x) / (time.perf_counter() - started))

        started = time.perf_counter()
        run_config = {**QUIET, "ops": {"predictions": {"config": {"batch_size": args.batch_size}}}}
        result = dg.materialize([predictions], partition_key="bench", resources=resources, instance=instance,
                                run_config=run_config)
        whole.append(len(x) / (time.perf_counter() - started))
        asset.append(metadata(result)["rate_images_per_s"])
    import tensorflow as tf

    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} cores; "
          f"medians of {args.repeats} repeats")
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    print(f"{len(x):,} images at {size}px, batch {args.batch_size}, {model.count_params():,} parameters, on {device}")
    print(f"  bare model.predict on a preloaded tensor  {summary(bare)}")
    print(f"  compiled forward on the same tensor       {summary(compiled)}")
    print(f"  bare decode + predict (bytes in memory)   {summary(decode_predict)}")
    print(f"  predictions asset (read+decode+predict)   {summary(asset)}")
    print(f"      vs model.predict                      {ratios(asset, bare)}  (target >= 0.8x)")
    print(f"      vs the compiled forward               {ratios(asset, compiled)}")
    print(f"      vs bare decode + predict              {ratios(asset, decode_predict)}  (target >= 0.95x)")
    print(f"  predictions, whole step                   {summary(whole)}  "
          "(incl. model load, table and Parquet writes, run start)")
    assert set(HEADS) <= set(labels["heads"])
    write_figures(args.json, {"images": len(x), "device": device, "bare": bare, "decode_predict": decode_predict,
                              "asset": asset, "asset_vs_bare": pairwise(asset, bare),
                              "asset_vs_decode_predict": pairwise(asset, decode_predict)})


if __name__ == "__main__":
    main()
