"""What the classifier learns from: groups of near-duplicates (catalog.duplicates) recorded by
product_images, a split that never separates a group, images streamed from the store, and
training on one image set with its lineage."""

from __future__ import annotations

import io
import json

import dagster as dg
import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from fashion_assets import layout
from fashion_assets.catalog.assets import product_images, products
from fashion_assets.catalog.duplicates import Product, close_pairs, name_stem, near_duplicate_groups
from fashion_assets.catalog.tables import product_images as images_table
from fashion_assets.classifier import artifacts
from fashion_assets.classifier.assets import fashion_classifier
from fashion_assets.classifier.rows import catalog_rows
from fashion_assets.classifier.data import ArrayImages, StoreImages
from fashion_assets.classifier.labels import HEADS, build_vocabularies, encode_targets
from fashion_assets.classifier.train import TrainConfig, hold_out_newest, split_by_group, train_classifier
from fashion_assets.core.storage import LocalObjectStore, md5_hex
from fashion_assets.image_sets.assets import image_queries, image_set
from fashion_assets.image_sets.registry import QueryRegistry
from fashion_assets.image_sets.versions import resolve
from fashion_assets.resources import CatalogDatabase

from .catalog_files import write_styles

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
HEADER_ROW = "{id},Men,Apparel,Topwear,{article},{colour},Summer,2012,Casual,{name}"


def photo(seed: int, size=(60, 80), quality=90) -> bytes:
    """A product-like photo: a textured shape on white, different for every seed."""
    rng = np.random.default_rng(seed)
    pixels = np.full((size[1], size[0], 3), 255, dtype=np.uint8)
    h, w = rng.integers(30, 60), rng.integers(25, 45)
    top, left = rng.integers(5, size[1] - h), rng.integers(5, size[0] - w)
    pixels[top:top + h, left:left + w] = rng.integers(0, 200, (h, w, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def recompressed(data: bytes, quality: int) -> bytes:
    """The same shot saved again: other bytes, the same picture."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def near_duplicate_catalog(root, n=40):
    """``n`` products with distinct photos, plus near-duplicates: 101 is 1's photo saved again,
    102 is 2 in another colour (same name stem and article type), 103 is a byte copy of 3."""
    (root / "images").mkdir(parents=True)
    articles = ["Tshirts", "Shirts", "Jeans", "Watches"]
    lines, photos = [], {}
    for i in range(1, n + 1):
        article = articles[i % 4]
        lines.append(HEADER_ROW.format(id=i, article=article, colour="Blue", name=f"Brand{i} Men Blue {article}"))
        photos[i] = photo(i)
    lines.append(HEADER_ROW.format(id=101, article=articles[1], colour="Blue", name="Other Men Blue Shirts"))
    photos[101] = recompressed(photos[1], 60)
    lines.append(HEADER_ROW.format(id=102, article=articles[2], colour="Red", name="Brand2 Men Red Jeans"))
    photos[102] = photo(1002)
    lines.append(HEADER_ROW.format(id=103, article=articles[3], colour="Blue", name="Another Men Blue Watches"))
    photos[103] = photos[3]
    write_styles(root / "styles.csv", lines)
    for i, data in photos.items():
        (root / "images" / f"{i}.jpg").write_bytes(data)
    return root


def test_close_pairs_finds_exactly_the_pairs_brute_force_finds():
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2, (400, 256), dtype=np.uint8)
    for a, b, flips in ((0, 1, 0), (2, 3, 7), (4, 5, 16), (6, 7, 17), (8, 9, 30)):  # planted pairs
        bits[b] = bits[a]
        bits[b, rng.choice(256, flips, replace=False)] ^= 1
    hashes = [np.packbits(row).tobytes().hex() for row in bits]
    distance = (bits[:, None, :] != bits[None, :, :]).sum(2)
    brute = {(i, j) for i, j in zip(*np.nonzero(distance <= 16), strict=True) if i < j}
    assert set(close_pairs(hashes)) == brute
    assert {(0, 1), (2, 3), (4, 5)} <= brute and (6, 7) not in brute


def test_name_stems_drop_the_colour_and_punctuation():
    assert name_stem("Nike Men AS T90 Black Tshirts", "Black") == name_stem("Nike Men AS T90 White Tshirts", "White")
    assert name_stem("Turtle Men Navy-Blue Check Shirt", "Navy Blue") == "turtle men check shirt"
    assert name_stem(None, None) == ""


def test_groups_join_near_copies_and_stems_and_nothing_else():
    products_ = [Product(1, "0" * 64, "A Men Blue Tshirts", "Blue", "Tshirts"),
                 Product(2, "0" * 63 + "f", "B Men Blue Shirts", "Blue", "Shirts"),  # 4 bits from 1
                 Product(3, "f" * 64, "C Men Red Tshirts", "Red", "Tshirts"),
                 Product(4, "f0" * 32, "C Men Green Tshirts", "Green", "Tshirts"),  # stem of 3
                 Product(5, "0f" * 32, "C Men Green Jeans", "Green", "Jeans"),  # same stem, other type
                 Product(6, None, "D", None, None)]
    assert near_duplicate_groups(products_) == {1: 1, 2: 1, 3: 3, 4: 3, 5: 5, 6: 6}


def test_product_images_records_groups_and_the_split_never_separates_one(backend, tmp_path):
    resources = backend.resources(near_duplicate_catalog(tmp_path / "ds"))
    result = dg.materialize([products, product_images], resources=resources, run_config=QUIET)
    meta = {k: v.value for k, v in result.get_asset_materialization_events()[1].materialization.metadata.items()}
    with backend.engine().connect() as conn:
        groups = dict(conn.execute(sa.select(images_table.c.id, images_table.c.near_duplicate_group)).all())
    assert groups[101] == groups[1] == 1  # the same shot saved again
    assert groups[102] == groups[2] == 2  # the same item in another colour
    assert groups[103] == groups[3] == 3  # byte-identical
    assert meta["near_duplicate_groups"] == 3 and meta["products_in_groups"] == 6
    assert "data:image/png;base64," in meta["largest_groups_thumbnails"]
    [exact] = [c for c in result.get_asset_check_evaluations() if c.check_name == "no_exact_duplicates"]
    assert (exact.passed, exact.metadata["products_sharing_a_photo"].value) == (False, 2)

    rows = catalog_rows(backend.engine()).rows
    ids, row_groups = [r["id"] for r in rows], [r["group"] for r in rows]
    kept, unseen, first = hold_out_newest(ids, row_groups, 0.1)
    # The newest 10% of 43 ids start at 40; 101-103 take their groups (1, 2, 3) with them.
    assert first == 40 and {ids[i] for i in unseen} == {1, 2, 3, 40, 101, 102, 103}
    for seed in range(20):
        train, val = split_by_group(np.asarray(row_groups)[kept].tolist(), 0.3, seed)
        train_groups = {row_groups[kept[i]] for i in train}
        assert train_groups.isdisjoint({row_groups[kept[i]] for i in val})


def test_an_older_product_images_table_gains_the_new_columns(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # the table as an earlier version created it, with a row
        conn.execute(sa.text("CREATE TABLE product_images (id BIGINT PRIMARY KEY, key TEXT NOT NULL, width INTEGER "
                             "NOT NULL, height INTEGER NOT NULL, mode TEXT NOT NULL, format TEXT NOT NULL, bytes "
                             "BIGINT NOT NULL, md5 VARCHAR(32) NOT NULL)"))
        conn.execute(sa.text("INSERT INTO product_images VALUES (7, 'catalog/images/7.jpg', 60, 80, 'RGB', 'JPEG', "
                             "1234, 'abc')"))
    upgraded = CatalogDatabase(url=url).engine
    columns = [c["name"] for c in sa.inspect(upgraded).get_columns("product_images")]
    assert columns[-2:] == ["phash", "near_duplicate_group"]
    with upgraded.connect() as conn:
        assert conn.execute(sa.select(images_table)).all() == [(7, "catalog/images/7.jpg", 60, 80, "RGB", "JPEG",
                                                                1234, "abc", None, None)]


def test_a_model_trained_from_the_store_stream_round_trips(tmp_path):
    """The stream decodes what the array holds, and a model trained from it saves and reloads
    to the same predictions (the round trip every model must pass)."""
    rng = np.random.default_rng(0)
    labels = [["Apparel", "Topwear", "Tshirts"], ["Footwear", "Shoes", "Heels"], ["Accessories", "Watches", "Watches"]]
    store = LocalObjectStore(tmp_path / "store")
    x = np.full((36, 32, 32, 3), 255, dtype=np.uint8)
    rows, keys = [], []
    for i in range(36):
        x[i, 8:24, 8:24, i % 3] = rng.integers(0, 60)
        buffer = io.BytesIO()
        Image.fromarray(x[i]).save(buffer, "PNG")  # lossless: the stream must give back x exactly
        keys.append(f"train/{i}.png")
        store.put_bytes(keys[-1], buffer.getvalue())
        rows.append(dict(zip(HEADS, labels[i % 3], strict=True)))
    stream = StoreImages(store.get_bytes, keys, 32, io_workers=4)
    decoded = dict(stream.dataset(np.arange(36)).as_numpy_iterator())
    assert all(np.array_equal(decoded[i], x[i]) for i in range(36))
    shuffled = [int(i) for i, _ in stream.dataset(np.arange(36), shuffle_seed=1).as_numpy_iterator()]
    assert sorted(shuffled) == list(range(36)) and shuffled != list(range(36))

    vocab = build_vocabularies(rows, min_examples=1)
    config = TrainConfig(image_size=32, epochs=1, batch_size=8, widths=(8, 16, 16, 32), blocks=(1, 1, 1, 1))
    result = train_classifier(stream, encode_targets(rows, vocab), list(range(36)), vocab, config, log=lambda m: None)
    assert result.epochs_run == 1 and len(result.val_index) == 5  # 15% of 36, by product
    classes = {h: list(vocab[h].classes) for h in HEADS}
    artifacts.save_model(store, result.model, artifacts.labels_document_from_classes(classes, 32), "v1")
    reloaded = artifacts.load_latest(store, tmp_path / "work")
    direct = artifacts.keras_predict(result.model)(x[:8])
    again = reloaded.predict(x[:8])
    for head in HEADS:
        np.testing.assert_allclose(direct[head], again[head], atol=1e-6)
    assert ArrayImages(x).image_size == 32


@pytest.mark.parametrize("use_augmented", [False, True])
def test_training_on_an_image_set_uses_exactly_that_sets_images(backend, tmp_path, use_augmented):
    from fashion_assets.augmented_sets.assets import augmented_set

    resources = backend.resources(near_duplicate_catalog(tmp_path / "ds"))
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([products, product_images], resources=resources, instance=instance, run_config=QUIET).success
    store = backend.store()
    QueryRegistry(store).put("shirts", "SELECT id FROM products WHERE article_type IN ('Shirts', 'Jeans')")
    instance.add_dynamic_partitions(image_queries.name, ["shirts"])
    assets = [image_set, augmented_set] if use_augmented else [image_set]
    assert dg.materialize(assets, partition_key="shirts", resources=resources, instance=instance,
                          run_config={**QUIET, "ops": {"augmented_set": {"config": {"variants": 2}}}}
                          if use_augmented else QUIET).success
    set_ids = {i for i in range(1, 41) if i % 4 in (1, 2)} | {101, 102}
    config = {"image_set": "shirts", "use_augmented": use_augmented, "epochs": 1, "image_size": 32, "batch_size": 4,
              "min_examples": 1}
    result = dg.materialize([fashion_classifier], resources=resources, instance=instance,
                            run_config={**QUIET, "ops": {"fashion_classifier": {"config": config}}})
    meta = {k: v.value for k, v in result.get_asset_materialization_events()[0].materialization.metadata.items()}
    trained_on = meta["trained_on"]
    copies = 3 if use_augmented else 1  # the original and its variants
    assert meta["training_images"] + (meta["validation_images"] + meta["unseen_images"]) * copies == \
        len(set_ids) * copies
    spec = store.get_bytes(layout.augmented_latest("shirts")).decode() if use_augmented else None
    assert trained_on == {"source": "image_set", "image_set": "shirts", "augmented_spec": spec, "set_version": 1,
                          "set_version_digest": resolve(store, "shirts").digest,
                          "manifest_md5": md5_hex(store.get_bytes(layout.manifest("shirts"))),
                          "images": meta["training_images"]}
    labels = json.loads(store.get_bytes(layout.model_labels(meta["version"])))
    assert labels["trained_on"] == trained_on and "unseen_range_metrics" in labels


def test_a_giant_group_does_not_take_the_catalog_into_the_unseen_range():
    """Blank photos all hash alike: one group of almost everything. Holding it out whole would
    leave nothing to train on, so only the newest ids are held out then."""
    ids = list(range(1, 21))
    kept, unseen, first = hold_out_newest(ids, [1] * 19 + [20], 0.1)
    assert (first, [ids[i] for i in unseen], len(kept)) == (19, [19, 20], 18)
    kept, unseen, first = hold_out_newest(ids, [1, 1, *range(3, 21)], 0.1)  # a small group still goes whole
    assert [ids[i] for i in unseen] == [19, 20]
    kept, unseen, _ = hold_out_newest(ids, [*range(1, 19), 1, 20], 0.1)
    assert [ids[i] for i in unseen] == [1, 19, 20]


def test_class_weights_and_the_optional_recipe_parts_train_and_round_trip(tmp_path):
    """class_weights: n_c ** -balance with mean 1 over the training images; a recipe with EMA,
    mixup and balanced weights trains, and its saved model reloads to the same predictions."""
    from fashion_assets.classifier.train import class_weights

    weights = class_weights(np.array([0, 0, 0, 1, -1]), 3, 0.5)
    assert [round(float(w), 4) for w in weights] == [0.8453, 1.4641, 0.0]
    assert class_weights(np.array([0, 1, 1]), 2, 0.0).tolist() == [1.0, 1.0]

    rng = np.random.default_rng(0)
    labels = [["Apparel", "Topwear", "Tshirts"], ["Footwear", "Shoes", "Heels"], ["Accessories", "Watches", "Watches"]]
    x = np.full((36, 32, 32, 3), 255, dtype=np.uint8)
    rows = []
    for i in range(36):
        x[i, 8:24, 8:24, i % 3] = rng.integers(0, 60)
        rows.append(dict(zip(HEADS, labels[i % 3], strict=True)))
    vocab = build_vocabularies(rows, min_examples=1)
    config = TrainConfig(image_size=32, epochs=2, batch_size=8, widths=(8, 16, 16, 32), blocks=(1, 1, 1, 1),
                         ema=0.9, mixup=0.2, balance=0.5)
    result = train_classifier(x, encode_targets(rows, vocab), list(range(36)), vocab, config, log=lambda m: None)
    assert result.epochs_run == 2 and len(result.val_index) == 5
    store = LocalObjectStore(tmp_path / "store")
    classes = {h: list(vocab[h].classes) for h in HEADS}
    artifacts.save_model(store, result.model, artifacts.labels_document_from_classes(classes, 32), "v1")
    again = artifacts.load_latest(store, tmp_path / "work").predict(x[:8])
    direct = artifacts.keras_predict(result.model)(x[:8])
    for head in HEADS:
        np.testing.assert_allclose(direct[head], again[head], atol=1e-6)
