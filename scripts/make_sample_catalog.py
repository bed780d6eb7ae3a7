"""Rebuild examples/sample-catalog/ from the full dataset (run by hand; the result is committed).

A category-balanced sample: up to PER_TYPE products with a photo from every article type, so
`make demo` trains and tags across the whole taxonomy, plus some products without a photo, as
in real catalogs. Deterministic (fixed seed), so re-running it gives the same files.

    python scripts/make_sample_catalog.py ../shared/datasets/fashion-product-images-small
"""

import csv
import random
import shutil
import sys
from collections import defaultdict
from pathlib import Path

PER_TYPE = 25
WITHOUT_IMAGE = 300
SEED = 20261123


def main(source: Path, target: Path) -> None:
    with open(source / "styles.csv", newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = [r for r in reader if r]
    images = {int(p.stem) for p in (source / "images").glob("*.jpg")}
    rng = random.Random(SEED)
    by_type = defaultdict(list)
    for row in rows:
        if int(row[0]) in images:
            by_type[row[4]].append(row)
    chosen = []
    for article_type in sorted(by_type):
        group = sorted(by_type[article_type], key=lambda r: int(r[0]))
        chosen += rng.sample(group, min(PER_TYPE, len(group)))
    no_image = [r for r in rows if int(r[0]) not in images]
    chosen += rng.sample(no_image, WITHOUT_IMAGE)
    chosen.sort(key=lambda r: int(r[0]))

    if target.exists():
        shutil.rmtree(target)
    (target / "images").mkdir(parents=True)
    with open(target / "styles.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(chosen)
    for row in chosen:
        if int(row[0]) in images:
            shutil.copyfile(source / "images" / f"{row[0]}.jpg", target / "images" / f"{row[0]}.jpg")
    print(f"{len(chosen)} products, {len(chosen) - WITHOUT_IMAGE} with a photo, {len(by_type)} article types")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).resolve().parents[1] / "examples" / "sample-catalog")
