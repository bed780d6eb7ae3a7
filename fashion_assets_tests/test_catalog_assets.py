"""The catalog assets, materialised with real resources on both backends."""

import shutil

import dagster as dg
import pytest
import sqlalchemy as sa

from fashion_assets.catalog import assets as catalog_assets
from fashion_assets.catalog.assets import product_images, products
from fashion_assets.core.database import masked
from fashion_assets.layout import IMAGES_REJECTED_REPORT, PRODUCTS_REJECTED_REPORT

from .catalog_files import make_dataset, product_line, write_styles


def materialize(backend, dataset, selection=(products, product_images), instance=None, raise_on_error=True):
    return dg.materialize(
        list(selection), resources=backend.resources(dataset), instance=instance, raise_on_error=raise_on_error
    )


def metadata(result, key):
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(key)]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def all_text(result) -> str:
    """Everything a run wrote to its event log: messages, metadata, errors."""
    return "\n".join(repr(e) for e in result.all_events)


def table(backend, name):
    with backend.engine().connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.text(f"SELECT * FROM {name} ORDER BY id"))]


def test_catalog_ingest(backend, tmp_path):
    dataset = make_dataset(tmp_path / "dataset")
    result = materialize(backend, dataset)
    assert result.success

    rows = table(backend, "products")
    assert [r["id"] for r in rows] == list(range(1, 13))
    assert rows[2]["product_display_name"] == "Nike Men, Women Unisex Cap"
    assert rows[3]["season"] is None and rows[4]["year"] is None
    meta = metadata(result, "products")
    assert meta["dagster/row_count"] == 12 and meta["rows_rejected"] == 3 and meta["names_rejoined"] == 1
    assert "duplicate id 2" in meta["rejected"] and "expected 10 fields" in meta["rejected"]
    report = backend.store().get_bytes(PRODUCTS_REJECTED_REPORT).decode()
    assert report.splitlines()[0] == "line,reason,record" and len(report.splitlines()) == 4

    images = {r["id"]: r for r in table(backend, "product_images")}
    assert sorted(images) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 99]
    assert (images[7]["mode"], images[8]["mode"], images[9]["format"], images[9]["mode"]) == ("L", "CMYK", "PNG", "P")
    assert images[1]["key"] == "catalog/images/1.jpg" and images[1]["width"] == 48 and images[1]["height"] == 64
    store = backend.store()
    for image in images.values():
        assert store.get_bytes(image["key"]) == (dataset / "images" / f"{image['id']}.jpg").read_bytes()
    assert not store.exists("catalog/images/10.jpg")

    meta = metadata(result, "product_images")
    assert meta["images_stored"] == 10 and meta["images_uploaded"] == 10 and meta["images_skipped"] == 3
    assert meta["images_without_product"] == 1 and meta["products_without_image"] == 3  # 10, 11, 12
    for file, reason in [("10.jpg", "corrupt image"), ("11.jpg", "empty file"), ("12.jpg", "not an image")]:
        assert f"| {file} | {reason}" in meta["skipped"]
    assert len(backend.store().get_bytes(IMAGES_REJECTED_REPORT).decode().splitlines()) == 4

    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {"no_rejected_rows": False, "all_images_readable": False, "every_image_has_product": False,
                      "no_exact_duplicates": False}
    # Products 3 and 4 are generated in colours that JPEG quantises to the same bytes.
    [duplicates] = [c for c in result.get_asset_check_evaluations() if c.check_name == "no_exact_duplicates"]
    assert duplicates.metadata["products_sharing_a_photo"].value == 2
    assert "| 3, 4 |" in duplicates.metadata["examples"].value


def test_rerun_moves_nothing_and_picks_up_changes(backend, tmp_path):
    dataset = make_dataset(tmp_path / "dataset")
    materialize(backend, dataset)
    again = metadata(materialize(backend, dataset), "product_images")
    assert again["images_uploaded"] == 0 and again["images_unchanged"] == 10 and again["bytes_uploaded"] == 0

    shutil.copyfile(dataset / "images" / "1.jpg", dataset / "images" / "2.jpg")  # one image changed
    (dataset / "images" / "12.jpg").unlink()
    changed = metadata(materialize(backend, dataset), "product_images")
    assert changed["images_uploaded"] == 1 and changed["images_skipped"] == 2
    assert backend.store().get_bytes("catalog/images/2.jpg") == (dataset / "images" / "1.jpg").read_bytes()


def test_failed_run_leaves_the_previous_catalog(backend, tmp_path, monkeypatch):
    dataset = make_dataset(tmp_path / "dataset")
    materialize(backend, dataset)
    before = table(backend, "products")

    # A new catalog whose ingest dies part-way, after several chunks were already inserted.
    write_styles(dataset / "styles.csv", [product_line(i) for i in range(1, 12_000)])
    real_parse = catalog_assets.parse_styles

    def dies_after_11000_rows(path, stats):
        for n, row in enumerate(real_parse(path, stats)):
            if n == 11_000:
                raise OSError("disk went away")
            yield row

    monkeypatch.setattr(catalog_assets, "parse_styles", dies_after_11000_rows)
    result = materialize(backend, dataset, selection=[products], raise_on_error=False)
    assert not result.success and "disk went away" in all_text(result)
    assert table(backend, "products") == before


def test_passwords_never_reach_the_event_log(production, tmp_path):
    result = materialize(production, make_dataset(tmp_path / "dataset"))
    text = all_text(result)
    assert production.secrets and all(secret not in text for secret in production.secrets)
    assert metadata(result, "products")["database"] == masked(production.catalog_url)
    assert ":***@" in metadata(result, "products")["database"]


@pytest.mark.parametrize(
    "override, variable",
    [
        ({"catalog_db": "postgresql+psycopg2://u:topsecret@127.0.0.1:1/db"}, "FASHION_CATALOG_URL"),
        ({"catalog_db": "nosuchdialect://x"}, "FASHION_CATALOG_URL"),
        ({"store": "s3://bucket-that-is-not-there/p"}, "FASHION_STORE_URL"),
        ({"catalog_source": "EMPTY"}, "FASHION_DATASET_DIR"),
    ],
)
def test_wrong_settings_fail_fast_naming_the_variable(production, tmp_path, override, variable):
    from fashion_assets.resources import CatalogDatabase, CatalogSource, S3StoreResource

    resources = production.resources(make_dataset(tmp_path / "dataset"))
    if "catalog_db" in override:
        resources["catalog_db"] = CatalogDatabase(url=override["catalog_db"])
    if "store" in override:
        resources["store"] = S3StoreResource(url=override["store"], endpoint_url=production.endpoint_url)
    if "catalog_source" in override:
        (tmp_path / "empty").mkdir()
        resources["catalog_source"] = CatalogSource(dataset_dir=str(tmp_path / "empty"))
    result = dg.materialize([products], resources=resources, raise_on_error=False)
    assert not result.success
    text = all_text(result)
    assert variable in text and "topsecret" not in text
