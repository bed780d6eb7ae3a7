"""Batched inference over image bytes: decode in parallel (``classifier.images``, the same
preprocessing as training), prefetch, predict, keep the top 5 per head. Plain module: no Dagster."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from ..classifier.artifacts import LoadedModel
from ..classifier.images import batches
from ..classifier.labels import HEADS


def predict_rows(
    model: LoadedModel,
    items: Iterable[tuple[int, bytes]],
    batch_size: int = 128,
    on_batch: Callable[[int], None] = lambda n: None,
) -> Iterator[tuple[int, dict]]:
    """``(tag, image bytes)`` -> ``(tag, {head_label, head_confidence, head_top5})`` per image."""
    classes = {h: np.asarray(model.classes(h), dtype=object) for h in HEADS}
    for tags, images in batches(items, model.image_size, batch_size):
        probs = model.predict(images)
        columns = {}
        for head in HEADS:  # whole-batch numpy work: per-row Python here would cap the rate
            p = probs[head]
            k = min(5, p.shape[1])
            top = np.argpartition(-p, k - 1, axis=1)[:, :k]
            top = np.take_along_axis(top, np.argsort(-np.take_along_axis(p, top, 1), axis=1), 1)
            top_p = np.round(np.take_along_axis(p, top, 1).astype(float), 5)
            columns[f"{head}_label"] = classes[head][top[:, 0]]
            columns[f"{head}_confidence"] = top_p[:, 0]
            columns[f"{head}_top5"] = [
                json.dumps(list(zip(names, probabilities, strict=True)))
                for names, probabilities in zip(classes[head][top].tolist(), top_p.tolist(), strict=True)
            ]
        for i, tag in enumerate(tags.tolist()):
            yield tag, {
                name: (float(values[i]) if name.endswith("_confidence") else values[i])
                for name, values in columns.items()
            }
        on_batch(len(tags))
