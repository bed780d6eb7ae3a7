"""Small helpers that turn results into what people read in the UI: Markdown tables, CSV reports."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")


def _cell(value: object, width: int) -> str:
    text = "" if value is None else str(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[object]], limit: int = 20, width: int = 80) -> str:
    """A Markdown table of the first ``limit`` rows, saying how many more there were."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    shown = total = 0
    for row in rows:
        total += 1
        if shown < limit:
            lines.append("| " + " | ".join(_cell(v, width) for v in row) + " |")
            shown += 1
    if total == 0:
        return "_none_"
    if total > shown:
        lines.append(f"\n_{shown} of {total:,} shown; the full list is in the report file._")
    return "\n".join(lines)


def csv_bytes(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def drawn(warn: Callable[[str], None], what: str, draw: Callable[..., T], *args,
          **kwargs) -> tuple[T | None, str | None]:
    """``(draw(*args, **kwargs), None)``, or ``(None, a line for the metadata)`` when drawing fails.

    A picture is called for after a step's data is committed (a set's contact sheet, the
    predictions' gallery): an image that cannot be read at that moment must not fail a step
    whose work is done and recorded. The failure is a warning in the run's log instead.
    """
    try:
        return draw(*args, **kwargs), None
    except Exception as exc:  # noqa: BLE001 - any failure: the data is already committed
        warn(f"the {what} could not be drawn: {type(exc).__name__}: {exc}")
        return None, f"_the {what} could not be drawn: {type(exc).__name__} (see the run's log)_"
