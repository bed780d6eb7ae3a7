"""A Label Studio export of the wrong shape (issue 22): every field the import reads, given the
wrong type, refuses its task (counted and named with the reason, nothing of it written) while the
other tasks go in; ids are never truncated or rounded; a file with nothing valid left fails. On
both backends, with the real database; the command line as a real process.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from fashion_assets.catalog.tables import products
from fashion_assets.labelling.importer import import_labels
from fashion_assets.labelling.table import labels

BIN = Path(sys.executable).parent
ID_RULE = "(a 64-bit integer, or a string of its digits)"
CLASSES = {1: ("Apparel", "Topwear", "Tshirts"), 2: ("Footwear", "Shoes", "Heels"), 3: ("Apparel", "Topwear", "Jeans")}


def catalog(backend) -> sa.Engine:
    engine = backend.engine()
    with engine.begin() as conn:
        conn.execute(products.insert(), [{"id": i, "master_category": m, "sub_category": s, "article_type": a}
                                         for i, (m, s, a) in CLASSES.items()])
    return engine


def region(head="article_type", choices=("Tshirts",), **changed) -> dict:
    return {"from_name": head, "to_name": "image", "type": "choices", "value": {"choices": list(choices)},
            **changed}


def annotation(*regions, at="2026-11-02T10:00:00Z", **changed) -> dict:
    return {"id": 1, "completed_by": 1, "was_cancelled": False, "created_at": at, "updated_at": at,
            "result": list(regions) or [region()], **changed}


def task(task_id, product_id, *annotations, **changed) -> dict:
    return {"id": task_id, "data": {"image": "/data/local-files/?d=1.jpg", "product_id": product_id},
            "annotations": list(annotations) or [annotation()], **changed}


def with_field(path: list, value) -> dict:
    """A good task (id 100 + n) for product 1 with one field, at ``path`` under the task, replaced."""
    changed = copy.deepcopy(task(None, 1))
    where = changed
    for key in path[:-1]:
        where = where[key]
    where[path[-1]] = value
    return changed


# (the task, what the import says of it), in the file's order; each task's id is its number.
BAD = [
    ("a task", "task #{n}: the task is \"a task\", not an object"),
    ([1, 2], "task #{n}: the task is [1, 2], not an object"),
    (["data"], "product 1", "data is \"product 1\", not an object"),
    (["data"], None, "data is null, not an object"),
    (["data", "product_id"], 12.7, f"data.product_id is 12.7, not a product id {ID_RULE}"),
    (["data", "product_id"], 1e20, f"data.product_id is 1e+20, not a product id {ID_RULE}"),
    (["data", "product_id"], 2**63, f"data.product_id is 9223372036854775808, not a product id {ID_RULE}"),
    (["data", "product_id"], True, f"data.product_id is true, not a product id {ID_RULE}"),
    (["data", "product_id"], "12.0", f"data.product_id is \"12.0\", not a product id {ID_RULE}"),
    (["data", "product_id"], " 1", f"data.product_id is \" 1\", not a product id {ID_RULE}"),
    (["data", "product_id"], [1], f"data.product_id is [1], not a product id {ID_RULE}"),
    (["data", "product_id"], {"id": 1}, f"data.product_id is {{\"id\": 1}}, not a product id {ID_RULE}"),
    (["data", "product_id"], float("nan"), f"data.product_id is NaN, not a product id {ID_RULE}"),
    (["annotations"], {"result": []}, "annotations is {\"result\": []}, not an array"),
    (["annotations"], "none", "annotations is \"none\", not an array"),
    (["annotations", 0], "yes", "annotations[0] is \"yes\", not an object"),
    (["annotations", 0, "was_cancelled"], "no", "annotations[0].was_cancelled is \"no\", not true or false"),
    (["annotations", 0, "result"], "Tshirts", "annotations[0].result is \"Tshirts\", not an array"),
    (["annotations", 0, "result", 0], 3, "annotations[0].result[0] is 3, not an object"),
    (["annotations", 0, "result", 0, "type"], ["choices"], "annotations[0].result[0].type is [\"choices\"], "
                                                           "not a string"),
    (["annotations", 0, "result", 0, "from_name"], ["article_type"],
     "annotations[0].result[0].from_name is [\"article_type\"], not a string"),
    (["annotations", 0, "result", 0, "value"], ["Tshirts"], "annotations[0].result[0].value is [\"Tshirts\"], "
                                                            "not an object"),
    (["annotations", 0, "result", 0, "value", "choices"], "Tshirts",
     "annotations[0].result[0].value.choices is \"Tshirts\", not an array of strings"),
    (["annotations", 0, "result", 0, "value", "choices"], [["Tshirts"]],
     "annotations[0].result[0].value.choices is [[\"Tshirts\"]], not an array of strings"),
    (["annotations", 0, "result", 0, "value", "choices"], [7],
     "annotations[0].result[0].value.choices is [7], not an array of strings"),
    (["annotations", 0, "result", 0, "value", "choices"], ["Tshirts", "Jeans"],
     "annotations[0].result[0].value.choices is [\"Tshirts\", \"Jeans\"], not one choice "
     "(article_type is single-choice)"),
    (["annotations", 0, "updated_at"], 1700000000, "annotations[0].updated_at is 1700000000, not a date and time "
                                                   "(ISO 8601)"),
    (["annotations", 0, "created_at"], "yesterday", "annotations[0].created_at is \"yesterday\", not a date and "
                                                    "time (ISO 8601)"),
    (["annotations", 0, "updated_at"], "9999-12-31T23:00:00-14:00",
     "annotations[0].updated_at is \"9999-12-31T23:00:00-14:00\", not a date and time (ISO 8601)"),
    (["annotations", 0, "updated_at"], ["2026-11-02"], "annotations[0].updated_at is [\"2026-11-02\"], not a date "
                                                       "and time (ISO 8601)"),
    (["annotations", 0, "completed_by"], [1], "annotations[0].completed_by is [1], not a user (an id, an e-mail "
                                              "or an object)"),
    (["annotations", 0, "completed_by"], {"email": ["a@b"]}, "annotations[0].completed_by.email is [\"a@b\"], not "
                                                             "a string or a number"),
]


def bad_tasks() -> tuple[list, list[str]]:
    """The tasks of BAD (ids 101, 102, ...; the two that are not objects have none) and their messages."""
    tasks, messages = [], []
    for n, case in enumerate(BAD, 1):
        if len(case) == 2:
            tasks.append(case[0])
            messages.append(case[1].format(n=n))
        else:
            path, value, message = case
            tasks.append({**with_field(path, value), "id": 100 + n})
            messages.append(f"task {100 + n}: {message}")
    return tasks, messages


def stored(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(labels.c.id, labels.c.head, labels.c.label,
                                                         labels.c.task_id, labels.c.created_at)
                                               .order_by(labels.c.id, labels.c.head))]


def utc(row: tuple) -> tuple:
    """SQLite gives the time back without its zone (it was stored in UTC)."""
    at = row[-1]
    return (*row[:-1], at if at.tzinfo else at.replace(tzinfo=dt.timezone.utc))


def test_each_field_of_the_wrong_type_refuses_its_task_and_only_it(backend, tmp_path):
    engine = catalog(backend)
    bad, messages = bad_tasks()
    more_bad = [
        {"id": 1e20, "data": {"product_id": 1}},  # the id SQLite could not store (OverflowError)
        task(201, 1, annotation(at=None)),
        task(202, 3, annotation(region(choices=["Jeans"])), annotation(region(from_name=7))),  # one bad, all out
        task(203, None),
        task(204, 1, annotation(region(head="sub_category", value={"choices": "Topwear"}))),
    ]
    more_messages = [
        f"task #{len(bad) + 1}: id is 1e+20, not a task id {ID_RULE}",
        "task 201: annotations[0] has neither updated_at nor created_at",
        "task 202: annotations[1].result[0].from_name is 7, not a string",
        "task 203: no data.product_id (export the set with `fashion-assets export`)",
        "task 204: annotations[0].result[0].value.choices is \"Topwear\", not an array of strings",
    ]
    good = [
        task(1, 1, annotation(region(), region("sub_category", ["Topwear"]), at="2026-11-02T12:00:00+02:00")),
        task(2, "2", annotation(region("master_category", ["Footwear"]))),  # digits as a string: product 2
        task("3", 9223372036854775807, annotation(region(choices=["Heels"]))),  # the largest id: unknown product
        task(4, 3, annotations=None),  # no annotations
        task(5, 2, annotation(region(choices=["Heels"]), region(type="labels", value=[1]),  # another control's
                              was_cancelled=None, completed_by={"email": "a@b"}),
             annotation(was_cancelled=True, result="cancelled: not read")),
    ]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(bad + more_bad + good))

    result = import_labels(engine, export)
    assert result.refused == messages + more_messages
    assert (result.tasks, result.refused_tasks) == (len(BAD) + 5 + 5, len(BAD) + 5)
    assert (result.annotations, result.cancelled, result.answers, result.written) == (4, 1, 5, 4)
    assert result.unknown_ids == [9223372036854775807]
    at = dt.datetime(2026, 11, 2, 10, tzinfo=dt.timezone.utc)
    assert [utc(r) for r in stored(engine)] == [
        (1, "article_type", "Tshirts", 1, at), (1, "sub_category", "Topwear", 1, at),  # 12:00+02:00 is 10:00 UTC
        (2, "article_type", "Heels", 5, at), (2, "master_category", "Footwear", 2, at)]
    summary = result.summary().splitlines()
    assert summary[0].endswith(f"; 1 unknown product ids skipped (9223372036854775807); {len(BAD) + 5} tasks "
                               "refused, nothing of them written:")
    assert summary[1:] == [f"  {m}" for m in messages + more_messages]


def test_an_export_with_nothing_valid_left_fails_and_writes_nothing(backend, tmp_path):
    engine = catalog(backend)
    export = tmp_path / "bad.json"
    export.write_text(json.dumps([task(7, 12.7), "x", task(8, 1, annotation(created_at=5, updated_at=None))]))
    with pytest.raises(ValueError) as refused:
        import_labels(engine, export)
    assert str(refused.value) == (
        f"{export}: nothing imported, every task was refused (3): task 7: data.product_id is 12.7, not a product "
        f"id {ID_RULE}; task #2: the task is \"x\", not an object; task 8: annotations[0].created_at is 5, not a "
        "date and time (ISO 8601)")
    assert stored(engine) == []
    # Many refused tasks: the message lists the first 50 and counts the rest.
    export.write_text(json.dumps([task(i, True) for i in range(1, 53)]))
    with pytest.raises(ValueError) as refused:
        import_labels(engine, export)
    assert str(refused.value).endswith(f"task 50: data.product_id is true, not a product id {ID_RULE}; ... and 2 more")
    assert stored(engine) == []


def cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FASHION_", "DAGSTER_HOME"))} | env
    return subprocess.run([BIN / "fashion-assets", *args], env=env, capture_output=True, text=True, timeout=300)


def test_the_command_line_names_each_refused_task_and_fails_when_none_is_left(tmp_path):
    """Embedded backend: the command line is the same code on both."""
    from .conftest import embedded_backend

    backend = embedded_backend(tmp_path)
    catalog(backend)
    env = {"FASHION_CATALOG_URL": backend.catalog_url, "FASHION_STORE_URL": backend.store_url}
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps([task(1, 1), task(2, 12.7), [3]]))
    done = cli(["labels", "import", str(mixed)], env)
    assert (done.returncode, done.stderr) == (0, ""), done.stderr
    assert done.stdout.splitlines() == [
        f"{mixed}: 3 tasks, 1 annotations (0 cancelled ignored), 1 answers; 1 labels written (master_category 0, "
        "sub_category 0, article_type 1), 0 superseded by newer answers; 2 tasks refused, nothing of them written:",
        f"  task 2: data.product_id is 12.7, not a product id {ID_RULE}",
        "  task #3: the task is [3], not an object",
        "DAGSTER_HOME is not set: the import is not recorded in the Dagster instance"]

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([task(9, 1e20)]))
    failed = cli(["labels", "import", str(bad)], env)
    assert (failed.returncode, failed.stdout) == (2, "")
    assert failed.stderr == (f"fashion-assets: {bad}: nothing imported, every task was refused (1): task 9: "
                             f"data.product_id is 1e+20, not a product id {ID_RULE}\n")
    assert [r[:3] for r in stored(backend.engine())] == [(1, "article_type", "Tshirts")]
