"""Calibrated confidence and auto-tag thresholds: the one place that turns a model's plain
probabilities into the confidence a user acts on. Plain module (NumPy only, no TensorFlow, no
Dagster): the ``predictions`` table, the gateway and the labelling export all call it.

The contract, for tools outside the project, lives in ``labels.json``::

    "calibration": {"<head>": {"temperature": T, "threshold": c}, ...}

The model's outputs stay plain probabilities ``p``; the calibrated probabilities are
``softmax(log(p) / T)``, and a head's tag is *automatic* (written without a person) where its
calibrated top-1 probability is ``>= c``. ``c`` is ``null`` where no confidence reached the asked
precision on validation: that head is never automatic. A model without ``calibration`` (imported,
or trained before it existed) is used with ``T = 1`` and is never auto-applied.

Temperatures are fitted on the validation groups (never trained on) by minimising the negative
log-likelihood; thresholds are the lowest confidence at which the validation precision reaches
``autotag_precision``. Both are then *measured* on the unseen range, which neither saw.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .labels import HEADS

CALIBRATION = "calibration"  # the labels.json key
EPS = 1e-12  # log(0) guard: a probability the model rounded to 0 stays the least likely class
# Temperatures searched: from sharpening 4x to flattening 20x; beyond that a head is broken.
T_MIN, T_MAX = 0.25, 20.0


@dataclass(frozen=True)
class HeadCalibration:
    temperature: float = 1.0
    threshold: float | None = None  # None: never automatic

    def to_json(self) -> dict:
        return {"temperature": round(float(self.temperature), 6),
                "threshold": None if self.threshold is None else round(float(self.threshold), 6)}


def apply_temperature(p: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(p) / T)`` row by row, for probabilities ``p`` ``[N, C]``."""
    p = np.asarray(p, dtype=np.float64)
    if temperature == 1.0:
        return p.astype(np.float32)
    logits = np.log(np.clip(p, EPS, 1.0)) / float(temperature)
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _nll(p: np.ndarray, y: np.ndarray, temperature: float) -> float:
    q = apply_temperature(p, temperature).astype(np.float64)
    return float(-np.log(np.clip(q[np.arange(len(y)), y], EPS, 1.0)).mean())


def fit_temperature(p: np.ndarray, y: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of the true classes ``y``
    (indices; rows with ``y < 0``, a class the model lacks, are left out). A coarse grid on
    log T, then golden-section search around its best point; 1.0 when there is nothing to fit."""
    p, y = np.asarray(p), np.asarray(y)
    keep = y >= 0
    p, y = p[keep], y[keep]
    if len(y) < 2 or p.shape[1] < 2:
        return 1.0
    grid = np.exp(np.linspace(np.log(T_MIN), np.log(T_MAX), 41))
    losses = [_nll(p, y, t) for t in grid]
    best = int(np.argmin(losses))
    lo, hi = np.log(grid[max(0, best - 1)]), np.log(grid[min(len(grid) - 1, best + 1)])
    golden = (np.sqrt(5) - 1) / 2
    a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
    fa, fb = _nll(p, y, np.exp(a)), _nll(p, y, np.exp(b))
    for _ in range(40):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - golden * (hi - lo)
            fa = _nll(p, y, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + golden * (hi - lo)
            fb = _nll(p, y, np.exp(b))
    return float(np.exp((lo + hi) / 2))


def expected_calibration_error(p: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE of the top-1 confidence: the images' share-weighted gap between confidence and
    accuracy over ``bins`` equal-width confidence bins."""
    p, y = np.asarray(p), np.asarray(y)
    if not len(y):
        return 0.0
    confidence, correct = p.max(axis=1), (p.argmax(axis=1) == y)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(float(correct[mask].mean()) - float(confidence[mask].mean()))
    return float(ece)


def precision_curve(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, precision, coverage), one point per distinct confidence, highest first:
    tagging every image whose confidence is ``>= thresholds[i]`` is right ``precision[i]`` of the
    time and covers ``coverage[i]`` of the images."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=bool)
    if not len(confidence):
        return np.array([]), np.array([]), np.array([])
    order = np.argsort(-confidence, kind="stable")
    c, ok = confidence[order], correct[order]
    hits, taken = np.cumsum(ok), np.arange(1, len(c) + 1)
    last = np.r_[c[1:] != c[:-1], True]  # the last of each run of equal confidences
    return c[last], hits[last] / taken[last], taken[last] / len(c)


def threshold_for_precision(confidence: np.ndarray, correct: np.ndarray, precision: float) -> float | None:
    """The lowest confidence ``c`` at which the images with confidence ``>= c`` are right at
    least ``precision`` of the time; None when no threshold reaches it."""
    thresholds, reached, _ = precision_curve(confidence, correct)
    ok = np.flatnonzero(reached >= precision)
    return float(thresholds[ok[-1]]) if len(ok) else None


def precision_and_coverage(confidence: np.ndarray, correct: np.ndarray,
                           threshold: float | None) -> tuple[float | None, float]:
    """Precision (None when nothing is covered) and coverage of tagging where confidence >= threshold."""
    confidence, correct = np.asarray(confidence), np.asarray(correct, dtype=bool)
    if threshold is None or not len(confidence):
        return None, 0.0
    covered = confidence >= threshold
    return (float(correct[covered].mean()) if covered.any() else None), float(covered.mean())


def fit_head(p: np.ndarray, y: np.ndarray, precision: float) -> HeadCalibration:
    """Temperature, then the threshold on the calibrated confidence, both on validation."""
    temperature = fit_temperature(p, y)
    q = apply_temperature(p, temperature)
    keep = np.asarray(y) >= 0
    threshold = threshold_for_precision(q.max(1)[keep], (q.argmax(1) == y)[keep], precision)
    return HeadCalibration(temperature, threshold)


def head_calibration(labels: Mapping, head: str) -> HeadCalibration:
    """A model's calibration of ``head`` from its ``labels.json``; T = 1, never automatic when
    it has none."""
    entry = (labels.get(CALIBRATION) or {}).get(head)
    if not entry:
        return HeadCalibration()
    threshold = entry.get("threshold")
    return HeadCalibration(float(entry.get("temperature") or 1.0), None if threshold is None else float(threshold))


def calibrated(probs: Mapping[str, np.ndarray], labels: Mapping) -> dict[str, np.ndarray]:
    """Every head's probabilities, calibrated by the model's own temperatures: what every
    consumer (predictions, gateway, export) reports as confidence."""
    return {h: apply_temperature(p, head_calibration(labels, h).temperature) for h, p in probs.items()}


def automatic(confidence: np.ndarray, labels: Mapping, head: str) -> np.ndarray:
    """Per image, whether ``head``'s tag is applied without a person: calibrated top-1
    confidence at or above the model's threshold (never, for a model without one)."""
    threshold = head_calibration(labels, head).threshold
    confidence = np.asarray(confidence, dtype=np.float64)
    if threshold is None:
        return np.zeros(confidence.shape, dtype=bool)
    # The table and the gateway keep 5 decimals: compare at that precision, so a stored
    # confidence equal to the threshold reads back as automatic too.
    return np.round(confidence, 5) >= round(threshold, 5)


def trust_figures(calibration: dict | None, parts: dict[str, tuple[dict, dict]]) -> dict[str, dict[str, dict]]:
    """Per head and part (validation, unseen range): the expected calibration error before and
    after the temperature, and the precision and coverage of the automatic tags."""
    labels = {"calibration": calibration} if calibration else {}
    out: dict[str, dict[str, dict]] = {h: {} for h in HEADS}
    for part, (probs, truth) in parts.items():
        for head in HEADS:
            keep = truth[head] >= 0
            raw, y = probs[head][keep], truth[head][keep]
            calibrated = _calibrated(raw, labels, head)
            auto = automatic(calibrated.max(1), labels, head)
            right = calibrated.argmax(1) == y
            out[head][part] = {
                "images": int(len(y)),
                "ece_before": round(expected_calibration_error(raw, y), 4),
                "ece_after": round(expected_calibration_error(calibrated, y), 4),
                "precision": round(float(right[auto].mean()), 4) if auto.any() else None,
                "coverage": round(float(auto.mean()), 4) if len(y) else 0.0,
            }
    return out


def _calibrated(p: np.ndarray, labels: dict, head: str) -> np.ndarray:
    return calibrated({head: p}, labels)[head]


def describe_trust(calibration: dict | None, trust: dict, head: str) -> str:
    entry = (calibration or {}).get(head) or {}
    parts = [f"temperature {entry.get('temperature', 1.0):.3f}",
             "never automatic" if entry.get("threshold") is None else f"auto-tag threshold {entry['threshold']:.4f}"]
    for part, f in trust[head].items():
        precision = "-" if f["precision"] is None else f"{f['precision']:.4f}"
        parts.append(f"{part}: ECE {f['ece_before']:.4f} -> {f['ece_after']:.4f}, auto precision {precision} "
                     f"on {f['coverage']:.1%}")
    return "; ".join(parts)
