"""Where training and evaluation images come from: streamed from the object store, so memory
does not grow with the number of images (10 million 64 px images would be ~120 GB as one
array), or an array already in memory (tests, small experiments). Plain module: no Dagster.

Both give a ``tf.data`` pipeline of ``(index, uint8 image [S, S, 3])`` over the rows asked for;
the index lets the caller find each image's labels and keep results in row order whatever order
the images arrive in. The store source reads bytes on a bounded thread pool, decodes and resizes
in parallel inside TensorFlow (``images.decode_and_resize``, the same code as inference), and
each pass over a shuffled source draws a new order from its seed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import numpy as np

from ..core import tf_runtime
from ..core.parallel import bounded_map


class Images(Protocol):
    image_size: int

    def dataset(self, indices: np.ndarray, shuffle_seed: int | None = None):
        """``tf.data.Dataset`` of ``(index, image)`` for ``indices``; reshuffled on every pass
        when ``shuffle_seed`` is given."""


class ArrayImages:
    """Images already decoded, as one ``uint8 [N, S, S, 3]`` array."""

    def __init__(self, array: np.ndarray):
        self.array = array
        self.image_size = int(array.shape[1])

    def dataset(self, indices: np.ndarray, shuffle_seed: int | None = None):
        tf = tf_runtime.tensorflow()

        array = tf.constant(self.array)
        ds = tf.data.Dataset.from_tensor_slices(np.asarray(indices, dtype=np.int64))
        if shuffle_seed is not None:
            ds = ds.shuffle(len(indices), seed=shuffle_seed, reshuffle_each_iteration=True)
        return ds.map(lambda i: (i, tf.gather(array, i)))


class StoreImages:
    """Images read from the object store by key, decoded as they are needed."""

    def __init__(self, read: Callable[[str], bytes], keys: Sequence[str], image_size: int, io_workers: int = 16):
        self.read, self.keys, self.image_size, self.io_workers = read, keys, image_size, io_workers

    def dataset(self, indices: np.ndarray, shuffle_seed: int | None = None):
        from .images import decoded

        indices = np.asarray(indices, dtype=np.int64)
        rng = np.random.default_rng(shuffle_seed)

        def read() -> Iterator[tuple[int, bytes]]:  # called again for every pass, in a new order
            order = indices if shuffle_seed is None else rng.permutation(indices)
            return bounded_map(lambda i: (i, self.read(self.keys[i])), order.tolist(), self.io_workers)

        return decoded(read, self.image_size, count=len(indices))


def predict_in_order(images: Images, indices: np.ndarray, predict: Callable[[np.ndarray], dict[str, np.ndarray]],
                     heads: Sequence[str], batch_size: int = 256) -> dict[str, np.ndarray]:
    """Probabilities per head for ``indices``, in that order (images may arrive in any order)."""
    tf = tf_runtime.tensorflow()
    from .images import without_autotune

    position = {int(index): row for row, index in enumerate(np.asarray(indices).tolist())}
    out: dict[str, np.ndarray] = {}
    ds = without_autotune(images.dataset(indices).batch(batch_size).prefetch(tf.data.AUTOTUNE))
    for batch_indices, batch_images in ds.as_numpy_iterator():
        probs = predict(batch_images)
        rows = np.array([position[int(i)] for i in batch_indices])
        for head in heads:
            if head not in out:
                out[head] = np.zeros((len(indices), probs[head].shape[1]), dtype=np.float32)
            out[head][rows] = probs[head]
    return out
