"""Human labels back from Label Studio: its JSON export into table ``labels``. Plain module: no
Dagster; ``fashion-assets labels import FILE`` wires it to the command line.

Only annotations count (what people submitted), never predictions (what our model proposed);
cancelled (skipped) annotations are ignored. A task names its product by ``data.product_id``
(what ``labelling.export`` writes). For each product and head the newest answer wins, across the
file and against what the table already holds (by the annotation's ``updated_at``, else
``created_at``). Products the catalog lacks and classes the catalog does not have for that head
are counted and listed, not written, and do not stop the rest: one bad task must not cost a
team's day of work. The table changes in one transaction.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from ..catalog.tables import products
from ..classifier.labels import HEADS
from .table import ensure_labels_table, labels

LIST_LIMIT = 50  # unknown ids and classes listed (all are counted)


@dataclass
class ImportResult:
    file: str
    tasks: int = 0
    annotations: int = 0  # submitted, not cancelled
    cancelled: int = 0
    answers: int = 0  # (product, head, label) found in the annotations
    written: int = 0  # rows inserted or replaced in ``labels``
    kept_newer: int = 0  # answers older than what the file or the table had for that product and head
    unknown_ids: list[int] = field(default_factory=list)
    unknown_id_answers: int = 0
    unknown_classes: dict[str, int] = field(default_factory=dict)  # "head: label" -> answers
    per_head: dict[str, int] = field(default_factory=dict)  # rows written per head

    def summary(self) -> str:
        text = (f"{self.file}: {self.tasks:,} tasks, {self.annotations:,} annotations ({self.cancelled:,} cancelled "
                f"ignored), {self.answers:,} answers; {self.written:,} labels written "
                f"({', '.join(f'{h} {n:,}' for h, n in self.per_head.items())}), {self.kept_newer:,} superseded by "
                f"newer answers")
        if self.unknown_ids:
            text += (f"; {len(self.unknown_ids):,} unknown product ids skipped "
                     f"({', '.join(map(str, self.unknown_ids[:LIST_LIMIT]))})")
        if self.unknown_classes:
            text += "; unknown classes skipped: " + ", ".join(
                f"{k} ({n})" for k, n in list(self.unknown_classes.items())[:LIST_LIMIT])
        return text


def _timestamp(value: str | None, where: str) -> dt.datetime:
    if not value:
        raise ValueError(f"{where}: an annotation without created_at")
    try:
        stamp = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{where}: created_at {value!r} is not a date and time") from None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.timezone.utc)


def _annotator(annotation: dict) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        return str(who.get("email") or who.get("username") or who.get("id"))
    if annotation.get("created_username"):  # "email, id" in Label Studio's JSON export
        return str(annotation["created_username"]).split(",")[0].strip()
    return str(who) if who is not None else "unknown"


def read_export(file: str | os.PathLike) -> list[dict]:
    path = Path(file)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{str(path)!r}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{str(path)!r}: cannot read it: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{str(path)!r}: not JSON ({exc})") from None
    if not isinstance(document, list) or not all(isinstance(t, dict) for t in document):
        raise ValueError(f"{str(path)!r}: not a Label Studio JSON export (a list of tasks)")
    return document


def answers_in(tasks: list[dict], file: str) -> tuple[list[dict], ImportResult]:
    """Every (product, head, label, annotator, task, time) the annotations hold."""
    result = ImportResult(file=file, tasks=len(tasks))
    found = []
    for number, task in enumerate(tasks, 1):
        where = f"{file}: task {task.get('id', f'#{number}')}"
        product_id = (task.get("data") or {}).get("product_id")
        if product_id is None:
            raise ValueError(f"{where}: no data.product_id (export the set with `fashion-assets export`)")
        for annotation in task.get("annotations") or []:
            if annotation.get("was_cancelled"):
                result.cancelled += 1
                continue
            result.annotations += 1
            stamp = _timestamp(annotation.get("updated_at") or annotation.get("created_at"), where)
            for region in annotation.get("result") or []:
                if region.get("type") != "choices" or region.get("from_name") not in HEADS:
                    continue
                for label in (region.get("value") or {}).get("choices") or []:
                    found.append({"id": int(product_id), "head": region["from_name"], "label": label,
                                  "annotator": _annotator(annotation), "task_id": task.get("id"), "created_at": stamp})
    result.answers = len(found)
    return found, result


def import_labels(engine: sa.Engine, file: str | os.PathLike) -> ImportResult:
    """Read a Label Studio JSON export into table ``labels`` (see the module's docstring)."""
    found, result = answers_in(read_export(file), str(file))
    ensure_labels_table(engine)
    ids = sorted({a["id"] for a in found})
    with engine.begin() as conn:
        known_ids: set[int] = set()
        for start in range(0, len(ids), 1000):
            chunk = ids[start:start + 1000]
            known_ids |= set(conn.execute(sa.select(products.c.id).where(products.c.id.in_(chunk))).scalars())
        classes = {h: set(conn.execute(sa.select(products.c[h]).distinct()).scalars()) for h in HEADS}
        newest: dict[tuple[int, str], dict] = {}
        unknown_classes: collections.Counter = collections.Counter()
        unknown_ids = set()
        for answer in found:
            if answer["id"] not in known_ids:
                unknown_ids.add(answer["id"])
                result.unknown_id_answers += 1
            elif answer["label"] not in classes[answer["head"]]:
                unknown_classes[f"{answer['head']}: {answer['label']}"] += 1
            else:
                key = (answer["id"], answer["head"])
                if key in newest:
                    result.kept_newer += 1
                if key not in newest or answer["created_at"] >= newest[key]["created_at"]:
                    newest[key] = answer
        stored = {}
        wanted = sorted({i for i, _ in newest})
        for start in range(0, len(wanted), 1000):
            query = sa.select(labels.c.id, labels.c.head, labels.c.created_at).where(
                labels.c.id.in_(wanted[start:start + 1000]))
            stored.update({(r.id, r.head): r.created_at for r in conn.execute(query)})
        rows = []
        for key, answer in newest.items():
            before = stored.get(key)
            if before is not None and (before if before.tzinfo else before.replace(tzinfo=dt.timezone.utc)) \
                    > answer["created_at"]:
                result.kept_newer += 1
                continue
            rows.append(answer)
        for row in rows:
            conn.execute(labels.delete().where(labels.c.id == row["id"], labels.c.head == row["head"]))
        if rows:
            conn.execute(labels.insert(), rows)
    result.written = len(rows)
    result.per_head = {h: sum(1 for r in rows if r["head"] == h) for h in HEADS}
    result.unknown_ids = sorted(unknown_ids)
    result.unknown_classes = dict(sorted(unknown_classes.items()))
    return result
