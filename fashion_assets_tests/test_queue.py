"""The labelling queue's rules (``labelling.queue``) on a small generated predictions table: which
images the doubt queue keeps, in what order, one per near-duplicate group; the seeded random
sample; auto-tag coverage and the missing-predictions error on a real SQLite table. The export and
the command line with a queue: test_labelling_queue.py."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pytest
import sqlalchemy as sa

from fashion_assets.classifier.labels import HEADS
from fashion_assets.labelling.queue import Coverage, auto_coverage, build_queue, doubt_queue, random_queue
from fashion_assets.predictions.table import PARQUET_SCHEMA
from fashion_assets.predictions.table import predictions as predictions_table

CATALOG = ("Apparel", "Topwear", "Tshirts")
AUTO = (True, True, True)
SURE = {"master_category": [["Apparel", 0.99], ["Footwear", 0.01]],
        "sub_category": [["Topwear", 0.95], ["Bottomwear", 0.03]],
        "article_type": [["Tshirts", 0.9], ["Shirts", 0.05]]}


def row(product_id: int, auto: tuple, name: str = "s", **top5: list) -> dict:
    """A predictions row: ``top5`` per head (best first; the label is its first) over SURE."""
    tops = {**SURE, **top5}
    return {"image_set": name, "source": "original", "id": product_id, "variant": 0, "model_version": "v1",
            **{f"{h}_label": tops[h][0][0] for h in HEADS}, **{f"{h}_confidence": tops[h][0][1] for h in HEADS},
            **{f"{h}_top5": json.dumps(tops[h]) for h in HEADS}, **{f"{h}_auto": a for h, a in zip(HEADS, auto)},
            "created_at": dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)}


ROWS = [
    row(1, AUTO, article_type=[["Shirts", 0.99], ["Tshirts", 0.01]]),  # disagrees, but automatic: nobody needed
    row(2, (True, True, False), article_type=[["Tshirts", 0.5], ["Shirts", 0.3]]),  # margin 0.20
    row(3, (True, True, False), article_type=[["Shirts", 0.45], ["Tshirts", 0.42]]),  # disagrees, 0.03
    row(4, (True, True, False), article_type=[["Shirts", 0.45], ["Tshirts", 0.44]]),  # disagrees, 0.01: beats 3
    row(5, (None, None, None), sub_category=[["Topwear", 0.6], ["Bottomwear", 0.35]],  # old row: least is sub, 0.25
        article_type=[["Tshirts", 0.7], ["Shirts", 0.2]]),
    row(6, (False, True, True), master_category=[["Apparel", 0.52], ["Footwear", 0.47]],  # 0.05; article's
        article_type=[["Tshirts", 0.51], ["Shirts", 0.5]]),  # 0.01 does not count: it is automatic
    row(7, (True, True, False), article_type=[["other", 0.55], ["Tshirts", 0.4]]),  # "other": no disagreement
    row(8, (True, False, True), sub_category=[["Bottomwear", 0.6], ["Topwear", 0.3]]),  # disagrees on sub, 0.30
    row(9, (True, True, False), article_type=[["Shirts", 0.5], ["Tshirts", 0.45]]),  # no catalog labels: 0.05
]
CATALOG_LABELS = {i: dict(zip(HEADS, CATALOG, strict=True)) for i in range(1, 9)}  # 9: not in the catalog
GROUPS = {3: 3, 4: 3, 2: 2, 5: 2}  # 4 is a near-duplicate of 3, 5 of 2; the others have no group


def generated_rows() -> list[dict]:
    """ROWS through the predictions Parquet schema: what the table holds, typed as it is."""
    return pa.Table.from_pylist(ROWS, schema=PARQUET_SCHEMA).to_pylist()


def test_doubt_order_disagreements_first_then_least_margin_one_per_group():
    result = doubt_queue(generated_rows(), CATALOG_LABELS, GROUPS)
    assert [q.id for q in result.chosen] == [4, 8, 6, 9, 7, 2]
    assert [q.rank for q in result.chosen] == [1, 2, 3, 4, 5, 6]
    assert [q.margin for q in result.chosen] == [0.01, 0.3, 0.05, 0.05, 0.15, 0.2]
    assert [q.disagrees for q in result.chosen] == [True, True, False, False, False, False]
    assert (result.considered, result.duplicates_left_out, result.automatic, result.disagreeing) == (8, 2, 1, 2)
    assert [q.reason for q in result.chosen] == [
        "disagrees with catalog: article_type Shirts (catalog Tshirts); "
        "margin 0.010 on article_type (Shirts 0.450 vs Tshirts 0.440)",
        "disagrees with catalog: sub_category Bottomwear (catalog Topwear); "
        "margin 0.300 on sub_category (Bottomwear 0.600 vs Topwear 0.300)",
        "margin 0.050 on master_category (Apparel 0.520 vs Footwear 0.470)",
        "margin 0.050 on article_type (Shirts 0.500 vs Tshirts 0.450)",
        "margin 0.150 on article_type (other 0.550 vs Tshirts 0.400)",
        "margin 0.200 on article_type (Tshirts 0.500 vs Shirts 0.300)",
    ]


def test_doubt_limit_and_groups():
    assert [q.id for q in doubt_queue(generated_rows(), CATALOG_LABELS, GROUPS, limit=3).chosen] == [4, 8, 6]
    # Without groups every image stands alone: 3 and 5 come back in their places.
    assert [q.id for q in doubt_queue(generated_rows(), CATALOG_LABELS, {}).chosen] == [4, 3, 8, 6, 9, 7, 2, 5]
    # The group is a set of ids, whatever its number: 6 and 9 in group 100 keep only 6 (ranked first).
    assert [q.id for q in doubt_queue(generated_rows(), CATALOG_LABELS, {6: 100, 9: 100}).chosen] == [
        4, 3, 8, 6, 7, 2, 5]
    # One head with one class has no top-2: its margin is its top-1.
    [only] = doubt_queue([row(1, (True, True, False), article_type=[["Tshirts", 0.9]])], CATALOG_LABELS, {}).chosen
    assert (only.margin, only.reason) == (0.9, "margin 0.900 on article_type (Tshirts 0.900 the only class)")


def test_random_sample_is_seeded_and_one_per_group():
    ids = range(1, 11)  # 10 has no prediction
    first = random_queue(ids, generated_rows(), CATALOG_LABELS, GROUPS, limit=4, seed=0)
    assert [q.id for q in first.chosen] == [8, 9, 2, 6]
    assert [q.id for q in random_queue(ids, generated_rows(), CATALOG_LABELS, GROUPS, limit=4, seed=0).chosen] == [
        8, 9, 2, 6]
    assert [q.id for q in random_queue(ids, generated_rows(), CATALOG_LABELS, GROUPS, seed=0).chosen] == [
        8, 9, 2, 6, 4, 1, 10, 7]  # 5 (group of 2) and 3 (group of 4) left out
    assert [q.id for q in random_queue(ids, generated_rows(), CATALOG_LABELS, GROUPS, limit=4, seed=7).chosen] == [
        9, 4, 2, 8]
    assert (first.considered, first.duplicates_left_out, first.seed) == (10, 2, 0)
    every = {q.id: q for q in random_queue(ids, generated_rows(), CATALOG_LABELS, GROUPS, seed=0).chosen}
    assert (every[10].margin, every[10].reason) == (None, "random sample (seed 0); no prediction")
    assert (every[1].margin, every[1].reason) == (
        None, "random sample (seed 0); disagrees with catalog: article_type Shirts (catalog Tshirts); "
              "every head automatic")
    assert (every[7].margin, every[7].disagrees) == (0.15, False)


@pytest.fixture
def engine(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'catalog.sqlite'}")
    predictions_table.create(engine)
    yield engine
    engine.dispose()


def test_auto_coverage_per_set_and_head(engine):
    with engine.begin() as conn:
        conn.execute(predictions_table.insert(), [
            *ROWS, row(1, (True, False, None), name="t"), row(2, (True, True, False), name="t")])
    assert auto_coverage(engine) == {
        "s": Coverage(9, "v1", {"master_category": 7, "sub_category": 7, "article_type": 3}),
        "t": Coverage(2, "v1", {"master_category": 2, "sub_category": 1, "article_type": 0}),
    }
    with engine.begin() as conn:
        conn.execute(predictions_table.delete())
    assert auto_coverage(engine) == {}


def test_the_doubt_queue_needs_predictions(engine):
    with engine.begin() as conn:
        conn.execute(predictions_table.insert(), [row(1, AUTO, name="other-set")])
    with pytest.raises(ValueError) as error:
        build_queue(engine, "s", [1, 2], "doubt")
    assert str(error.value) == ("image set 's' has no predictions of its images (table predictions): the doubt queue "
                                "ranks by the model's confidence; materialise predictions[s] first")
    for queue, limit, message in [("oldest", None, "unknown queue 'oldest': one of doubt, random"),
                                  ("doubt", 0, "the limit must be a positive number of images, not 0")]:
        with pytest.raises(ValueError) as error:
            build_queue(engine, "s", [1, 2], queue, limit)
        assert str(error.value) == message
