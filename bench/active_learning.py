"""Benchmark: the active-learning loop, with the catalog's own labels standing in for people; by
hand, never in CI.

    .venv/bin/python bench/active_learning.py [--seeds 3] [--label 200] [--epochs 10] [--size 32]
        [--pool-fraction 0.4] [--store /tmp/fashion-bench-al] [--out results.jsonl]

What it measures: how much a model gains from the photos people would label next when they are
chosen by the export's doubt queue (``fashion-assets export --queue doubt``) rather than at random.

1. Ingests the shared catalog once into a local store (``--store``, reused when this script made
   it before), builds ``classifier_inputs`` at ``--size`` px and holds those pixels in memory.
2. Splits as ``fashion_classifier`` does: the *unseen range* (the newest 10 % of product ids with
   their near-duplicate groups, ``train.hold_out_newest``) is never trained on and gives every
   figure below. Of the other rows, ``--pool-fraction`` of the groups (seeded) are the *pool*, the
   photos nobody has labelled yet; model M0 is trained from scratch on the rest (a small recipe,
   ``small_recipe``; the validation split inside ``train.train_classifier`` as usual) and
   calibrated on its validation rows (``calibration.fit_head``), so the auto-tag flags exist.
3. M0 scores the pool; the scores become rows shaped like the ``predictions`` table
   (``<head>_label``, ``<head>_top5``, ``<head>_auto``, calibrated), and the queue module's own
   functions choose ``--label`` photos, one per near-duplicate group:
   ``doubt``: ``queue.doubt_queue`` (not automatic; disagreements with the catalog first, then
   least margin); ``doubt-margin-only``: the same function given no catalog labels, so nothing
   disagrees and the order is margin alone; ``random``: ``queue.random_queue``.
4. Each choice is "labelled" with the catalog's labels and a model is retrained from scratch on
   M0's rows plus those photos (same recipe, same seed, same validation rows as M0: the labelled
   photos join the training side); all four models are measured on the unseen range.
5. Repeated for ``--seeds`` seeds (the pool draw and the training seed change).

Read the figures with this in mind: "disagrees with the catalog" compares M0 with the catalog's
labels, and here those labels are also the stand-in for people's answers, so ``doubt`` is told
where M0 is wrong on the very labels it is then given: an oracle a real queue has only where the
catalog's labels are people's. ``doubt-margin-only`` uses the model's doubt alone; the gap
between the two is how much of the gain comes from that oracle-like signal. ``m0_wrong`` says how
many of each chosen set M0 had wrong per head (the catalog's labels as the truth).

Output: one line per model and seed and the mean gains (doubt over random, doubt over M0, margin
only over random, random over M0) per head in accuracy points, on stderr, with the minutes and
the machine's load; one JSON line per seed and one summary line to ``--out`` (appended; ``-``:
stdout). The time per training is printed after the first one: at the defaults about a minute
on 2 cores shared with another training (load ~4.5; ~3.5 s an epoch on ~3,700 photos, plus start-up
and scoring), so 3 seeds (12 trainings) take ~15 minutes; ``--epochs 30`` (a stronger M0) still fits
in about half an hour. The unseen range holds 952 photos: one point is ~10 photos, within the noise
of one seed (a few points between two trainings that differ by 200 photos); read the mean.
"""

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Each model gets its own traced predict function: TensorFlow's "retracing" warning says nothing here.
logging.getLogger("tensorflow").setLevel(logging.ERROR)

import numpy as np
from common import DEFAULT_DATASET
from recipes import ingest

from fashion_assets.classifier import train
from fashion_assets.classifier.artifacts import keras_predict
from fashion_assets.classifier.cache import CachedImages, build_cache, catalog_photos
from fashion_assets.classifier.calibration import automatic, calibrated, fit_head
from fashion_assets.classifier.data import ArrayImages, predict_in_order
from fashion_assets.classifier.evaluate import head_metrics
from fashion_assets.classifier.labels import DEFAULT_MIN_EXAMPLES, HEADS, build_vocabularies, encode_targets
from fashion_assets.classifier.rows import catalog_rows
from fashion_assets.labelling import queue
from fashion_assets.predictions.inference import top_classes

QUEUES = ("doubt", "doubt-margin-only", "random")
MODELS = ("m0", *QUEUES)
UNSEEN_FRACTION = 0.1  # BuildSettings.unseen_fraction's default
AUTOTAG_PRECISION = 0.97  # BuildSettings.autotag_precision's default


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def small_recipe(size: int, epochs: int, seed: int) -> train.TrainConfig:
    """A small, quick recipe: 12 trainings must fit in an hour on 2 cores. EMA of the weights
    because the comparison needs a model that does not swing by points from epoch to epoch."""
    return train.TrainConfig(image_size=size, epochs=epochs, widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1),
                             ema=0.99, seed=seed)


def load_pixels(store, rows: list[dict], size: int) -> np.ndarray:
    """Every row's photo from the input cache, as one ``uint8 [N, S, S, 3]`` array (row order)."""
    images = CachedImages(store, size, [r["id"] for r in rows], [r["md5"] for r in rows])
    array = np.zeros((len(rows), size, size, 3), dtype=np.uint8)
    for index, batch in images.dataset(np.arange(len(rows))).batch(1024).as_numpy_iterator():
        array[index] = batch
    return array


def draw_pool(kept: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labelled rows, pool rows) of ``kept``: ``fraction`` of its groups, drawn by ``seed``,
    are the pool, whole groups, so no near-duplicate of a pool photo is labelled from the start."""
    kept_groups = np.unique(groups[kept])
    drawn = np.random.default_rng(seed).permutation(kept_groups)[:int(round(len(kept_groups) * fraction))]
    in_pool = np.isin(groups[kept], drawn)
    return kept[~in_pool], kept[in_pool]


def prediction_rows(probs: dict[str, np.ndarray], labels: dict, classes: dict[str, list[str]],
                    ids: list[int]) -> list[dict]:
    """Rows shaped like the ``predictions`` table (``id``, ``<head>_label``, ``<head>_top5``
    JSON, ``<head>_auto``) from plain probabilities, calibrated as ``predictions`` does."""
    probs = calibrated(probs, labels)
    columns = {}
    for head in HEADS:
        names, top_p = top_classes(probs[head], np.asarray(classes[head], dtype=object))
        columns[head] = (names.tolist(), top_p.tolist(), automatic(top_p[:, 0], labels, head).tolist())
    rows = []
    for i, product_id in enumerate(ids):
        row = {"id": product_id}
        for head, (names, top_p, auto) in columns.items():
            row[f"{head}_label"] = names[i][0]
            row[f"{head}_top5"] = json.dumps(list(zip(names[i], top_p[i], strict=True)))
            row[f"{head}_auto"] = bool(auto[i])
        rows.append(row)
    return rows


class Trainer:
    """Trains one model from scratch on given rows and measures it on the unseen range."""

    def __init__(self, images, targets, ids, groups, vocabularies, unseen):
        self.images, self.targets, self.ids, self.groups = images, targets, ids, groups
        self.vocabularies, self.unseen = vocabularies, unseen
        self.seconds: list[float] = []

    def fit(self, name: str, config: train.TrainConfig, rows: np.ndarray, split_groups: np.ndarray):
        import keras

        keras.backend.clear_session()
        started = time.monotonic()
        result = train.train_classifier(self.images, self.targets, self.ids, self.vocabularies, config,
                                        log=lambda m: say(f"  [{name}] {m}"), groups=split_groups, rows=rows)
        predict = keras_predict(result.model)
        probs = predict_in_order(self.images, self.unseen, predict, HEADS)
        unseen = head_metrics(probs, {h: self.targets[h][self.unseen] for h in HEADS})
        self.seconds.append(time.monotonic() - started)
        return result, predict, {h: round(unseen[h]["accuracy"], 4) for h in HEADS}


def one_seed(trainer: Trainer, rows: list[dict], kept: np.ndarray, args, seed: int, runs_left: int) -> dict:
    started = time.monotonic()
    groups, targets, vocabularies = trainer.groups, trainer.targets, trainer.vocabularies
    labelled, pool = draw_pool(kept, groups, args.pool_fraction, seed)
    config = small_recipe(args.size, args.epochs, seed)
    say(f"seed {seed}: {len(labelled):,} labelled photos, pool of {len(pool):,} "
        f"({len(np.unique(groups[pool])):,} groups), unseen range {len(trainer.unseen):,}")

    m0, predict, accuracy = trainer.fit("m0", config, labelled, groups)
    figures = {"m0": accuracy}
    say(f"seed {seed} m0: unseen {_accuracies(accuracy)}; {trainer.seconds[-1] / 60:.1f} min, {m0.epochs_run} "
        f"epochs on {len(m0.train_index):,} photos; load {os.getloadavg()[0]:.2f}")
    if runs_left:
        say(f"  about {trainer.seconds[-1] / 60:.1f} min per training: ~{trainer.seconds[-1] * runs_left / 60:.0f} "
            f"min for the {runs_left} trainings left")

    # Calibration on M0's validation rows, as fashion_classifier fits it: the auto flags.
    val_probs = predict_in_order(trainer.images, m0.val_index, predict, HEADS)
    labels = {"calibration": {h: fit_head(val_probs[h], targets[h][m0.val_index], AUTOTAG_PRECISION).to_json()
                              for h in HEADS}}
    pool_probs = predict_in_order(trainer.images, pool, predict, HEADS)
    classes = {h: list(vocabularies[h].classes) for h in HEADS}
    pool_ids = [rows[i]["id"] for i in pool]
    predictions = prediction_rows(pool_probs, labels, classes, pool_ids)
    catalog = {rows[i]["id"]: {h: rows[i][h] for h in HEADS} for i in pool}
    group_of = {rows[i]["id"]: rows[i]["group"] for i in pool}
    chosen_sets = {
        "doubt": queue.doubt_queue(predictions, catalog, group_of, args.label),
        "doubt-margin-only": queue.doubt_queue(predictions, {}, group_of, args.label),  # nothing disagrees
        "random": queue.random_queue(pool_ids, predictions, catalog, group_of, args.label, seed=seed),
    }
    auto_share = {h: round(float(np.mean([p[f"{h}_auto"] for p in predictions])), 4) for h in HEADS}
    m0_wrong_at = {h: pool_probs[h].argmax(1) != targets[h][pool] for h in HEADS}
    position_in_pool = {product_id: k for k, product_id in enumerate(pool_ids)}
    by_id = {p["id"]: p for p in predictions}
    row_of = {r["id"]: i for i, r in enumerate(rows)}

    chosen_figures = {}
    # The labelled photos join M0's training side: for the split only, they take the group of one
    # of M0's training rows, so train_classifier draws exactly M0's validation rows again (the
    # pool holds whole groups: no near-duplicate of a chosen photo is among them).
    training_group = groups[m0.train_index[0]]
    for name in QUEUES:
        result = chosen_sets[name]
        chosen_ids = [q.id for q in result.chosen]
        at = [position_in_pool[i] for i in chosen_ids]
        # Disagreements counted the same way for every set (the margin-only queue was given no catalog).
        disagree = sum(1 for i in chosen_ids if queue.assess(by_id[i], catalog[i]).disagreements)
        chosen_figures[name] = {
            "images": len(chosen_ids), "disagree": disagree, "considered": result.considered,
            "m0_wrong": {h: int(m0_wrong_at[h][at].sum()) for h in HEADS},
        }
        chosen_rows = np.array([row_of[i] for i in chosen_ids], dtype=np.int64)
        split_groups = groups.copy()
        split_groups[chosen_rows] = training_group
        retrained, _, accuracy = trainer.fit(name, config, np.sort(np.r_[labelled, chosen_rows]), split_groups)
        assert np.array_equal(np.sort(retrained.val_index), np.sort(m0.val_index)), "validation rows moved"
        figures[name] = accuracy
        say(f"seed {seed} {name}: +{len(chosen_ids)} photos ({disagree} disagree with the catalog; M0 "
            f"wrong on {_counts(chosen_figures[name]['m0_wrong'])}); unseen {_accuracies(accuracy)}; "
            f"{trainer.seconds[-1] / 60:.1f} min; load {os.getloadavg()[0]:.2f}")
    return {
        "seed": seed, "labelled_images": int(len(labelled)), "pool_images": int(len(pool)),
        "pool_groups": int(len(np.unique(groups[pool]))), "unseen_images": int(len(trainer.unseen)),
        "validation_images": int(len(m0.val_index)), "label": args.label,
        "pool_auto_share": auto_share, "calibration": labels["calibration"],
        "unseen_accuracy": figures, "gain": gains(figures), "chosen": chosen_figures,
        "minutes": round((time.monotonic() - started) / 60, 2), "load": os.getloadavg(),
    }


def gains(figures: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Accuracy points gained per head: doubt over random and over M0, margin-only over random,
    random over M0."""
    pairs = {"doubt_vs_random": ("doubt", "random"), "doubt_vs_m0": ("doubt", "m0"),
             "margin_only_vs_random": ("doubt-margin-only", "random"), "random_vs_m0": ("random", "m0")}
    return {key: {h: round(100 * (figures[a][h] - figures[b][h]), 2) for h in HEADS} for key, (a, b) in pairs.items()}


def _accuracies(accuracy: dict[str, float]) -> str:
    return ", ".join(f"{h} {accuracy[h]:.4f}" for h in HEADS)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{h} {counts[h]}" for h in HEADS)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default=str(DEFAULT_DATASET))
    parser.add_argument("--store", default="/tmp/fashion-bench-al", help="work folder, reused if it exists")
    parser.add_argument("--size", type=int, default=32, help="input size in px")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--label", type=int, default=200, help="photos people label per queue")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=20261123, help="the first seed; then +1, +2, ...")
    parser.add_argument("--pool-fraction", type=float, default=0.4, help="share of the groups left unlabelled")
    parser.add_argument("--out", default="-", help="JSON lines appended here; -: stdout")
    args = parser.parse_args()
    started = time.monotonic()
    say(f"load at start {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")

    resources = ingest(args.dataset, Path(args.store))
    store, engine = resources["store"].get_store(), resources["catalog_db"].engine
    cache = build_cache(store, catalog_photos(engine), args.size, log=lambda m: None)
    say(f"catalog ingested and classifier_inputs {args.size}px up to date ({cache.encoded:,} decoded, "
        f"{cache.seconds:.0f}s); {(time.monotonic() - started) / 60:.1f} min so far")
    rows = [r for r in catalog_rows(engine).rows if r["variant"] == 0]
    images = ArrayImages(load_pixels(store, rows, args.size))
    ids = [r["id"] for r in rows]
    groups = np.array([r["group"] for r in rows])
    kept, unseen, first_unseen = train.hold_out_newest(ids, groups, UNSEEN_FRACTION)
    say(f"{len(rows):,} photos; unseen range: {len(unseen):,} (ids >= {first_unseen:,}), never trained on")

    out = sys.stdout if args.out == "-" else open(args.out, "a")
    results = []
    for k in range(args.seeds):
        seed = args.seed + k
        labelled, _ = draw_pool(kept, groups, args.pool_fraction, seed)
        # The vocabularies come from the photos labelled at the start: the pool is unlabelled,
        # and every model of one seed must share one set of outputs to compare.
        vocabularies = build_vocabularies([rows[i] for i in labelled], DEFAULT_MIN_EXAMPLES)
        trainer = Trainer(images, encode_targets(rows, vocabularies), ids, groups, vocabularies, unseen)
        runs_left = (args.seeds - k) * len(MODELS) - 1
        figures = one_seed(trainer, rows, kept, args, seed, runs_left)
        figures["config"] = {f: v for f, v in asdict(small_recipe(args.size, args.epochs, seed)).items()
                             if f != "loss_weights"}
        results.append(figures)
        print(json.dumps(figures), file=out, flush=True)

    mean = {key: {h: round(float(np.mean([r["gain"][key][h] for r in results])), 2) for h in HEADS}
            for key in results[0]["gain"]}
    minutes = (time.monotonic() - started) / 60
    summary = {"summary": True, "seeds": [r["seed"] for r in results], "label": args.label, "size": args.size,
               "epochs": args.epochs, "pool_fraction": args.pool_fraction, "mean_gain_points": mean,
               "mean_unseen_accuracy": {m: {h: round(float(np.mean([r["unseen_accuracy"][m][h] for r in results])), 4)
                                            for h in HEADS} for m in MODELS},
               "minutes": round(minutes, 2), "load": os.getloadavg()}
    print(json.dumps(summary), file=out, flush=True)
    say(f"mean over {len(results)} seed(s), accuracy points on the unseen range:")
    for key, per_head in mean.items():
        say(f"  {key}: " + ", ".join(f"{h} {per_head[h]:+.2f}" for h in HEADS))
    say("  (doubt's catalog-disagreement key uses the labels that also stand in for people's answers: "
        "compare with margin_only)")
    say(f"{minutes:.1f} min in all; load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
