"""Benchmark: the `augmented_set` asset against a bare decode -> augment -> encode loop on all
cores, same spec, variants and images, in the same run (by hand, not in CI).

    .venv/bin/python bench/augment.py [--images 2000] [--variants 2]

Target: asset >= 0.8x the bare loop. The asset also reads from and writes to the store and
writes a manifest and a contact sheet; the bare loop works on bytes already in memory.
"""

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import dagster as dg
from common import DEFAULT_DATASET, QUIET, local_catalog, metadata

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
    args = parser.parse_args()
    query = f"SELECT id FROM product_images ORDER BY id LIMIT {args.images}"
    resources, instance, _ = local_catalog(args.dataset, query)
    store = resources["store"].get_store()
    rows = read_manifest(store, "bench").select(["id", "key"]).to_pylist()
    jobs = [(r["id"], store.get_bytes(r["key"]), args.variants) for r in rows]
    cores = os.cpu_count()

    started = time.perf_counter()
    with ProcessPoolExecutor(cores, mp_context=get_context("forkserver"), initializer=_init) as pool:
        assert sum(pool.map(_work, jobs, chunksize=16)) == len(jobs) * args.variants
    bare = len(jobs) / (time.perf_counter() - started)

    started = time.perf_counter()
    result = dg.materialize([augmented_set], partition_key="bench", resources=resources, instance=instance,
                            run_config={**QUIET, "ops": {"augmented_set": {"config": {"variants": args.variants}}}})
    wall = time.perf_counter() - started
    meta = metadata(result)
    print(f"{len(jobs):,} images x {args.variants} variants, {cores} cores, default spec")
    print(f"  bare decode->augment->encode loop   {bare:8.1f} images/s")
    print(f"  augmented_set asset (augment loop)  {meta['rate_images_per_s']:8.1f} images/s   "
          f"ratio {meta['rate_images_per_s'] / bare:.2f}x (target >= 0.8x)")
    print(f"  augmented_set, whole step           {len(jobs) / wall:8.1f} images/s   "
          f"ratio {len(jobs) / wall / bare:.2f}x  ({wall:.1f}s incl. manifest, contact sheet, run start)")


if __name__ == "__main__":
    main()
