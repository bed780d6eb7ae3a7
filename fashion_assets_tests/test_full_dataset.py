"""The real catalog: 44k products and 8,448 photos from ../shared (skipped where it is absent)."""

import csv
import time

import dagster as dg
import pytest

from fashion_assets.catalog.assets import product_images, products
from fashion_assets.catalog.styles_csv import ParseStats, parse_styles

pytestmark = pytest.mark.full_dataset


def kaggle_published_format(source, target, n_commas=22):
    """Write the catalog as Kaggle publishes it: no quoting, a BOM, CRLF, and 22 names with commas."""
    with open(source, newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    with_comma = {}
    for row in rows[1000 : 1000 + 50 * n_commas : 50]:
        row[-1] = row[-1].replace(" ", ", ", 1)
        with_comma[int(row[0])] = row[-1]
    lines = [",".join(header)] + [",".join(r).replace('"', "") for r in rows]
    target.write_bytes(b"\xef\xbb\xbf" + ("\r\n".join(lines) + "\r\n").encode("utf-8"))
    return len(rows), with_comma


def test_published_kaggle_file_loses_no_row(shared_dataset, tmp_path):
    n_rows, with_comma = kaggle_published_format(shared_dataset / "styles.csv", tmp_path / "styles.csv")
    stats = ParseStats()
    rows = {r["id"]: r for r in parse_styles(tmp_path / "styles.csv", stats)}
    assert len(rows) == n_rows and not stats.rejected
    assert stats.names_rejoined == 22
    assert all(rows[i]["product_display_name"] == name for i, name in with_comma.items())


def test_full_ingest_into_postgres_and_s3(shared_dataset, production):
    started = time.monotonic()
    result = dg.materialize([products, product_images], resources=production.resources(shared_dataset))
    elapsed = time.monotonic() - started
    meta = {
        e.asset_key.path[-1]: {k: v.value for k, v in e.materialization.metadata.items()}
        for e in result.get_asset_materialization_events()
    }
    n_images = len(list((shared_dataset / "images").glob("*.jpg")))
    assert meta["products"]["dagster/row_count"] > 44_000 and meta["products"]["rows_rejected"] == 0
    assert meta["product_images"]["images_stored"] == n_images == 8_448
    assert meta["product_images"]["images_skipped"] == 0
    print(
        f"\nfull ingest into PostgreSQL + S3 endpoint: {elapsed:.1f}s; products {meta['products']['rate_rows_per_s']:,.0f}"
        f" rows/s; images {meta['product_images']['rate_images_per_s']:,.0f}/s"
    )
