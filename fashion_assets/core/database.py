"""The catalog database: engines, URL masking, the schema, and the one way tables are written.

SQLAlchemy Core, one code path for SQLite (the embedded default) and PostgreSQL. Each table is
defined by the stage that owns it (``catalog.tables``, ``predictions.table``) on the one
``metadata`` here, and created by the code (``ensure_schema``), so no manual DDL step exists.
Plain module: no Dagster.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice

import sqlalchemy as sa
from sqlalchemy.engine import make_url

metadata = sa.MetaData()

INSERT_CHUNK = 5_000


def masked(url: str | sa.URL) -> str:
    """The URL with its password replaced by ``***``: the only form logs and the UI may show."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: show nothing of it that could be a secret
        return "<unparseable database URL>"


def create_engine(url: str) -> sa.Engine:
    parsed = make_url(url)
    kwargs: dict = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "postgresql":
        # Fail in seconds, not minutes, when the server is not there.
        kwargs["connect_args"] = {"connect_timeout": 10}
    elif parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        from pathlib import Path

        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30}  # wait for another writer instead of failing
    return sa.create_engine(parsed, **kwargs)


def ensure_schema(engine: sa.Engine) -> None:
    """Create every table registered on ``metadata`` that is not there yet, and add the nullable
    columns a newer version defines to a table an older version created (the only migration
    the schema has needed: columns only ever get added)."""
    metadata.create_all(engine, checkfirst=True)
    inspector = sa.inspect(engine)
    for table in metadata.sorted_tables:
        present = {column["name"] for column in inspector.get_columns(table.name)}
        missing = [column for column in table.columns if column.name not in present]
        for column in missing:
            if not column.nullable:
                raise RuntimeError(f"table {table.name} lacks column {column.name}, which cannot be added to "
                                   "existing rows: drop the table and materialise it again")
            with engine.begin() as conn:
                column_type = column.type.compile(dialect=engine.dialect)
                conn.execute(sa.text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {column_type}'))


def _chunks(rows: Iterable[dict], size: int) -> Iterator[list[dict]]:
    it = iter(rows)
    while chunk := list(islice(it, size)):
        yield chunk


def replace_rows(
    conn: sa.Connection, table: sa.Table, rows: Iterable[dict], on_chunk=None, where: sa.ColumnElement | None = None
) -> int:
    """Replace every row of ``table`` (or those matching ``where``) with ``rows`` inside the
    caller's transaction.

    DELETE + INSERT in one transaction keeps the table, its indexes and grants, and readers see
    the old rows until COMMIT; if anything fails the transaction rolls back to the previous data.
    """
    conn.execute(table.delete() if where is None else table.delete().where(where))
    written = 0
    for chunk in _chunks(rows, INSERT_CHUNK):
        conn.execute(table.insert(), chunk)
        written += len(chunk)
        if on_chunk:
            on_chunk(len(chunk))
    return written
