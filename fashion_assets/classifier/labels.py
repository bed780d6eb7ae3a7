"""Label vocabularies of the three heads, with rare classes folded into ``other``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

HEADS = ("master_category", "sub_category", "article_type")
OTHER = "other"
# A class needs this many training images to get its own output; fewer go to "other". Below it
# a class is too rare to learn from scratch and would only add noise to the softmax.
DEFAULT_MIN_EXAMPLES = 20


@dataclass(frozen=True)
class Vocabulary:
    head: str
    classes: tuple[str, ...]  # output order; "other" last when present

    def encode(self, value: str | None) -> int:
        try:
            return self.classes.index(value or OTHER)
        except ValueError:
            return self.classes.index(OTHER) if OTHER in self.classes else -1

    def to_json(self) -> list[str]:
        return list(self.classes)


def build_vocabularies(rows: Sequence[dict], min_examples: int = DEFAULT_MIN_EXAMPLES) -> dict[str, Vocabulary]:
    vocabularies = {}
    for head in HEADS:
        counts = Counter(row[head] or OTHER for row in rows)
        kept = sorted(c for c, n in counts.items() if n >= min_examples and c != OTHER)
        folded = any(n < min_examples for c, n in counts.items()) or OTHER in counts
        vocabularies[head] = Vocabulary(head, tuple(kept) + ((OTHER,) if folded or not kept else ()))
    return vocabularies


def vocabularies_from_classes(classes: Mapping[str, Sequence[str]]) -> dict[str, Vocabulary]:
    """The vocabularies of a model that exists already (its ``labels.json``'s heads)."""
    return {h: Vocabulary(h, tuple(classes[h])) for h in HEADS}


def encode_targets(rows: Sequence[Mapping], vocabularies: Mapping[str, Vocabulary]) -> dict[str, np.ndarray]:
    """Class indices per head for ``rows`` (dicts with the three head columns): the one path from
    catalog labels to training and evaluation targets. A label the vocabulary lacks becomes
    ``other`` (or -1 when the model has no ``other``)."""
    return {h: np.array([vocabularies[h].encode(row[h]) for row in rows], dtype=np.int64) for h in HEADS}
