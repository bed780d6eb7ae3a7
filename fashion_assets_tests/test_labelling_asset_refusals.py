"""The ``labels`` asset reports the tasks the import refused (issue 22): materialised with config
``file`` on a Label Studio export of two good and two bad tasks, its metadata counts the refused
tasks and names each with the reason, and only the good tasks' labels are written; an export
whose every task is refused fails the materialisation with the importer's message and writes
nothing. On both backends, with the real database. Also: ``fashion-assets labels import``
records the same metadata in the instance (embedded backend; the command line is the same code).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from fashion_assets.catalog.tables import products
from fashion_assets.labelling.assets import labels as labels_asset
from fashion_assets.labelling.table import labels as labels_table
from fashion_assets.resources import CatalogDatabase

BIN = Path(sys.executable).parent
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
ID_RULE = "(a 64-bit integer, or a string of its digits)"
REASONS = [  # the two bad tasks of EXPORT, as the import names them
    ("task 12", f"data.product_id is 12.7, not a product id {ID_RULE}"),
    ("task 13", "annotations[1].result[0].value.choices is [\"Tshirts\", \"Heels\"], not one choice "
                "(article_type is single-choice)"),
]
TABLE = ("| task | why refused |\n|---|---|\n"
         + "\n".join(f"| {task} | {why} |" for task, why in REASONS))


def annotation(head: str, label, at: str = "2026-11-02T10:00:00Z") -> dict:
    choices = label if isinstance(label, list) else [label]
    return {"id": 1, "completed_by": 1, "was_cancelled": False, "created_at": at, "updated_at": at,
            "result": [{"from_name": head, "to_name": "image", "type": "choices", "value": {"choices": choices}}]}


def task(task_id, product_id, *annotations) -> dict:
    return {"id": task_id, "data": {"image": "/data/local-files/?d=x.jpg", "product_id": product_id},
            "annotations": list(annotations)}


EXPORT = [
    task(10, 1, annotation("article_type", "Tshirts")),
    task(11, "2", annotation("master_category", "Footwear", "2026-11-02T12:00:00+02:00")),  # digits: product 2
    task(12, 12.7, annotation("article_type", "Tshirts")),  # a float id: refused
    task(13, 1, annotation("sub_category", "Topwear"), annotation("article_type", ["Tshirts", "Heels"])),
]


def catalog(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(products.insert(), [
            {"id": 1, "master_category": "Apparel", "sub_category": "Topwear", "article_type": "Tshirts"},
            {"id": 2, "master_category": "Footwear", "sub_category": "Shoes", "article_type": "Heels"}])


def stored(engine: sa.Engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(labels_table.c.id, labels_table.c.head, labels_table.c.label,
                                                         labels_table.c.task_id)
                                               .order_by(labels_table.c.id, labels_table.c.head))]


def materialize(backend, file: Path) -> dg.ExecuteInJobResult:
    return dg.materialize([labels_asset], resources={"catalog_db": CatalogDatabase(url=backend.catalog_url)},
                          run_config={**QUIET, "ops": {"labels": {"config": {"file": str(file)}}}},
                          raise_on_error=False)


def test_the_asset_counts_and_names_refused_tasks_and_writes_only_the_good_ones(backend, tmp_path):
    engine = backend.engine()
    catalog(engine)
    export = tmp_path / "export.json"
    export.write_text(json.dumps(EXPORT))

    result = materialize(backend, export)
    assert result.success
    [event] = result.get_asset_materialization_events()
    metadata = {k: v.value for k, v in event.materialization.metadata.items()}
    assert (metadata["refused_tasks"], metadata["refused"]) == (2, TABLE)
    assert isinstance(event.materialization.metadata["refused"], dg.MarkdownMetadataValue)
    assert (metadata["imported_annotations"], metadata["imported_written"], metadata["dagster/row_count"]) == (2, 2, 2)
    # Task 13's good annotation (sub_category Topwear) is not written either: a refused task is whole.
    assert stored(engine) == [(1, "article_type", "Tshirts", 10), (2, "master_category", "Footwear", 11)]

    # No refusal: the count is 0 and the list says none.
    clean = tmp_path / "clean.json"
    clean.write_text(json.dumps(EXPORT[:2]))
    result = materialize(backend, clean)
    assert result.success
    [event] = result.get_asset_materialization_events()
    assert (event.materialization.metadata["refused_tasks"].value,
            event.materialization.metadata["refused"].value) == (0, "_none_")


def test_every_task_refused_fails_the_asset_with_the_importers_message(backend, tmp_path):
    engine = backend.engine()
    catalog(engine)
    export = tmp_path / "bad.json"
    export.write_text(json.dumps(EXPORT[2:]))

    result = materialize(backend, export)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    error = failure.step_failure_data.error
    assert error.cls_name == "Failure"
    assert failure.step_failure_data.user_failure_data.description == (
        f"{export}: nothing imported, every task was refused (2): "
        + "; ".join(f"{task}: {why}" for task, why in REASONS))
    assert result.get_asset_materialization_events() == []
    assert stored(engine) == []


def test_the_command_line_records_the_refused_tasks(tmp_path):
    from .conftest import embedded_backend

    backend = embedded_backend(tmp_path)
    catalog(backend.engine())
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("")  # an instance of defaults, said so (no warning on stderr)
    export = tmp_path / "export.json"
    export.write_text(json.dumps(EXPORT))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASHION_", "DAGSTER_HOME"))}
    env |= {"FASHION_CATALOG_URL": backend.catalog_url, "FASHION_STORE_URL": backend.store_url,
            "DAGSTER_HOME": str(home)}
    done = subprocess.run([BIN / "fashion-assets", "labels", "import", str(export)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert done.stdout.splitlines()[-1] == "Recorded as a materialisation of asset `labels`"
    with dg.DagsterInstance.from_config(str(home)) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("labels"))
        recorded = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    assert (recorded["refused_tasks"], recorded["refused"], recorded["imported_written"]) == (2, TABLE, 2)
    assert stored(backend.engine()) == [(1, "article_type", "Tshirts", 10), (2, "master_category", "Footwear", 11)]
