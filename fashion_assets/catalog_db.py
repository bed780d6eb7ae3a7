"""The catalog database: table definitions and the few writes the assets make.

SQLAlchemy Core, one code path for SQLite (the embedded default) and PostgreSQL. Tables are
created by the code (``metadata.create_all``), so no manual DDL step exists. Plain module: no
Dagster.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice

import sqlalchemy as sa
from sqlalchemy.engine import make_url

metadata = sa.MetaData()

products = sa.Table(
    "products",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("gender", sa.Text),
    sa.Column("master_category", sa.Text),
    sa.Column("sub_category", sa.Text),
    sa.Column("article_type", sa.Text),
    sa.Column("base_colour", sa.Text),
    sa.Column("season", sa.Text),
    sa.Column("year", sa.Integer),
    sa.Column("usage", sa.Text),
    sa.Column("product_display_name", sa.Text),
)

product_images = sa.Table(
    "product_images",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("mode", sa.Text, nullable=False),
    sa.Column("format", sa.Text, nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("md5", sa.String(32), nullable=False),
)

predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("image_set", sa.Text, nullable=False),
    sa.Column("source", sa.Text, nullable=False),  # original | augmented
    sa.Column("id", sa.BigInteger, nullable=False),
    sa.Column("variant", sa.Integer, nullable=False),  # 0 for an original image, k for <id>_<k>.jpg
    sa.Column("model_version", sa.Text, nullable=False),
    *[
        column
        for head in ("master_category", "sub_category", "article_type")
        for column in (
            sa.Column(f"{head}_label", sa.Text, nullable=False),
            sa.Column(f"{head}_confidence", sa.Float, nullable=False),
            sa.Column(f"{head}_top5", sa.Text, nullable=False),  # JSON [[label, probability], ...]
        )
    ],
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_predictions_image_set", "image_set"),
)

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
    metadata.create_all(engine, checkfirst=True)


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
