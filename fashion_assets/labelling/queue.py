"""The labelling queue: which of a set's images people should look at, and in what order. Plain
module: no Dagster; ``labelling.export`` (``fashion-assets export --queue``) hands its choice to
Label Studio, COCO or CSV.

``doubt`` (what the model cannot tag on its own, the most useful to a person first):

1. Only images with predictions (table ``predictions``, the set's original images) whose tags are
   not all automatic: some head's ``<head>_auto`` is false or null (null: written before the flag
   existed). An image every head of which is automatic needs nobody.
2. Disagreements with the catalog first: an image where **any** head's predicted label is not the
   catalog's (table ``products``, as it is now). A head whose catalog label is empty, or whose
   prediction is ``other`` (rare classes the model folds together), is not counted as a
   disagreement: ``other`` cannot be told from the catalog's rare class.
3. Then, and within the disagreements too, least margin first. A head's margin is its calibrated
   top-1 minus top-2 probability (``<head>_top5``; a head with one class has no top-2: its margin
   is its top-1); an image's margin is the smallest over its heads that are not automatic, the
   head it is most in doubt about. Ties: lowest id first.
4. One image per near-duplicate group (``product_images.near_duplicate_group``; its own id where
   none): the first of the group in this order. People label a photo once, not its copies.
5. At most ``limit``.

``random`` (the baseline an active-learning comparison needs): every image of the set, with or
without predictions, automatic or not; ids shuffled by ``random.Random(seed)``, then the first image
of each near-duplicate group, at most ``limit``. The same seed gives the same sample.

Each chosen image gets its 1-based ``rank``, its ``margin`` (None without a prediction or when
every head is automatic) and a ``reason`` in words.

``auto_coverage``: per set and head, how many of the set's predicted images are automatic (what
``fashion-assets summary`` shows).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from ..catalog.tables import products
from ..classifier.rows import near_duplicate_groups_of
from ..classifier.labels import HEADS, OTHER
from ..predictions.table import predictions as predictions_table

QUEUES = ("doubt", "random")
DEFAULT_SEED = 0


@dataclass(frozen=True)
class Doubt:
    """What one prediction row says about how sure the model is of an image."""

    id: int
    automatic: bool  # every head automatic
    margin: float | None  # least margin over the heads that are not automatic; None when automatic
    margin_head: str | None
    top: tuple[tuple[str, float], ...]  # that head's top-1 and (when it has one) top-2
    disagreements: tuple[tuple[str, str, str], ...]  # (head, predicted, catalog), in head order


@dataclass(frozen=True)
class Queued:
    id: int
    rank: int  # 1 = first to label
    margin: float | None
    reason: str
    disagrees: bool = False  # some head's prediction is not the catalog's label


@dataclass
class QueueResult:
    queue: str
    chosen: list[Queued]
    considered: int  # doubt: images whose tags are not all automatic; random: the set's images
    duplicates_left_out: int  # of those, left out as near-duplicates of one ranked before them
    automatic: int = 0  # doubt: predicted images every head of which is automatic
    unpredicted: int = 0  # doubt: images of the set without a prediction
    seed: int | None = None  # random: the sample's seed

    @property
    def disagreeing(self) -> int:
        return sum(1 for q in self.chosen if q.disagrees)


def top_two(top5: str | Sequence) -> tuple[tuple[str, float], ...]:
    """The first two ``(label, probability)`` of a ``<head>_top5`` value (JSON text, or parsed)."""
    entries = json.loads(top5) if isinstance(top5, str) else top5
    return tuple((str(label), float(p)) for label, p in entries[:2])


def assess(row: Mapping, catalog: Mapping[str, str | None]) -> Doubt:
    """One predictions row (``id``, ``<head>_label``, ``<head>_top5``, ``<head>_auto``) against
    the catalog's labels of its product (head -> label)."""
    disagreements = tuple((h, row[f"{h}_label"], catalog.get(h)) for h in HEADS
                          if catalog.get(h) and row[f"{h}_label"] != OTHER and row[f"{h}_label"] != catalog.get(h))
    doubtful = [h for h in HEADS if row.get(f"{h}_auto") is not True]
    best: tuple[float, str, tuple] | None = None
    for head in doubtful:
        top = top_two(row[f"{head}_top5"])
        margin = round(top[0][1] - (top[1][1] if len(top) > 1 else 0.0), 6)  # equal margins tie (then by id)
        if best is None or margin < best[0]:
            best = (margin, head, top)
    if best is None:
        return Doubt(row["id"], True, None, None, (), disagreements)
    return Doubt(row["id"], False, best[0], best[1], best[2], disagreements)


def reason(doubt: Doubt | None) -> str:
    """The doubt in words: ``disagrees with catalog: article_type Shirts (catalog Tshirts);
    margin 0.030 on article_type (Shirts 0.450 vs Tshirts 0.420)``."""
    if doubt is None:
        return "no prediction"
    parts = []
    if doubt.disagreements:
        parts.append("disagrees with catalog: " + ", ".join(
            f"{head} {predicted} (catalog {catalog})" for head, predicted, catalog in doubt.disagreements))
    if doubt.automatic:
        parts.append("every head automatic")
    else:
        (first, p1), *second = doubt.top
        against = f"vs {second[0][0]} {second[0][1]:.3f}" if second else "the only class"
        parts.append(f"margin {doubt.margin:.3f} on {doubt.margin_head} ({first} {p1:.3f} {against})")
    return "; ".join(parts)


def _one_per_group(ids: Iterable[int], groups: Mapping[int, int]) -> tuple[list[int], int]:
    seen: set[int] = set()
    kept, left_out = [], 0
    for product_id in ids:
        group = groups.get(product_id, product_id)
        if group in seen:
            left_out += 1
            continue
        seen.add(group)
        kept.append(product_id)
    return kept, left_out


def doubt_queue(rows: Iterable[Mapping], catalog: Mapping[int, Mapping[str, str | None]],
                groups: Mapping[int, int], limit: int | None = None) -> QueueResult:
    """The doubt queue (see the module's docstring) over prediction ``rows`` (one per image);
    ``catalog``: product id -> head -> label; ``groups``: product id -> near-duplicate group."""
    doubts = [assess(row, catalog.get(row["id"], {})) for row in rows]
    open_ = sorted((d for d in doubts if not d.automatic), key=lambda d: (not d.disagreements, d.margin, d.id))
    by_id = {d.id: d for d in open_}
    kept, left_out = _one_per_group((d.id for d in open_), groups)
    chosen = [Queued(i, rank, by_id[i].margin, reason(by_id[i]), bool(by_id[i].disagreements))
              for rank, i in enumerate(kept[:limit] if limit is not None else kept, 1)]
    return QueueResult("doubt", chosen, len(open_), left_out, automatic=len(doubts) - len(open_))


def random_queue(ids: Iterable[int], rows: Iterable[Mapping], catalog: Mapping[int, Mapping[str, str | None]],
                 groups: Mapping[int, int], limit: int | None = None, seed: int = DEFAULT_SEED) -> QueueResult:
    """A seeded random sample of the set's ``ids``, one per near-duplicate group (module docstring);
    ``rows`` (predictions, any subset of the ids) only describe the chosen."""
    order = sorted(set(ids))
    random.Random(seed).shuffle(order)
    doubts = {row["id"]: assess(row, catalog.get(row["id"], {})) for row in rows}
    kept, left_out = _one_per_group(order, groups)
    chosen = [Queued(i, rank, doubts[i].margin if i in doubts else None,
                     f"random sample (seed {seed}); {reason(doubts.get(i))}",
                     i in doubts and bool(doubts[i].disagreements))
              for rank, i in enumerate(kept[:limit] if limit is not None else kept, 1)]
    return QueueResult("random", chosen, len(order), left_out, seed=seed)


def _columns() -> list[sa.Column]:
    p = predictions_table.c
    return [p.id, *[p[f"{h}_{part}"] for h in HEADS for part in ("label", "top5", "auto")]]


def set_predictions(engine: sa.Engine, name: str) -> list[dict]:
    """The set's predictions of its original images (id, label, top-5 and auto flag per head)."""
    p = predictions_table.c
    query = (sa.select(*_columns()).where(p.image_set == name, p.source == "original", p.variant == 0)
             .order_by(p.id))
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(predictions_table.name):
            return []
        return [dict(r) for r in conn.execute(query).mappings()]


def catalog_labels(engine: sa.Engine, ids: Sequence[int]) -> dict[int, dict[str, str | None]]:
    query = sa.select(products.c.id, *[products.c[h] for h in HEADS]).where(
        products.c.id.in_(sa.bindparam("ids", expanding=True)))
    found: dict[int, dict[str, str | None]] = {}
    with engine.connect() as conn:
        for start in range(0, len(ids), 1000):
            for row in conn.execute(query, {"ids": list(ids[start:start + 1000])}).mappings():
                found[row["id"]] = {h: row[h] for h in HEADS}
    return found


def build_queue(engine: sa.Engine, name: str, ids: Sequence[int], queue: str, limit: int | None = None,
                seed: int = DEFAULT_SEED) -> QueueResult:
    """Queue ``queue`` over the set's images ``ids`` (its manifest), from the database: the set's
    predictions, the catalog's labels and the near-duplicate groups. ``ValueError`` for an
    unknown queue, or for ``doubt`` on a set without predictions (naming what to materialise)."""
    if queue not in QUEUES:
        raise ValueError(f"unknown queue {queue!r}: one of {', '.join(QUEUES)}")
    if limit is not None and limit < 1:
        raise ValueError(f"the limit must be a positive number of images, not {limit}")
    in_set = set(ids)
    rows = [r for r in set_predictions(engine, name) if r["id"] in in_set]
    if queue == "doubt" and not rows:
        raise ValueError(f"image set {name!r} has no predictions of its images (table predictions): the doubt "
                         f"queue ranks by the model's confidence; materialise predictions[{name}] first")
    catalog = catalog_labels(engine, [r["id"] for r in rows])
    groups = near_duplicate_groups_of(engine, sorted(in_set))
    if queue == "random":
        return random_queue(ids, rows, catalog, groups, limit, seed)
    result = doubt_queue(rows, catalog, groups, limit)
    result.unpredicted = len(in_set) - len(rows)
    return result


@dataclass(frozen=True)
class Coverage:
    images: int  # rows of the set in table predictions
    model_version: str
    automatic: dict[str, int]  # head -> images whose tag is automatic


def auto_coverage(engine: sa.Engine) -> dict[str, Coverage]:
    """Per set in table ``predictions``: how many images each head tags automatically."""
    p = predictions_table.c
    query = (sa.select(p.image_set, sa.func.count(), sa.func.max(p.model_version),
                       *[sa.func.sum(sa.case((p[f"{h}_auto"].is_(True), 1), else_=0)) for h in HEADS])
             .group_by(p.image_set).order_by(p.image_set))
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(predictions_table.name):
            return {}
        return {name: Coverage(images, version, {h: int(n or 0) for h, n in zip(HEADS, counts, strict=True)})
                for name, images, version, *counts in conn.execute(query)}
