"""Batched inference over image bytes: decode in parallel, prefetch, predict. Plain module."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from .artifacts import LoadedModel
from .images import batches
from .labels import HEADS


def predict_rows(
    model: LoadedModel,
    items: Iterable[tuple[int, bytes]],
    batch_size: int = 128,
    on_batch: Callable[[int], None] = lambda n: None,
) -> Iterator[tuple[int, dict]]:
    """``(tag, image bytes)`` -> ``(tag, {head_label, head_confidence, head_top5})`` per image."""
    classes = {h: model.classes(h) for h in HEADS}
    for tags, images in batches(items, model.image_size, batch_size):
        probs = model.predict(images)
        top5 = {h: np.argsort(-probs[h], axis=1)[:, :5] for h in HEADS}
        for i, tag in enumerate(tags.tolist()):
            row = {}
            for head in HEADS:
                p = probs[head][i]
                best = int(top5[head][i, 0])
                row[f"{head}_label"] = classes[head][best]
                row[f"{head}_confidence"] = float(p[best])
                row[f"{head}_top5"] = json.dumps(
                    [[classes[head][int(j)], round(float(p[j]), 5)] for j in top5[head][i]]
                )
            yield tag, row
        on_batch(len(tags))
