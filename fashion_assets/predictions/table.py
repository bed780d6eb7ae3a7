"""The ``predictions`` table, in the catalog database and as Parquet (``layout.predictions``):
one row per image of a set and model version. Both forms have the same columns, defined here
once. Plain module: no Dagster.
"""

from __future__ import annotations

import pyarrow as pa
import sqlalchemy as sa

from ..classifier.labels import HEADS
from ..core.database import metadata

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
        for head in HEADS
        for column in (
            sa.Column(f"{head}_label", sa.Text, nullable=False),
            sa.Column(f"{head}_confidence", sa.Float, nullable=False),
            sa.Column(f"{head}_top5", sa.Text, nullable=False),  # JSON [[label, probability], ...]
            # The tag may be applied without a person: calibrated confidence >= the model's
            # threshold (classifier.calibration). Null in rows written before it existed.
            sa.Column(f"{head}_auto", sa.Boolean),
        )
    ],
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_predictions_image_set", "image_set"),
)

PARQUET_SCHEMA = pa.schema([
    ("image_set", pa.string()), ("source", pa.string()), ("id", pa.int64()), ("variant", pa.int32()),
    ("model_version", pa.string()),
    *[(f"{head}_{part}", {"confidence": pa.float64(), "auto": pa.bool_()}.get(part, pa.string()))
      for head in HEADS for part in ("label", "confidence", "top5", "auto")],
    ("created_at", pa.timestamp("us", tz="UTC")),
])
