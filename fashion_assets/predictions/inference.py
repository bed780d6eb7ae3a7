"""Batched inference over image bytes: decode in parallel (``classifier.images``, the same
preprocessing as training), prefetch, predict, keep the top 5 per head. Plain module: no Dagster."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from ..classifier.artifacts import LoadedModel
from ..classifier.calibration import automatic, calibrated
from ..classifier.images import batches
from ..classifier.labels import HEADS


def predict_rows(
    model: LoadedModel,
    items: Iterable[tuple[int, bytes]],
    batch_size: int = 128,
    on_batch: Callable[[int], None] = lambda n: None,
) -> Iterator[tuple[int, dict]]:
    """``(tag, image bytes)`` -> ``(tag, {head_label, head_confidence, head_top5, head_auto})`` per
    image; confidences are calibrated (``classifier.calibration``), and ``head_auto`` says whether
    the tag clears the model's auto-tag threshold."""
    classes = {h: np.asarray(model.classes(h), dtype=object) for h in HEADS}
    for tags, images in batches(items, model.image_size, batch_size):
        probs = calibrated(model.predict(images), model.labels)
        columns = {}
        for head in HEADS:  # whole-batch numpy work: per-row Python here would cap the rate
            names, top_p = top_classes(probs[head], classes[head])
            columns[f"{head}_label"] = names[:, 0]
            columns[f"{head}_confidence"] = top_p[:, 0]
            columns[f"{head}_auto"] = automatic(top_p[:, 0], model.labels, head).tolist()
            columns[f"{head}_top5"] = [
                json.dumps(list(zip(row_names, row_p, strict=True)))
                for row_names, row_p in zip(names.tolist(), top_p.tolist(), strict=True)
            ]
        for i, tag in enumerate(tags.tolist()):
            yield tag, {
                name: (float(values[i]) if name.endswith("_confidence") else values[i])
                for name, values in columns.items()
            }
        on_batch(len(tags))


def top_classes(p: np.ndarray, classes: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``[N, C]`` of one head -> the ``k`` best class names ``[N, k]`` (object) and
    their probabilities rounded to 5 decimals ``[N, k]``, best first. The one place that turns
    scores into answers: the ``predictions`` table and the online gateway both use it."""
    k = min(k, p.shape[1])
    top = np.argpartition(-p, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(top, np.argsort(-np.take_along_axis(p, top, 1), axis=1, kind="stable"), 1)
    return classes[top], np.round(np.take_along_axis(p, top, 1).astype(float), 5)
