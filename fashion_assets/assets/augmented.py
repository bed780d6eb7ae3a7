"""``augmented_set``: each image set, augmented from a declarative spec (thin wiring)."""

import base64
import io
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import field_validator

from ..augment import DEFAULT_SPEC, SpecError, augment_in_parallel, build_pipeline, contact_sheet, spec_hash
from ..image_export import read_manifest
from ..parallel import bounded_map
from ..progress import Progress
from ..queries import image_set_prefix
from ..resources import ObjectStoreResource
from .image_sets import image_queries, image_set

AUGMENTED_SCHEMA = pa.schema([
    ("id", pa.int64()), ("variant", pa.int32()), ("key", pa.string()), ("source_key", pa.string()),
    ("source_md5", pa.string()), ("bytes", pa.int64()),
])
CONTACT_SHEET_ROWS = 6


def augmented_prefix(name: str, digest: str) -> str:
    return f"{image_set_prefix(name)}augmented/{digest}/"


def latest_pointer(name: str) -> str:
    """Holds the spec hash of the newest augmented set of a query: what `predictions` reads."""
    return f"{image_set_prefix(name)}augmented/LATEST"


class AugmentConfig(dg.Config):
    spec: list[dict[str, Any]] = DEFAULT_SPEC
    """Ordered albumentations transforms: [{"HorizontalFlip": {"p": 0.5}}, {"Affine": {"rotate": [-15, 15]}}]."""
    variants: int = 2
    """Augmented copies per image."""
    seed: int = 0
    """Same spec + seed + image = byte-identical output."""
    workers: int | None = None
    """Processes; default: every core."""

    @field_validator("spec")
    @classmethod
    def _spec_is_valid(cls, spec):
        try:
            build_pipeline(spec)
        except SpecError as exc:
            raise ValueError(f"augmentation spec: {exc}") from None
        return spec

    @field_validator("variants")
    @classmethod
    def _variants_positive(cls, variants):
        if not 1 <= variants <= 100:
            raise ValueError("variants must be between 1 and 100")
        return variants


@dg.asset(
    partitions_def=image_queries,
    group_name="image_sets",
    deps=[image_set],
    kinds={"s3", "parquet"},
    # Follows its image set: a new or changed set is augmented without anyone asking (under the
    # daemon; see sensors.fashion_automation).
    automation_condition=dg.AutomationCondition.eager(),
)
def augmented_set(context: dg.AssetExecutionContext, config: AugmentConfig, store: ObjectStoreResource) -> dg.MaterializeResult:
    """``variants`` augmented copies of every image of the set, as
    ``image-sets/<name>/augmented/<spec-hash>/<id>_<k>.jpg`` plus ``manifest.parquet`` and a
    contact sheet. Incremental: a variant already there for an unchanged source image is kept."""
    name = context.partition_key
    store_ = store.get_store()
    digest = spec_hash(config.spec, config.seed)
    prefix = augmented_prefix(name, digest)
    source = read_manifest(store_, name).select(["id", "key", "md5"]).to_pylist()
    previous = {}
    if store_.exists(prefix + "manifest.parquet"):
        table = pq.read_table(io.BytesIO(store_.get_bytes(prefix + "manifest.parquet")))
        previous = {(r["id"], r["variant"]): r for r in table.to_pylist()}
    existing = {obj.key for obj in store_.list(prefix) if obj.key.endswith(".jpg")}

    def key(product_id: int, k: int) -> str:
        return f"{prefix}{product_id}_{k}.jpg"

    def up_to_date(row: dict) -> bool:
        return all(
            key(row["id"], k) in existing and previous.get((row["id"], k), {}).get("source_md5") == row["md5"]
            for k in range(config.variants)
        )

    todo = [row for row in source if not up_to_date(row)]
    context.log.info(f"{len(source):,} images in set {name!r}; {len(todo):,} to augment x{config.variants} "
                     f"with spec {digest} into {store_.uri(prefix)}")
    by_id = {row["id"]: row for row in source}
    progress = Progress(f"augmented_set[{name}]", len(todo), context.log.info, every_items=500)
    written_bytes = 0

    def read(row: dict) -> tuple[int, bytes]:
        return row["id"], store_.get_bytes(row["key"])

    def write(item: tuple[int, list[bytes]]) -> int:
        product_id, variants = item
        for k, data in enumerate(variants):
            store_.put_bytes(key(product_id, k), data, "image/jpeg")
        return sum(map(len, variants))

    io_workers = store.max_concurrency
    results = augment_in_parallel(bounded_map(read, todo, io_workers), config.spec, config.variants, config.seed,
                                  workers=config.workers)
    for size in bounded_map(write, results, io_workers):
        written_bytes += size
        progress.advance()
    progress.finish()

    rows = []
    for product_id, row in by_id.items():
        for k in range(config.variants):
            rows.append({"id": product_id, "variant": k, "key": key(product_id, k), "source_key": row["key"],
                         "source_md5": row["md5"], "bytes": None})
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=AUGMENTED_SCHEMA), buffer, compression="zstd")
    store_.put_bytes(prefix + "manifest.parquet", buffer.getvalue(), "application/vnd.apache.parquet")
    wanted = {r["key"] for r in rows}
    stale = [k for k in existing if k not in wanted]
    removed = sum(1 for _ in bounded_map(store_.delete, stale, io_workers))
    store_.put_bytes(latest_pointer(name), digest.encode(), "text/plain")

    sample = list(by_id.values())[:CONTACT_SHEET_ROWS]
    sheet = contact_sheet([(store_.get_bytes(r["key"]),
                            [store_.get_bytes(key(r["id"], k)) for k in range(config.variants)]) for r in sample])
    store_.put_bytes(prefix + "contact_sheet.png", sheet, "image/png")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(rows),
            "spec_hash": digest,
            "spec": dg.MetadataValue.json({"spec": config.spec, "seed": config.seed, "variants": config.variants}),
            "source_images": len(source),
            "augmented_now": len(todo),
            "up_to_date": len(source) - len(todo),
            "variants_written": len(todo) * config.variants,
            "removed": removed,
            "bytes_written": dg.MetadataValue.int(written_bytes),
            "rate_images_per_s": dg.MetadataValue.float(round(progress.rate, 1)),
            "location": store_.uri(prefix),
            "contact_sheet": dg.MetadataValue.md(
                f"Originals (left) and their variants.\n\n![contact sheet](data:image/png;base64,"
                f"{base64.b64encode(sheet).decode()})\n\nStored at `{store_.uri(prefix + 'contact_sheet.png')}`"
            ),
        }
    )


@dg.asset_check(asset=augmented_set, description="Augmented images = set size x variants, all in the store.")
def augmented_count_matches(context: dg.AssetCheckExecutionContext, store: ObjectStoreResource) -> dg.AssetCheckResult:
    name = context.partition_key
    store_ = store.get_store()
    digest = store_.get_bytes(latest_pointer(name)).decode().strip()
    prefix = augmented_prefix(name, digest)
    manifest = pq.read_table(io.BytesIO(store_.get_bytes(prefix + "manifest.parquet")))
    set_size = read_manifest(store_, name).num_rows
    variants = len(set(manifest.column("variant").to_pylist())) if manifest.num_rows else 0
    stored = {obj.key for obj in store_.list(prefix) if obj.key.endswith(".jpg")}
    missing = [k for k in manifest.column("key").to_pylist() if k not in stored]
    return dg.AssetCheckResult(
        passed=manifest.num_rows == set_size * variants and not missing,
        metadata={"set_size": set_size, "variants": variants, "augmented": manifest.num_rows, "missing": len(missing)},
    )
