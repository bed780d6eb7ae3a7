"""The catalog's two tables, ``products`` and ``product_images``. Plain module: no Dagster.

Users' queries select from them (``image_sets.sandbox``), so their names and columns are a
contract, like the store's keys.
"""

from __future__ import annotations

import sqlalchemy as sa

from ..core.database import metadata

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
    # Added later, so nullable: ensure_schema adds them to a table made by an earlier version.
    sa.Column("phash", sa.String(64)),  # perceptual hash, 64 hex digits (catalog.duplicates)
    sa.Column("near_duplicate_group", sa.BigInteger),  # smallest product id of its group
)


def fingerprint(conn: sa.Connection) -> tuple[int, ...]:
    """What changes when a newer ``product_images`` lands, in one aggregate query (a scan of the
    table, no rows sent): row count, largest id, sum of ids, sum of photo sizes, hashed rows.
    The gateway's near-duplicate index polls it; a set version records it as its catalog state."""
    t = product_images.c
    row = conn.execute(sa.select(sa.func.count(), sa.func.max(t.id), sa.func.sum(t.id), sa.func.sum(t.bytes),
                                 sa.func.count(t.phash))).one()
    return tuple(int(v or 0) for v in row)
