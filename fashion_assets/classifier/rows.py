"""What the classifier learns from: the rows (image key, labels per head, group of
near-duplicates) of the whole catalog or of one image set, and people's labels over the
catalog's. Plain module: no Dagster, no TensorFlow."""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa

from .. import layout
from ..catalog.tables import product_images, products
from ..core.storage import ObjectStore, md5_hex
from .labels import HEADS


class NotEnoughImages(ValueError):
    """The catalog has too few images with a product to train or evaluate on."""


@dataclass
class TrainingRows:
    """The rows a model learns from and is measured on, and where they came from (lineage).

    Each row: ``id``, ``key`` (its image in the store), the three head labels, ``variant`` (0
    for an original image, k for an augmented copy) and ``group`` (near-duplicates share one;
    default the product id)."""

    rows: list[dict]
    source: dict  # {"source": "catalog"} or {"source": "image_set", "image_set": ..., ...}
    # head -> {"human": n, "catalog": n}: where the original images' labels came from
    # (``prefer_human_labels``); empty until it ran.
    label_sources: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def describe(self) -> str:
        if self.source["source"] == "catalog":
            return "the catalog"
        extra = f" + augmented set {self.source['augmented_spec']}" if self.source.get("augmented_spec") else ""
        version = f" version {self.source['set_version']}" if self.source.get("set_version") else ""
        return f"image set {self.source['image_set']!r}{version}{extra}"


def catalog_rows(engine: sa.Engine) -> TrainingRows:
    """Every catalog image with a product, in id order."""
    group = sa.func.coalesce(product_images.c.near_duplicate_group, product_images.c.id).label("group")
    query = (
        sa.select(product_images.c.id, product_images.c.key, product_images.c.md5, *[products.c[h] for h in HEADS],
                  group)
        .select_from(product_images.join(products, products.c.id == product_images.c.id))
        .order_by(product_images.c.id)
    )
    with engine.connect() as conn:
        rows = [dict(r, variant=0) for r in conn.execute(query).mappings()]
    return TrainingRows(rows, {"source": "catalog"})


def prefer_human_labels(training: TrainingRows, engine: sa.Engine) -> TrainingRows:
    """Each row's label per head from table ``labels`` (what people said, imported from a
    labelling tool) where there is one, the catalog's otherwise; an augmented copy takes its
    original's. Counts, on original images, how many labels of each kind (``label_sources``)."""
    from ..labelling.table import human_labels

    human = human_labels(engine)
    counts = {h: {"human": 0, "catalog": 0} for h in HEADS}
    rows = []
    for row in training.rows:
        row = dict(row)
        for head in HEADS:
            label = human.get((row["id"], head))
            if label is not None:
                row[head] = label
            if row["variant"] == 0:
                counts[head]["human" if label is not None else "catalog"] += 1
        rows.append(row)
    return TrainingRows(rows, training.source, counts)


def near_duplicate_groups_of(engine: sa.Engine, ids: list[int]) -> dict[int, int]:
    """The group of near-duplicates of each of ``ids`` (table product_images; its own id if none)."""
    query = sa.select(product_images.c.id, product_images.c.near_duplicate_group).where(
        product_images.c.id.in_(sa.bindparam("ids", expanding=True)))
    found: dict[int, int] = {}
    with engine.connect() as conn:
        for start in range(0, len(ids), 1000):
            for product_id, group in conn.execute(query, {"ids": ids[start:start + 1000]}):
                if group is not None:
                    found[product_id] = group
    return {i: found.get(i, i) for i in ids}


def set_rows(store: ObjectStore, name: str, use_augmented: bool = False,
             engine: sa.Engine | None = None) -> TrainingRows:
    """The images of one image set (what a user's SQL selected) at one version (``name@3``, or
    ``name@<digest>``; the newest by default), and with ``use_augmented`` its newest augmented
    copies, labelled from the set's manifest; a copy is in its source's group, so it is never
    on the other side of the split from its original."""
    from ..augmented_sets.build import latest_digest, read_augmented_manifest
    from ..image_sets.versions import NoSuchVersion, parse_ref, read_version, resolve

    name, ref = parse_ref(name)
    try:
        version = resolve(store, name, ref)
    except NoSuchVersion as exc:
        raise NotEnoughImages(str(exc)) from None
    manifest_bytes = store.get_bytes(version.manifest_key)
    manifest = read_version(store, version, columns=["id", "key", *HEADS]).to_pylist()
    groups = near_duplicate_groups_of(engine, [r["id"] for r in manifest]) if engine is not None else {}
    rows = [dict(r, variant=0, group=groups.get(r["id"], r["id"])) for r in manifest]
    source = {"source": "image_set", **version.as_json(), "manifest_md5": md5_hex(manifest_bytes),
              "augmented_spec": None}
    if use_augmented:
        if not store.exists(layout.augmented_latest(name)):
            raise NotEnoughImages(f"image set {name!r} has no augmented set: materialise augmented_set[{name}] first")
        digest = latest_digest(store, name)
        labels = {r["id"]: r for r in manifest}
        for copy in read_augmented_manifest(store, name, digest).select(["id", "variant", "key"]).to_pylist():
            if copy["id"] in labels:
                rows.append({**labels[copy["id"]], "key": copy["key"], "variant": copy["variant"] + 1,
                             "group": groups.get(copy["id"], copy["id"])})
        source["augmented_spec"] = digest
    return TrainingRows(rows, source)
