"""Small helpers that turn results into what people read in the UI: Markdown tables, CSV reports."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence


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
