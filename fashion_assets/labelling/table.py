"""The ``labels`` table: what people said a product is, one row per product and head, brought
back from a labelling tool (``labelling.importer``). ``fashion_classifier`` prefers these labels
to the catalog's. Plain module: no Dagster.

Created like the other tables, on the one ``core.database.metadata``; since this module may be
imported after an engine was opened, the functions here create the table on first use too.
"""

from __future__ import annotations

import sqlalchemy as sa

from ..core.database import metadata

labels = sa.Table(
    "labels",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),  # the product
    sa.Column("head", sa.Text, primary_key=True),  # master_category | sub_category | article_type
    sa.Column("label", sa.Text, nullable=False),
    sa.Column("annotator", sa.Text, nullable=False),  # the labelling tool's user (e-mail, or its id)
    sa.Column("task_id", sa.BigInteger),  # the task in the labelling tool
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),  # when the person answered
)


def ensure_labels_table(engine: sa.Engine) -> None:
    labels.create(engine, checkfirst=True)


def human_labels(engine: sa.Engine) -> dict[tuple[int, str], str]:
    """``{(product id, head): label}``; empty when nothing was ever imported (no table yet)."""
    if not sa.inspect(engine).has_table(labels.name):
        return {}
    with engine.connect() as conn:
        return {(r.id, r.head): r.label for r in conn.execute(sa.select(labels.c.id, labels.c.head, labels.c.label))}


def label_counts(engine: sa.Engine) -> dict[str, int]:
    """Rows per head (0 for a head without any)."""
    from ..classifier.labels import HEADS

    counts = dict.fromkeys(HEADS, 0)
    if sa.inspect(engine).has_table(labels.name):
        with engine.connect() as conn:
            for head, n in conn.execute(sa.select(labels.c.head, sa.func.count()).group_by(labels.c.head)):
                counts[head] = n
    return counts
