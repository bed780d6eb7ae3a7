"""``labels``: what people said products are, in table ``labels`` (thin wiring around
``importer`` and ``table``). ``fashion_classifier`` depends on it and prefers these labels to the
catalog's.

Filled by ``fashion-assets labels import FILE`` (which records a materialisation of this asset
in the instance), or by materialising it with config ``file``: a Label Studio JSON export.
Materialised without a file it reports what the table holds. Tasks the import refused (the
wrong shape: nothing of them written) are in the metadata, counted (``refused_tasks``) and the
first of them named with the reason (``refused``); when every task is refused the import writes
nothing and the materialisation fails with the importer's message.
"""

import dagster as dg
import sqlalchemy as sa

from ..classifier.labels import HEADS
from ..core.reporting import markdown_table
from ..resources import CatalogDatabase
from .importer import LIST_LIMIT, ImportResult, import_labels
from .table import ensure_labels_table, label_counts
from .table import labels as labels_table


class LabelsConfig(dg.Config):
    file: str | None = None
    """A Label Studio JSON export (annotations) to import first; none: report the table as it is."""


def refused_markdown(imported: ImportResult) -> str:
    """The refused tasks the import names (the first ``LIST_LIMIT``) as a Markdown table, task and
    reason, saying how many more were refused; ``_none_`` when none was."""
    rows = [tuple(line.split(": ", 1)) if ": " in line else (line, "") for line in imported.refused]
    table = markdown_table(["task", "why refused"], rows, limit=LIST_LIMIT, width=300)
    more = imported.refused_tasks - len(imported.refused)
    if more > 0:
        table += f"\n\n_{len(imported.refused):,} of {imported.refused_tasks:,} refused tasks shown._"
    return table


def labels_metadata(engine: sa.Engine, imported: ImportResult | None = None) -> dict:
    """What the table holds (and what an import just did): the asset's metadata, also used by the CLI."""
    ensure_labels_table(engine)
    counts = label_counts(engine)
    with engine.connect() as conn:
        products, annotators, newest = conn.execute(sa.select(
            sa.func.count(sa.distinct(labels_table.c.id)), sa.func.count(sa.distinct(labels_table.c.annotator)),
            sa.func.max(labels_table.c.created_at))).one()
    metadata = {
        "dagster/row_count": sum(counts.values()),
        **{f"labels_{h}": counts[h] for h in HEADS},
        "products_labelled": products,
        "annotators": annotators,
        "newest_answer": str(newest) if newest else "none",
        "table": "labels",
    }
    if imported is not None:
        metadata.update({
            "imported_file": imported.file,
            "imported_written": imported.written,
            "imported_annotations": imported.annotations,
            "superseded": imported.kept_newer,
            "unknown_ids": len(imported.unknown_ids),
            "unknown_classes": sum(imported.unknown_classes.values()),
            "skipped": dg.MetadataValue.md(markdown_table(
                ["skipped", "what"],
                [("unknown product id", i) for i in imported.unknown_ids]
                + [("unknown class", k) for k in imported.unknown_classes], limit=50)),
            "refused_tasks": imported.refused_tasks,
            "refused": dg.MetadataValue.md(refused_markdown(imported)),
        })
    return metadata


@dg.asset(group_name="labelling", kinds={"sql"})
def labels(
    context: dg.AssetExecutionContext, config: LabelsConfig, catalog_db: CatalogDatabase
) -> dg.MaterializeResult:
    """Human labels per product and head (table ``labels``: id, head, label, annotator, task_id,
    created_at), imported from Label Studio; the newest answer per product and head wins."""
    imported = None
    if config.file:
        try:
            imported = import_labels(catalog_db.engine, config.file)
        except ValueError as exc:
            raise dg.Failure(str(exc)) from None
        (context.log.warning if imported.refused_tasks else context.log.info)(imported.summary())
    return dg.MaterializeResult(metadata=labels_metadata(catalog_db.engine, imported))
