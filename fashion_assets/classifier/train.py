"""Training the classifier from an image source (``data``: streamed from the store, or an array),
with a validation split that never separates a group of near-duplicates. Plain module."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ..core import tf_runtime
from .data import ArrayImages, Images
from .labels import HEADS, Vocabulary


@dataclass
class TrainConfig:
    image_size: int = 64
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    validation_fraction: float = 0.15
    patience: int = 8
    seed: int = 20261123
    widths: tuple[int, ...] = (24, 48, 96, 192)
    blocks: tuple[int, ...] = (1, 1, 2, 1)
    dropout: float = 0.3
    # Polyak averaging of the weights (Keras' optimizer EMA, momentum per step; 0: off): the
    # validation figure of a ~100-step epoch jumps by 5 points from epoch to epoch without it.
    ema: float = 0.0
    mixup: float = 0.0  # mixup's Beta(alpha, alpha) over pairs of a batch; 0: off
    # Class-balanced loss for the long tail: a class's examples weigh n_c ** -balance (mean weight
    # 1 over the training images); 0: off, 1: inverse frequency.
    balance: float = 0.0
    loss_weights: dict = field(default_factory=lambda: {"master_category": 0.5, "sub_category": 0.75,
                                                        "article_type": 1.0})


# Named recipes. ``default`` trains in about 11 minutes on 2 CPU cores (the 8,448-image catalog);
# ``quality`` is for a GPU or a long CPU run: a larger input (the photos are 224 px), a wider and
# deeper network and twice the epochs, about 8x the compute of ``default``.
PRESETS = {
    "default": TrainConfig(),
    "quality": TrainConfig(image_size=96, epochs=60, widths=(32, 64, 128, 256), blocks=(1, 2, 2, 1), patience=12),
}


def split_by_group(groups: Sequence[int], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and validation rows: a fixed, seeded split by group, so a group
    (one product, or a product with its near-duplicates) is never on both sides and the split
    survives a re-run. About ``fraction`` of the groups go to validation."""
    order = np.random.default_rng(seed).permutation(np.asarray(sorted(set(groups))))
    n_val = max(1, int(round(len(order) * fraction))) if len(order) > 1 else 0
    val_groups = set(order[:n_val].tolist())
    in_val = np.fromiter((g in val_groups for g in groups), dtype=bool, count=len(groups))
    return np.flatnonzero(~in_val).astype(np.int64), np.flatnonzero(in_val).astype(np.int64)


MIN_BLOCKS = 20  # a split block is at most 1/20 of the id range: a small selection still splits


def split_groups(groups: Sequence[int], block: int = 1) -> np.ndarray:
    """The unit the split keeps whole: each row's group of near-duplicates (its smallest product
    id), coarsened to blocks of ``block`` consecutive ids of that first id, or of 1/20 of the
    groups' id range where that is smaller."""
    groups = np.asarray(groups, dtype=np.int64)
    if len(groups):
        block = min(block, int(groups.max() - groups.min() + 1) // MIN_BLOCKS)
    return groups if block <= 1 else groups // block


def hold_out_newest(ids: Sequence[int], groups: Sequence[int], fraction: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(kept rows, held-out rows, first held-out id): the newest ``fraction`` of product ids (ids
    grow as products are added) are held out of training and validation altogether, to measure
    the model on a range of the catalog it has never seen; a group with any member in that range
    is held out whole, so no near-duplicate of a held-out product is trained on."""
    ids = np.asarray(ids, dtype=np.int64)
    if fraction <= 0 or len(ids) < 2:
        return np.arange(len(ids), dtype=np.int64), np.array([], dtype=np.int64), int(ids.max(initial=0)) + 1
    unique = np.unique(ids)
    first = int(unique[max(0, int(round(len(unique) * (1 - fraction))))]) if len(unique) > 1 else int(unique[0])
    groups = np.asarray(groups)
    held_groups = set(groups[ids >= first].tolist())
    held = np.fromiter((g in held_groups for g in groups.tolist()), dtype=bool, count=len(groups))
    if held.sum() > max(3 * fraction * len(ids), 1):
        # A giant group (blank or placeholder photos all hash alike) would take most of the
        # catalog with it: hold out the newest ids alone rather than leave nothing to train on.
        held = ids >= first
    return np.flatnonzero(~held).astype(np.int64), np.flatnonzero(held).astype(np.int64), first


def seed_everything(seed: int) -> None:
    keras = tf_runtime.keras()

    keras.utils.set_random_seed(seed)


def _augment_batch(images, seed_stream):
    """Mirror, and shift by up to 1/12 of the size on white: product photos stay the same
    product. Pad-and-crop on uint8 is a fraction of the cost of an affine warp on 2 cores."""
    tf = tf_runtime.tensorflow()

    size = images.shape[1]
    pad = max(1, size // 12)
    images = tf.image.random_flip_left_right(images, seed=seed_stream)
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]], constant_values=255)
    return tf.image.random_crop(padded, tf.shape(images), seed=seed_stream + 1)


def _mixup(images, labels, alpha: float, seed: int):
    """Each image blended with another of its batch (the batch reversed), labels likewise, by a
    weight drawn from Beta(alpha, alpha) per batch; images stay uint8, as the model takes them."""
    tf = tf_runtime.tensorflow()

    a = tf.random.gamma([], alpha, seed=seed)
    b = tf.random.gamma([], alpha, seed=seed + 1)
    lam = a / (a + b)
    mixed = lam * tf.cast(images, tf.float32) + (1 - lam) * tf.cast(tf.reverse(images, [0]), tf.float32)
    return (tf.cast(tf.round(mixed), tf.uint8),
            {h: lam * y + (1 - lam) * tf.reverse(y, [0]) for h, y in labels.items()})


def class_weights(targets: np.ndarray, num_classes: int, balance: float) -> np.ndarray:
    """Per class, ``n_c ** -balance`` scaled so the training images' mean weight is 1 (a class
    with no training image weighs 0)."""
    counts = np.bincount(targets[targets >= 0], minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, np.maximum(counts, 1) ** -balance, 0.0)
    mean = (weights * counts).sum() / max(counts.sum(), 1)
    return (weights / mean if mean else weights).astype(np.float32)


def _dataset(images: Images, indices: np.ndarray, targets: dict[str, np.ndarray], num_classes: dict[str, int],
             batch: int, training: bool, seed: int, mixup: float = 0.0, balance: float = 0.0):
    """(images, one-hot labels per head) batches streamed from ``images``; labels are looked up
    by row index, one-hot encoded per batch (never a [N, classes] matrix in memory)."""
    tf = tf_runtime.tensorflow()

    labels = {h: tf.constant(targets[h], dtype=tf.int32) for h in HEADS}

    def with_labels(index, image):
        return image, {h: tf.one_hot(tf.gather(labels[h], index), num_classes[h]) for h in HEADS}

    ds = images.dataset(indices, shuffle_seed=seed if training else None).map(with_labels)
    ds = ds.batch(batch, drop_remainder=training and len(indices) > batch)
    if training:
        ds = ds.map(lambda images, y: (_augment_batch(images, seed), y), num_parallel_calls=tf.data.AUTOTUNE)
        if mixup > 0:
            ds = ds.map(lambda images, y: _mixup(images, y, mixup, seed), num_parallel_calls=tf.data.AUTOTUNE)
        if balance > 0:  # sample weights per head, from the (possibly mixed) one-hot labels
            weights = {h: tf.constant(class_weights(targets[h][indices], num_classes[h], balance)) for h in HEADS}
            ds = ds.map(lambda images, y: (images, y, {h: tf.reduce_sum(y[h] * weights[h], -1) for h in HEADS}),
                        num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


@dataclass
class TrainResult:
    model: object
    history: dict
    seconds: float
    epochs_run: int
    train_index: np.ndarray
    val_index: np.ndarray


def train_classifier(
    images: Images | np.ndarray,
    targets: dict[str, np.ndarray],
    ids: Sequence[int],
    vocabularies: dict[str, Vocabulary],
    config: TrainConfig,
    log: Callable[[str], None] = print,
    groups: Sequence[int] | None = None,
    rows: np.ndarray | None = None,
) -> TrainResult:
    """Train from scratch; ``targets[head]`` holds class indices into ``vocabularies[head]`` for
    every row, ``images`` gives the rows' images (an array is wrapped as ``ArrayImages``),
    ``groups`` (default: the product ids) keeps near-duplicates on one side of the split, and
    ``rows`` (default: all) are the rows to split into training and validation; the others are
    not used (a held-out range)."""
    keras = tf_runtime.keras()

    from .network import build_classifier

    if isinstance(images, np.ndarray):
        images = ArrayImages(images)
    seed_everything(config.seed)
    rows = np.arange(len(ids), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    groups = np.asarray(ids if groups is None else groups)
    train_pos, val_pos = split_by_group(groups[rows].tolist(), config.validation_fraction, config.seed)
    train_index, val_index = rows[train_pos], rows[val_pos]
    num_classes = {h: len(vocabularies[h].classes) for h in HEADS}
    model = build_classifier(num_classes, config.image_size, config.widths, config.blocks, config.dropout)

    steps = max(1, len(train_index) // config.batch_size) * config.epochs
    schedule = keras.optimizers.schedules.CosineDecay(
        config.learning_rate * 0.1, decay_steps=steps, warmup_target=config.learning_rate,
        warmup_steps=max(1, steps // 20),
    )
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay, use_ema=config.ema > 0,
                                         ema_momentum=config.ema or 0.99),
        loss={h: keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing) for h in HEADS},
        loss_weights=config.loss_weights,
        metrics={h: ["accuracy"] for h in HEADS},
    )
    train_ds = _dataset(images, train_index, targets, num_classes, config.batch_size, True, config.seed,
                        config.mixup, config.balance)
    val_ds = _dataset(images, val_index, targets, num_classes, config.batch_size, False, config.seed)

    class Progress(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            accs = " ".join(f"{h}={logs.get(f'val_{h}_accuracy', 0):.3f}" for h in HEADS)
            log(f"epoch {epoch + 1}/{config.epochs}: loss {logs.get('loss', 0):.3f}, val accuracy {accs}, "
                f"{time.monotonic() - started:.0f}s")

    # With EMA, the averaged weights are in the model at each epoch's end (so the figures, early
    # stopping and the saved model are the averaged ones) and swapped out while it trains.
    callbacks = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if config.ema > 0 else []
    callbacks.append(Progress())
    if len(val_index):
        # Not before half-way: early in the cosine schedule a small validation set can score a
        # lucky epoch (the 1,168-image sample stopped at epoch 10 on epoch 2's weights).
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_article_type_accuracy", mode="max",
                                                       patience=config.patience, restore_best_weights=True,
                                                       start_from_epoch=config.epochs // 2))
    started = time.monotonic()
    history = model.fit(train_ds, validation_data=val_ds if len(val_index) else None, epochs=config.epochs,
                        callbacks=callbacks, verbose=0, shuffle=False)  # the dataset shuffles itself
    return TrainResult(model, history.history, time.monotonic() - started, len(history.history["loss"]),
                       train_index, val_index)


def recipe(preset: str, **overrides) -> TrainConfig:
    """The named preset with the given fields changed (``None`` keeps the preset's value)."""
    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r}: expected one of {', '.join(PRESETS)}")
    return replace(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})
