"""The Dagster CLI and our own CLI as real processes, configured only through the environment."""

import json
import os
import subprocess
import sys
from pathlib import Path

from .catalog_files import make_dataset

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
FASHION_VARS = ("FASHION_DATASET_DIR", "FASHION_CATALOG_URL", "FASHION_STORE_URL", "FASHION_S3_ENDPOINT_URL")


def run(args, env_extra, tmp_path, check=True):
    env = {k: v for k, v in os.environ.items() if k not in FASHION_VARS}
    env["DAGSTER_HOME"] = str(tmp_path / "dagster_home")
    Path(env["DAGSTER_HOME"]).mkdir(exist_ok=True)
    env.update(env_extra)
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def test_definitions_validate(tmp_path):
    result = run([BIN / "dagster", "definitions", "validate", "-m", "fashion_assets.definitions"], {}, tmp_path)
    assert "Validation successful" in result.stdout + result.stderr


def test_the_dg_cli_loads_lists_and_launches_the_same_code_location(tmp_path):
    """`dg check defs`, `dg list defs`, `dg launch` on this project (``[tool.dg]`` in
    pyproject.toml), as a user runs them with the virtual environment active."""
    dataset = make_dataset(tmp_path / "dataset")
    env = {"VIRTUAL_ENV": str(BIN.parent), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "FASHION_DATASET_DIR": str(dataset), "FASHION_CATALOG_URL": f"sqlite:///{tmp_path / 'catalog.sqlite'}",
           "FASHION_STORE_URL": str(tmp_path / "store")}
    dg = [BIN / "dg"]
    target = ["--target-path", str(ROOT)]
    checked = run([*dg, "check", "defs", *target], env, tmp_path)
    assert "All definitions loaded successfully" in checked.stdout + checked.stderr

    listed = json.loads(run([*dg, "list", "defs", "--json", *target], env, tmp_path).stdout)
    assert [a["asset_key"] for a in listed["assets"]] == [
        "augmented_set", "classifier_inputs", "fashion_classifier", "image_set", "labels", "predictions",
        "product_images", "products", "serving_model"]
    assert sorted(s["name"] for s in listed["sensors"]) == ["fashion_automation", "image_query_sensor"]
    assert "image_set:image_set_matches_manifest" in [c["key"] for c in listed["asset_checks"]]

    launched = run([*dg, "launch", "--assets", "products", *target], env, tmp_path)
    assert "RUN_SUCCESS" in launched.stdout + launched.stderr
    summary = run([BIN / "fashion-assets", "summary"], env, tmp_path).stdout
    assert "12 rows" in summary and "3 rejected" in summary


def test_materialize_and_summary_from_the_environment(backend, tmp_path):
    env = backend.env(make_dataset(tmp_path / "dataset"))
    run([BIN / "dagster", "asset", "materialize", "-m", "fashion_assets.definitions", "--select", "products"],
        env, tmp_path)
    run([BIN / "dagster", "asset", "materialize", "-m", "fashion_assets.definitions", "--select", "product_images"],
        env, tmp_path)
    summary = run([BIN / "fashion-assets", "summary"], env, tmp_path).stdout
    assert "12 rows" in summary and "3 rejected" in summary and "10 images" in summary
    assert backend.store().exists("catalog/images/1.jpg")
    for secret in backend.secrets:
        assert secret not in summary


def test_embedded_default_needs_no_configuration(tmp_path):
    """With no FASHION_* variable, `products` loads the repo's sample into SQLite under data/."""
    result = run([BIN / "dagster", "asset", "materialize", "-m", "fashion_assets.definitions", "--select", "products"],
                 {}, tmp_path)
    assert "RUN_SUCCESS" in result.stdout + result.stderr
    summary = run([BIN / "fashion-assets", "summary"], {}, tmp_path).stdout
    assert "examples/sample-catalog/styles.csv" in summary and "sqlite:///" in summary


def test_a_store_url_with_an_unknown_scheme_names_the_variable(tmp_path):
    result = run([BIN / "dagster", "definitions", "validate", "-m", "fashion_assets.definitions"],
                 {"FASHION_STORE_URL": "gs://bucket/x"}, tmp_path, check=False)
    assert result.returncode != 0 and "FASHION_STORE_URL=gs://bucket/x" in result.stdout + result.stderr


def test_summary_without_a_catalog_says_what_to_do(tmp_path):
    result = run([BIN / "fashion-assets", "summary"], {}, tmp_path, check=False)
    assert result.returncode == 1 and "make demo" in result.stderr


def test_query_commands_and_partition_materialisation(backend, tmp_path):
    env = backend.env(make_dataset(tmp_path / "dataset"))
    dagster = [BIN / "dagster", "asset", "materialize", "-m", "fashion_assets.definitions"]
    cli = BIN / "fashion-assets"
    run([*dagster, "--select", "products,product_images"], env, tmp_path)

    refused = run([cli, "query", "add", "evil", "--sql",
                   "WITH d AS (DELETE FROM products RETURNING id) SELECT id FROM d"], env, tmp_path, check=False)
    assert refused.returncode == 2 and "only reading is allowed" in refused.stderr
    assert run([cli, "query", "add", "Bad_Name", "--sql", "SELECT id FROM products"], env, tmp_path,
               check=False).stderr.count("must be a slug") == 1

    sql_file = tmp_path / "jeans.sql"
    sql_file.write_text("SELECT id, base_colour FROM products WHERE article_type = 'Jeans'\n")
    added = run([cli, "query", "add", "jeans", "--file", sql_file], env, tmp_path).stdout
    assert "columns: id, base_colour" in added and "--partition jeans" in added
    assert "jeans" in run([cli, "query", "list"], env, tmp_path).stdout
    assert "article_type = 'Jeans'" in run([cli, "query", "show", "jeans"], env, tmp_path).stdout

    run([*dagster, "--select", "image_set", "--partition", "jeans"], env, tmp_path)
    store = backend.store()
    assert [o.key for o in store.list("image-sets/jeans/images/")] == [
        "image-sets/jeans/images/1.jpg", "image-sets/jeans/images/5.jpg", "image-sets/jeans/images/9.jpg"]
    assert store.exists("image-sets/jeans/manifest.parquet")

    removed = run([cli, "query", "remove", "jeans", "--purge"], env, tmp_path).stdout
    # 3 images, the manifest, the contact sheet, version 1's manifest and record (versions/000001-<digest>/)
    assert "7 objects under image-sets/jeans/ deleted" in removed
    assert list(store.list("image-sets/jeans/")) == [] and not store.exists("queries/jeans.sql")
    assert "jeans" not in run([cli, "query", "list"], env, tmp_path).stdout


def predictions_row(name: str, product_id: int, auto: tuple) -> dict:
    import datetime as dt

    from fashion_assets.classifier.labels import HEADS

    return {"image_set": name, "source": "original", "id": product_id, "variant": 0, "model_version": "v-summary",
            **{f"{h}_label": "other" for h in HEADS}, **{f"{h}_confidence": 0.5 for h in HEADS},
            **{f"{h}_top5": '[["other", 0.5]]' for h in HEADS}, **{f"{h}_auto": a for h, a in zip(HEADS, auto)},
            "created_at": dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)}


def test_summary_shows_auto_tag_coverage_per_set(tmp_path):
    """Per materialised set with rows in table predictions, per head: images tagged automatically."""
    import dagster as dg

    from fashion_assets.catalog.assets import product_images, products
    from fashion_assets.image_sets.assets import image_queries, image_set
    from fashion_assets.image_sets.registry import QueryRegistry
    from fashion_assets.predictions.table import predictions

    from .conftest import embedded_backend

    backend = embedded_backend(tmp_path)
    env = backend.env(make_dataset(tmp_path / "dataset"))
    (tmp_path / "dagster_home").mkdir()
    resources = backend.resources(env["FASHION_DATASET_DIR"])
    registry = QueryRegistry(backend.store())
    sets = {"all": "SELECT id FROM products", "two": "SELECT id FROM products WHERE id IN (2, 6)",
            "unpredicted": "SELECT id FROM products WHERE id < 3"}
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster_home")) as instance:
        assert dg.materialize([products, product_images], resources=resources, instance=instance,
                              run_config=quiet).success
        for name, sql in sets.items():
            registry.put(name, sql)
        instance.add_dynamic_partitions(image_queries.name, list(sets))
        for name in sets:
            assert dg.materialize([image_set], partition_key=name, resources=resources, instance=instance,
                                  run_config=quiet).success
    # all: master automatic on all 9, sub on 1..5, article on 8 and 9 (1: written before the flag).
    rows = [predictions_row("all", i, (True, i <= 5, None if i == 1 else i >= 8)) for i in range(1, 10)]
    rows += [predictions_row("two", 2, (True, None, False)), predictions_row("two", 6, (False, None, True))]
    with backend.engine().begin() as conn:
        conn.execute(predictions.insert(), rows)

    summary = run([BIN / "fashion-assets", "summary"], env, tmp_path).stdout.splitlines()
    start = summary.index("Auto-tags (per head: images whose calibrated confidence reaches the model's threshold)")
    assert summary[start + 1:start + 4] == [
        f"  {'all':28} master_category 9/9 (100.0%), sub_category 5/9 (55.6%), article_type 2/9 (22.2%)"
        "   model v-summary",
        f"  {'two':28} master_category 1/2 (50.0%), sub_category 0/2 (0.0%), article_type 1/2 (50.0%)"
        "   model v-summary",
        ""]
