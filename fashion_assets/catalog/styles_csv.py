"""Parse the product catalog (``styles.csv``) the way it is published, not the way it should be.

The Kaggle file is not quoted: 22 of its lines carry commas inside ``productDisplayName`` (the
last column), which pandas rejects ("Expected 10 fields in line 6044, saw 11"). Since the name
is the last column, the extra fields can only belong to it, so they are joined back. Every other
problem row is rejected with its line number and reason; nothing is dropped silently.

Plain module: no Dagster. :func:`parse_styles` streams, so a catalog of millions of rows is
never held in memory at once (only the set of ids seen, to find duplicates).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# Column in styles.csv -> column in the `products` table.
COLUMNS: dict[str, str] = {
    "id": "id",
    "gender": "gender",
    "masterCategory": "master_category",
    "subCategory": "sub_category",
    "articleType": "article_type",
    "baseColour": "base_colour",
    "season": "season",
    "year": "year",
    "usage": "usage",
    "productDisplayName": "product_display_name",
}
NAME_COLUMN = "productDisplayName"
_YEAR = re.compile(r"^\d{4}(\.0+)?$")  # "2012", and "2012.0" as spreadsheets write it


class CatalogFormatError(ValueError):
    """The file as a whole cannot be read as a catalog (no header, wrong columns...)."""


@dataclass(frozen=True)
class RejectedRow:
    line: int  # 1-based physical line in the file where the record starts
    reason: str
    raw: str  # the record as read, for the person who fixes it


@dataclass(frozen=True)
class Note:
    """A row kept with one value set to NULL, and why."""

    line: int
    id: int
    message: str


@dataclass
class ParseStats:
    rows: int = 0
    rejected: list[RejectedRow] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    blank_lines: int = 0
    names_rejoined: int = 0  # rows whose unquoted commas were joined back into the name

    @property
    def records(self) -> int:
        """Non-blank records after the header: every one is a row or a rejection."""
        return self.rows + len(self.rejected)


def _clean(value: str) -> str | None:
    value = value.strip()
    return value or None


def _decoded_lines(raw: io.BufferedReader, bad_lines: set[int]) -> Iterator[str]:
    """Decode line by line, so one bad byte costs one row (reported with its line number)
    instead of the whole file. CRLF stays in the line for csv to handle."""
    for number, line in enumerate(raw, start=1):
        if number == 1:
            line = line.removeprefix(b"\xef\xbb\xbf")  # UTF-8 BOM, as Excel writes it
        try:
            yield line.decode("utf-8")
        except UnicodeDecodeError:
            bad_lines.add(number)
            yield line.decode("utf-8", errors="replace")


def parse_styles(path: str | Path, stats: ParseStats | None = None) -> Iterator[dict]:
    """Yield one dict per good row, keyed by the ``products`` table's column names.

    Rejected rows, notes and counts accumulate in ``stats`` as the iterator is consumed.
    Handles a UTF-8 BOM, CRLF or LF line ends, blank lines, quoted fields, empty fields (NULL),
    lines that are not UTF-8 (rejected), duplicate ids (the first one wins) and years that are
    not years (kept, year NULL).
    """
    stats = stats if stats is not None else ParseStats()
    path = Path(path)
    bad_lines: set[int] = set()
    with open(path, "rb") as raw:
        reader = csv.reader(_decoded_lines(raw, bad_lines))
        try:
            header = next(reader)
        except StopIteration:
            raise CatalogFormatError(f"{path}: the file is empty; expected a header row") from None
        if bad_lines:
            raise CatalogFormatError(f"{path}: the header is not UTF-8 text")
        header = [h.strip() for h in header]
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise CatalogFormatError(
                f"{path}: header is missing column(s) {', '.join(missing)}; found {', '.join(header)}"
            )
        width = len(header)
        name_last = header[-1] == NAME_COLUMN
        index = {c: header.index(c) for c in COLUMNS}
        seen: dict[int, int] = {}

        while True:
            start = reader.line_num + 1  # physical line where this record starts
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                stats.rejected.append(RejectedRow(start, f"unreadable CSV: {exc}", ""))
                continue
            if not fields or all(not f.strip() for f in fields):
                stats.blank_lines += 1
                continue
            raw_record = ",".join(fields)
            if bad_lines and any(n in bad_lines for n in range(start, reader.line_num + 1)):
                stats.rejected.append(RejectedRow(start, "not UTF-8 text", raw_record))
                continue
            if len(fields) > width:
                if not name_last:
                    stats.rejected.append(
                        RejectedRow(start, f"expected {width} fields, saw {len(fields)}", raw_record)
                    )
                    continue
                fields = fields[: width - 1] + [",".join(fields[width - 1 :])]
                stats.names_rejoined += 1
            elif len(fields) < width:
                stats.rejected.append(RejectedRow(start, f"expected {width} fields, saw {len(fields)}", raw_record))
                continue

            raw_id = fields[index["id"]].strip()
            if not raw_id.isdigit() or not 0 < int(raw_id) < 2**63:
                stats.rejected.append(RejectedRow(start, f"id {raw_id!r} is not a positive integer", raw_record))
                continue
            product_id = int(raw_id)
            if product_id in seen:
                stats.rejected.append(
                    RejectedRow(start, f"duplicate id {product_id} (first on line {seen[product_id]})", raw_record)
                )
                continue
            seen[product_id] = start

            row = {column: _clean(fields[index[source]]) for source, column in COLUMNS.items()}
            row["id"] = product_id
            year = row["year"]
            if year is not None:
                if _YEAR.match(year):
                    row["year"] = int(float(year))
                else:
                    row["year"] = None
                    stats.notes.append(Note(start, product_id, f"year {year!r} is not a year; stored as NULL"))
            stats.rows += 1
            yield row
