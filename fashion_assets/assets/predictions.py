"""``predictions``: the classifier over a query's images, as a SQL table and Parquet (thin wiring)."""

import collections
import datetime as dt
import io
import tempfile
import time
from typing import Literal

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from ..catalog_db import predictions as predictions_table
from ..catalog_db import products as products_table
from ..image_export import read_manifest
from ..k8s import GPU_POOL, gpu_op_tags
from ..ml.labels import HEADS
from ..parallel import bounded_map
from ..progress import Progress
from ..queries import image_set_prefix
from ..reporting import markdown_table
from ..resources import CatalogDatabase, ObjectStoreResource
from .augmented import augmented_prefix, augmented_set, latest_pointer
from .image_sets import image_queries, image_set
from .model import fashion_classifier


class PredictionsConfig(dg.Config):
    source: Literal["original", "augmented"] = "original"
    """Predict the set's images, or its newest augmented set."""
    batch_size: int = 128


def predictions_key(name: str) -> str:
    return image_set_prefix(name) + "predictions.parquet"


def _inputs(store, name: str, source: str) -> list[dict]:
    if source == "original":
        return [{"id": r["id"], "variant": 0, "key": r["key"]}
                for r in read_manifest(store, name).select(["id", "key"]).to_pylist()]
    digest = store.get_bytes(latest_pointer(name)).decode().strip()
    manifest = pq.read_table(io.BytesIO(store.get_bytes(augmented_prefix(name, digest) + "manifest.parquet")))
    return manifest.select(["id", "variant", "key"]).to_pylist()


@dg.asset(
    partitions_def=image_queries,
    group_name="model",
    deps=[image_set, augmented_set, fashion_classifier],
    kinds={"tensorflow", "sql", "parquet"},
    op_tags=gpu_op_tags(),
    pool=GPU_POOL,
    # Re-tags a set when the set, its augmented copy or the model changes.
    automation_condition=dg.AutomationCondition.eager(),
    check_specs=[
        dg.AssetCheckSpec("one_row_per_input", asset="predictions"),
        dg.AssetCheckSpec("confidences_are_probabilities", asset="predictions"),
    ],
)
def predictions(
    context: dg.AssetExecutionContext, config: PredictionsConfig, catalog_db: CatalogDatabase, store: ObjectStoreResource
) -> dg.MaterializeResult:
    """Master category, sub category and article type for every image of the set, with
    confidence and top-5, in table ``predictions`` (this partition's rows replaced in one
    transaction) and ``image-sets/<name>/predictions.parquet``."""
    from ..ml.artifacts import load_latest
    from ..ml.predict import predict_rows

    name = context.partition_key
    store_ = store.get_store()
    inputs = _inputs(store_, name, config.source)
    with tempfile.TemporaryDirectory(prefix="fashion-predict-") as workdir:
        model = load_latest(store_, workdir)
        context.log.info(f"Predicting {len(inputs):,} {config.source} images of {name!r} with model {model.version}")
        progress = Progress(f"predictions[{name}]", len(inputs), context.log.info, every_items=1_000)
        started = time.monotonic()
        read = bounded_map(lambda i: (i, store_.get_bytes(inputs[i]["key"])), range(len(inputs)), store.max_concurrency)
        results = dict(predict_rows(model, read, config.batch_size, on_batch=progress.advance))
        seconds = time.monotonic() - started
    progress.finish()

    now = dt.datetime.now(dt.timezone.utc)
    rows = [{"image_set": name, "source": config.source, "id": item["id"], "variant": item["variant"],
             "model_version": model.version, **results[i], "created_at": now} for i, item in enumerate(inputs)]
    with catalog_db.engine.begin() as conn:  # this partition's rows only, all or nothing
        conn.execute(predictions_table.delete().where(predictions_table.c.image_set == name))
        for start in range(0, len(rows), 5_000):
            conn.execute(predictions_table.insert(), rows[start:start + 5_000])
        catalog = {r.id: r for r in conn.execute(
            sa.select(products_table.c.id, *[products_table.c[h] for h in HEADS])
            .where(products_table.c.id.in_(sa.select(predictions_table.c.id).where(predictions_table.c.image_set == name)))
        )}
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer, compression="zstd")
    store_.put_bytes(predictions_key(name), buffer.getvalue(), "application/vnd.apache.parquet")

    agreement = {}
    for head in HEADS:
        known = [(r[f"{head}_label"], getattr(catalog[r["id"]], head)) for r in rows if r["id"] in catalog]
        comparable = [(p, t) for p, t in known if t is not None and t in model.classes(head)]
        agreement[head] = sum(p == t for p, t in comparable) / len(comparable) if comparable else None
    distribution = {h: collections.Counter(r[f"{h}_label"] for r in rows).most_common(10) for h in HEADS}
    confidences = [r[f"{h}_confidence"] for r in rows for h in HEADS]
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(rows),
            "source": config.source,
            "model_version": model.version,
            "rate_images_per_s": dg.MetadataValue.float(round(len(rows) / seconds, 1) if seconds else 0.0),
            **{f"agreement_{h}": dg.MetadataValue.float(round(a, 4)) for h, a in agreement.items() if a is not None},
            **{f"labels_{h}": dg.MetadataValue.md(markdown_table([h, "images"], distribution[h])) for h in HEADS},
            "preview": dg.MetadataValue.md(markdown_table(
                ["id", "variant", *[f"{h}_label" for h in HEADS], "article_type_confidence"],
                [[r["id"], r["variant"], *[r[f"{h}_label"] for h in HEADS], round(r["article_type_confidence"], 3)]
                 for r in rows], limit=10)),
            "table": "predictions",
            "parquet": store_.uri(predictions_key(name)),
        },
        check_results=[
            dg.AssetCheckResult(check_name="one_row_per_input", passed=len(rows) == len(inputs),
                                metadata={"rows": len(rows), "inputs": len(inputs)}),
            dg.AssetCheckResult(check_name="confidences_are_probabilities",
                                passed=all(0.0 <= c <= 1.0 for c in confidences),
                                metadata={"min": min(confidences, default=0.0), "max": max(confidences, default=0.0)}),
        ],
    )
