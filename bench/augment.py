"""Benchmark: the `augmented_set` asset against a bare decode -> augment -> encode loop on all
cores, same spec, variants and images, in the same run (by hand, not in CI).

    .venv/bin/python bench/augment.py [--images 2000] [--variants 2] [--repeats 3]

Each repeat runs the bare loop, then the asset (another seed each time, so the asset does the
work again rather than finding its output in place); the ratios are of each pair.

Goal (issue 21): the asset's augment loop >= 0.9x the bare loop. The asset also reads from and writes to the store and
writes a manifest and a contact sheet; the bare loop works on bytes already in memory.
"""

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

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

from fashion_assets.augmented_sets.assets import augmented_set
from fashion_assets.augmented_sets.augment import DEFAULT_SPEC, augment_image, build_pipeline
from fashion_assets.image_sets.export import read_manifest

_pipeline = None


def _init():
    global _pipeline
    import cv2

    cv2.setNumThreads(1)
    _pipeline = build_pipeline(DEFAULT_SPEC)


def _work(job):
    product_id, data, variants = job
    return len(augment_image(_pipeline, data, product_id, variants, 0))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(DEFAULT_DATASET))
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--variants", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    add_json_argument(parser)
    args = parser.parse_args()
    query = f"SELECT id FROM product_images ORDER BY id LIMIT {args.images}"
    resources, instance, _ = local_catalog(args.dataset, query)
    store = resources["store"].get_store()
    rows = read_manifest(store, "bench").select(["id", "key"]).to_pylist()
    jobs = [(r["id"], store.get_bytes(r["key"]), args.variants) for r in rows]
    cores = os.cpu_count()

    bare, loop, whole = [], [], []
    for repeat in range(args.repeats):
        started = time.perf_counter()
        with ProcessPoolExecutor(cores, mp_context=get_context("forkserver"), initializer=_init) as pool:
            assert sum(pool.map(_work, jobs, chunksize=16)) == len(jobs) * args.variants
        bare.append(len(jobs) / (time.perf_counter() - started))

        started = time.perf_counter()
        config = {"variants": args.variants, "seed": repeat}
        result = dg.materialize([augmented_set], partition_key="bench", resources=resources, instance=instance,
                                run_config={**QUIET, "ops": {"augmented_set": {"config": config}}})
        whole.append(len(jobs) / (time.perf_counter() - started))
        loop.append(metadata(result)["rate_images_per_s"])
    load = os.getloadavg()
    print(f"{len(jobs):,} images x {args.variants} variants, {cores} cores, default spec, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; medians of {args.repeats} repeats")
    print(f"  bare decode->augment->encode loop   {summary(bare)}")
    print(f"  augmented_set asset (augment loop)  {summary(loop)}   {ratios(loop, bare)} (target >= 0.9x)")
    print(f"  augmented_set, whole step           {summary(whole)}   {ratios(whole, bare)} "
          "(incl. manifest, contact sheet, run start)")
    write_figures(args.json, {"images": len(jobs), "bare": bare, "loop": loop, "whole": whole,
                              "loop_vs_bare": pairwise(loop, bare)})


if __name__ == "__main__":
    main()
