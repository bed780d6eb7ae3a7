"""Human labels back from Label Studio: its JSON export into table ``labels``. Plain module: no
Dagster; ``fashion-assets labels import FILE`` wires it to the command line.

Only annotations count (what people submitted), never predictions (what our model proposed);
cancelled (skipped) annotations are ignored. A task names its product by ``data.product_id``
(what ``labelling.export`` writes). For each product and head the newest answer wins, across the
file and against what the table already holds (by the annotation's ``updated_at``, else
``created_at``). Products the catalog lacks and classes the catalog does not have for that head
are counted and listed, not written, and do not stop the rest: one bad task must not cost a
team's day of work. The table changes in one transaction.

The file's shape is not trusted (:func:`task_answers`): a field the import reads that has the
wrong type refuses its whole task (counted, named with the reason, nothing of it written); the
other tasks go in; if every task is refused, the import raises. Ids are 64-bit integers, or
strings of their digits (Label Studio keeps a CSV import's strings): ``12.7``, ``1e20``, ``true``
or ``"12.0"`` are refused, never truncated or rounded. Dates: ISO 8601 strings (no offset: UTC).
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from ..catalog.tables import products
from ..classifier.labels import HEADS
from .table import ensure_labels_table, labels

LIST_LIMIT = 50  # unknown ids and classes, and refused tasks, listed (all are counted)
ID_MIN, ID_MAX = -(2**63), 2**63 - 1  # ids are 64-bit integers, as in the tables (BIGINT)
ID_RULE = "a 64-bit integer, or a string of its digits"
_DIGITS = re.compile(r"-?[0-9]{1,19}")  # no sign but '-', no spaces, no decimal point or exponent


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
    refused_tasks: int = 0  # tasks of the wrong shape: nothing of them written
    refused: list[str] = field(default_factory=list)  # "task 7: why", the first LIST_LIMIT of them

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
        if self.refused_tasks:
            more = self.refused_tasks - len(self.refused)
            text += f"; {self.refused_tasks:,} tasks refused, nothing of them written:" + "".join(
                f"\n  {line}" for line in self.refused) + (f"\n  ... and {more:,} more" if more else "")
        return text


class BadTask(ValueError):
    """A task whose fields do not have the shape of Label Studio's export; the message says where."""


def _shown(value: object) -> str:
    """A value as the JSON file has it, cut to 60 characters."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bad(where: str, value: object, what: str) -> BadTask:  # "data.product_id is 12.7, not a product id (...)"
    return BadTask(f"{where} is {_shown(value)}, not {what}")


def _object(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise _bad(where, value, "an object")
    return value


def _array(value: object, where: str) -> list:
    """An array; absent (null) is an empty one."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad(where, value, "an array")
    return value


def _id(value: object, where: str, what: str) -> int:
    """A 64-bit integer, or a string of its decimal digits; never a float, a boolean or a rounded value."""
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _DIGITS.fullmatch(value):
        number = int(value)
    if number is None or not ID_MIN <= number <= ID_MAX:
        raise _bad(where, value, f"{what} ({ID_RULE})")
    return number


def _timestamp(value: object, where: str) -> dt.datetime:
    """An ISO 8601 date and time, in UTC (no offset: UTC)."""
    try:
        stamp = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))  # type: ignore[union-attr]
        return (stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.timezone.utc)).astimezone(dt.timezone.utc)
    except (AttributeError, ValueError, OverflowError):  # not a string; not a date; past year 9999
        raise _bad(where, value, "a date and time (ISO 8601)") from None


def _annotator(annotation: dict, where: str) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        for key in ("email", "username", "id"):
            value = who.get(key)
            if isinstance(value, bool) or not isinstance(value, (str, int, type(None))):
                raise _bad(f"{where}.completed_by.{key}", value, "a string or a number")
            if value or value == 0:
                return str(value)
        return "unknown"
    if isinstance(who, bool) or not isinstance(who, (str, int, type(None))):
        raise _bad(f"{where}.completed_by", who, "a user (an id, an e-mail or an object)")
    named = annotation.get("created_username")
    if named is not None and not isinstance(named, str):
        raise _bad(f"{where}.created_username", named, "a string")
    if named:  # "email, id" in Label Studio's JSON export
        return named.split(",")[0].strip()
    return str(who) if who is not None else "unknown"


def _region_answers(region: object, where: str) -> list[tuple[str, str]]:
    """``(head, label)`` of one result region: a single choice of one of our heads; other
    controls' regions hold none."""
    region = _object(region, where)
    kind = region.get("type")
    if not isinstance(kind, str):
        raise _bad(f"{where}.type", kind, "a string")
    if kind != "choices":
        return []
    head = region.get("from_name")
    if not isinstance(head, str):
        raise _bad(f"{where}.from_name", head, "a string")
    if head not in HEADS:
        return []
    choices = _object(region.get("value"), f"{where}.value").get("choices")
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise _bad(f"{where}.value.choices", choices, "an array of strings")
    if len(choices) > 1:
        raise _bad(f"{where}.value.choices", choices, f"one choice ({head} is single-choice)")
    return [(head, label) for label in choices]


def task_answers(task: object, number: int, file: str) -> tuple[list[dict], int, int]:
    """``(answers, annotations, cancelled)`` of the ``number``-th task (from 1), or
    :class:`BadTask` naming the task (by id, else ``#number``) and the first field of the wrong type."""
    name = f"task #{number}"
    if not isinstance(task, dict):
        raise BadTask(f"{file}: {name}: the task is {_shown(task)}, not an object")
    try:
        task_id = None if task.get("id") is None else _id(task["id"], "id", "a task id")
    except BadTask as exc:
        raise BadTask(f"{file}: {name}: {exc}") from None
    name = name if task_id is None else f"task {task_id}"
    try:
        data = _object(task.get("data"), "data")
        if data.get("product_id") is None:
            raise BadTask("no data.product_id (export the set with `fashion-assets export`)")
        product_id = _id(data["product_id"], "data.product_id", "a product id")
        found, submitted, cancelled = [], 0, 0
        for a, annotation in enumerate(_array(task.get("annotations"), "annotations")):
            where = f"annotations[{a}]"
            annotation = _object(annotation, where)
            skipped = annotation.get("was_cancelled")
            if skipped is not None and not isinstance(skipped, bool):
                raise _bad(f"{where}.was_cancelled", skipped, "true or false")
            if skipped:
                cancelled += 1
                continue
            submitted += 1
            stamps = {k: _timestamp(annotation[k], f"{where}.{k}") for k in ("updated_at", "created_at")
                      if annotation.get(k) is not None}
            if not stamps:
                raise BadTask(f"{where} has neither updated_at nor created_at")
            who = _annotator(annotation, where)
            for r, region in enumerate(_array(annotation.get("result"), f"{where}.result")):
                for head, label in _region_answers(region, f"{where}.result[{r}]"):
                    found.append({"id": product_id, "head": head, "label": label, "annotator": who,
                                  "task_id": task_id, "created_at": stamps.get("updated_at", stamps.get("created_at"))})
    except BadTask as exc:
        raise BadTask(f"{file}: {name}: {exc}") from None
    return found, submitted, cancelled


def read_export(file: str | os.PathLike) -> list:
    path = Path(file)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{str(path)!r}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{str(path)!r}: cannot read it: {exc}") from None
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{str(path)!r}: not JSON ({exc})") from None
    if not isinstance(document, list):
        raise ValueError(f"{str(path)!r}: not a Label Studio JSON export (a list of tasks)")
    return document


def answers_in(tasks: list, file: str) -> tuple[list[dict], ImportResult]:
    """Every (product, head, label, annotator, task, time) the annotations of the well-formed
    tasks hold; the others counted and named in the result. Raises ``ValueError`` when there were
    tasks and every one was refused."""
    result = ImportResult(file=file, tasks=len(tasks))
    found = []
    for number, task in enumerate(tasks, 1):
        try:
            answers, submitted, cancelled = task_answers(task, number, file)
        except BadTask as exc:
            result.refused_tasks += 1
            if len(result.refused) < LIST_LIMIT:
                result.refused.append(str(exc).removeprefix(f"{file}: "))
            continue
        found += answers
        result.annotations += submitted
        result.cancelled += cancelled
    if tasks and result.refused_tasks == len(tasks):
        more = result.refused_tasks - len(result.refused)
        raise ValueError(f"{file}: nothing imported, every task was refused ({len(tasks):,}): "
                         + "; ".join(result.refused) + (f"; ... and {more:,} more" if more else ""))
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
