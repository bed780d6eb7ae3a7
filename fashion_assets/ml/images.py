"""Image bytes -> model input, the same way for training and inference: a ``tf.data`` pipeline
that decodes (JPEG, PNG, GIF, BMP; grayscale and CMYK too) in parallel, resizes with
antialiasing, and prefetches."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np


def decode_and_resize(data, image_size: int):
    """A ``tf.string`` of image bytes -> ``uint8 [image_size, image_size, 3]``."""
    import tensorflow as tf

    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def batches(
    items: Iterable[tuple[int, bytes]], image_size: int, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(tag, image bytes)`` -> batches of ``(tags, uint8 images)``, decoded in parallel.

    ``tag`` is any int64 the caller uses to find the row again (an index, a product id).
    """
    import tensorflow as tf

    dataset = tf.data.Dataset.from_generator(
        lambda: iter(items),
        output_signature=(tf.TensorSpec((), tf.int64), tf.TensorSpec((), tf.string)),
    )
    dataset = (
        dataset.map(lambda tag, data: (tag, decode_and_resize(data, image_size)), num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    for tags, images in dataset.as_numpy_iterator():
        yield tags, images


def load_array(items: Iterable[tuple[int, bytes]], count: int, image_size: int) -> np.ndarray:
    """All images in one ``uint8`` array, in tag order (tags are 0..count-1)."""
    out = np.empty((count, image_size, image_size, 3), dtype=np.uint8)
    for tags, images in batches(items, image_size, 256):
        out[tags] = images
    return out
