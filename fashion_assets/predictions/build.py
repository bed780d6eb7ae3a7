"""Predictions for an image set, in three parts like ``image_sets.export``: ``plan_predictions``
picks the inputs and the model version and writes shards of work, ``predict_shard`` runs the
classifier over one shard (the step that wants a GPU), ``commit_predictions`` replaces the
partition's rows in table ``predictions`` in one transaction and writes
``image-sets/<name>/predictions.parquet``. Plain module: no Dagster.
"""

from __future__ import annotations

import collections
import datetime as dt
import io
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from .. import layout
from ..augmented_sets.build import read_augmented_manifest
from ..catalog.tables import products as products_table
from ..classifier.artifacts import latest_version, load_version, read_labels
from ..classifier.labels import HEADS
from ..core import parquet
from ..core.database import replace_rows
from ..core.parallel import chunked_map
from ..core.parquet import read_parquet, write_parquet
from ..core.progress import peak_rss_mb
from ..core.shards import Shard, ShardPlan, ShardStats, ShardWriter, in_plan_order
from ..core.storage import ObjectStore, remove_prefix
from ..image_sets.export import read_manifest
from ..image_sets.versions import resolve, stamp
from .table import PARQUET_SCHEMA as PREDICTION_SCHEMA
from .table import predictions as predictions_table

INPUT_SCHEMA = pa.schema([("id", pa.int64()), ("variant", pa.int32()), ("key", pa.string())])


@dataclass(kw_only=True)
class PredictPlan(ShardPlan):
    source: str  # original | augmented
    model_version: str  # every shard predicts with this one, even if LATEST moves meanwhile
    inputs: int = 0
    set_version: int = 0  # the image set's version predicted (the newest when planned, or the one named)
    set_digest: str = ""
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))


@dataclass
class PredictShardResult(ShardStats):
    """``seconds`` is reading, decoding and predicting: what the rate is of."""

    model_load_seconds: float = 0.0  # once per shard step
    rows_key: str = ""  # the shard's rows, as Parquet


@dataclass
class PredictResult:
    plan: PredictPlan
    shards: list[PredictShardResult]
    rows: int = 0
    agreement: dict[str, float | None] = field(default_factory=dict)  # with the catalog's labels
    distribution: dict[str, list[tuple[str, int]]] = field(default_factory=dict)  # top labels per head
    preview: list[dict] = field(default_factory=list)


def input_table(store: ObjectStore, name: str, source: str, set_version: str | int | None = None) -> pa.Table:
    """(id, variant, key) of the set's images at ``set_version`` (default: the newest), or of
    its newest augmented set."""
    if source == "original":
        manifest = read_manifest(store, name, set_version).select(["id", "key"])
        variant = pa.array([0] * manifest.num_rows, pa.int32())
        return pa.table({"id": manifest.column("id"), "variant": variant, "key": manifest.column("key")},
                        schema=INPUT_SCHEMA)
    return read_augmented_manifest(store, name).select(INPUT_SCHEMA.names)


def plan_predictions(store: ObjectStore, name: str, source: str, work_prefix: str, shard_size: int,
                     set_version: str | int | None = None) -> PredictPlan:
    started = time.monotonic()
    version = resolve(store, name, set_version)
    plan = PredictPlan(name=name, source=source, model_version=latest_version(store), work_prefix=work_prefix,
                       set_version=version.seq, set_digest=version.digest)
    inputs = input_table(store, name, source, version.digest)
    plan.inputs = inputs.num_rows
    writer = ShardWriter(store, work_prefix, INPUT_SCHEMA, shard_size)
    writer.add(inputs.to_pylist())
    plan.shards = writer.close()
    plan.seconds = time.monotonic() - started
    plan.peak_rss_mb = peak_rss_mb()
    return plan


def predict_shard(
    store: ObjectStore, plan: PredictPlan, shard: Shard, batch_size: int, io_workers: int,
    on_batch: Callable[[int], None] = lambda n: None,
) -> PredictShardResult:
    """Classify one shard's images (decoding in parallel, prefetching) and write its rows."""
    from .inference import predict_rows  # TensorFlow: only the steps that predict import it

    result = PredictShardResult(index=shard.index, rows_key=layout.work_rows(plan.work_prefix, shard.index))
    inputs = read_parquet(store, shard.key).to_pylist()
    with tempfile.TemporaryDirectory(prefix="fashion-predict-") as workdir:
        started = time.monotonic()
        model = load_version(store, plan.model_version, workdir)
        result.model_load_seconds = time.monotonic() - started
        started = time.monotonic()
        read = chunked_map(lambda i: (i, store.get_bytes(inputs[i]["key"])), range(len(inputs)), io_workers)
        predicted = dict(predict_rows(model, read, batch_size, on_batch=on_batch))
    rows = [{"image_set": plan.name, "source": plan.source, "id": item["id"], "variant": item["variant"],
             "model_version": plan.model_version, **predicted[i], "created_at": plan.created_at}
            for i, item in enumerate(inputs)]
    write_parquet(store, result.rows_key, pa.Table.from_pylist(rows, schema=PREDICTION_SCHEMA))
    result.images = len(rows)
    result.seconds = time.monotonic() - started
    result.peak_rss_mb = peak_rss_mb()
    return result


def commit_predictions(
    engine: sa.Engine, store: ObjectStore, plan: PredictPlan, shards: list[PredictShardResult], io_workers: int = 16
) -> PredictResult:
    """Replace the partition's rows, all or nothing, and write the Parquet copy; each shard's
    rows are read once. Label counts and agreement are counted by the database."""
    done = in_plan_order(plan.shards, shards, f"predictions for {plan.name!r}")
    result = PredictResult(plan=plan, shards=done)
    buffer = io.BytesIO()

    def rows() -> Iterator[dict]:
        # The Parquet copy says which set version it predicted (``versions.made_from``).
        schema = stamp(PREDICTION_SCHEMA, plan.set_digest)
        with pq.ParquetWriter(buffer, schema, compression="zstd") as writer:
            for shard in done:
                table = read_parquet(store, shard.rows_key)
                writer.write_table(table)
                if len(result.preview) < 10:
                    result.preview += table.slice(0, 10 - len(result.preview)).to_pylist()
                yield from table.to_pylist()

    in_set = predictions_table.c.image_set == plan.name
    with engine.begin() as conn:  # this partition's rows only, all or nothing
        result.rows = replace_rows(conn, predictions_table, rows(), where=in_set)
        # Agreement counts only products whose catalog label the model can predict (not folded
        # into "other").
        known = read_labels(store, plan.model_version)["heads"]
        for head in HEADS:
            predicted = predictions_table.c[f"{head}_label"]
            counts = conn.execute(
                sa.select(products_table.c[head], predicted, sa.func.count())
                .select_from(predictions_table.outerjoin(products_table, products_table.c.id == predictions_table.c.id))
                .where(in_set).group_by(products_table.c[head], predicted)
            ).all()
            by_label: collections.Counter = collections.Counter()
            for _, label, n in counts:
                by_label[label] += n
            comparable = [(truth == label, n) for truth, label, n in counts if truth in known[head]]
            total = sum(n for _, n in comparable)
            result.agreement[head] = sum(n for same, n in comparable if same) / total if total else None
            result.distribution[head] = by_label.most_common(10)
    store.put_bytes(layout.predictions(plan.name), buffer.getvalue(), parquet.CONTENT_TYPE)
    remove_prefix(store, plan.work_prefix, io_workers)
    return result

