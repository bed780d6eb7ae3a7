"""classifier.calibration: temperatures, the expected calibration error, auto-tag thresholds,
and the labels.json contract every consumer applies."""

import numpy as np

from fashion_assets.classifier.calibration import (
    HeadCalibration,
    apply_temperature,
    automatic,
    calibrated,
    expected_calibration_error,
    fit_head,
    fit_temperature,
    head_calibration,
    precision_and_coverage,
    precision_curve,
    threshold_for_precision,
)


def overconfident(n=20_000, classes=10, sharpen=3.0, seed=0, spread=1.2):
    """Labels drawn from softmax(z); the 'model' reports softmax(3 z): right as often, but too sure."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, spread, size=(n, classes))
    true_p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = (rng.random((n, 1)) > np.cumsum(true_p, 1)).sum(1)
    reported = np.exp(sharpen * z) / np.exp(sharpen * z).sum(1, keepdims=True)
    return reported, y


def test_the_temperature_undoes_overconfidence_and_lowers_the_calibration_error():
    p, y = overconfident()
    t = fit_temperature(p[:10_000], y[:10_000])  # fitted on one half ("validation")
    assert abs(t - 3.0) < 0.15
    before = expected_calibration_error(p[10_000:], y[10_000:])  # measured on the other ("unseen")
    after = expected_calibration_error(apply_temperature(p[10_000:], t), y[10_000:])
    assert before > 0.15 and after < 0.02
    # Accuracy does not move: a temperature keeps every row's order of classes.
    assert np.array_equal(apply_temperature(p, t).argmax(1), p.argmax(1))


def test_temperature_is_the_contract_softmax_of_log_p_over_t():
    p = np.array([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0]])
    q = apply_temperature(p, 2.0)
    expected = np.sqrt(p) / np.sqrt(p).sum(1, keepdims=True)  # softmax(log(p) / 2)
    np.testing.assert_allclose(q, expected, atol=1e-6)
    assert apply_temperature(p, 1.0).tolist() == p.astype(np.float32).tolist()
    assert fit_temperature(p[:1], np.array([0])) == 1.0  # nothing to fit


def test_the_threshold_is_the_lowest_confidence_reaching_the_precision():
    confidence = np.array([0.99, 0.95, 0.90, 0.80, 0.70, 0.60])
    correct = np.array([True, True, False, True, False, True])
    thresholds, precision, coverage = precision_curve(confidence, correct)
    assert thresholds.tolist() == [0.99, 0.95, 0.90, 0.80, 0.70, 0.60]
    assert np.round(precision, 4).tolist() == [1.0, 1.0, 0.6667, 0.75, 0.6, 0.6667]
    assert np.round(coverage, 4).tolist() == [0.1667, 0.3333, 0.5, 0.6667, 0.8333, 1.0]
    assert threshold_for_precision(confidence, correct, 0.75) == 0.80
    assert threshold_for_precision(confidence, correct, 0.97) == 0.95
    assert threshold_for_precision(confidence, ~correct, 0.97) is None
    assert precision_and_coverage(confidence, correct, 0.80) == (0.75, 4 / 6)
    assert precision_and_coverage(confidence, correct, None) == (None, 0.0)
    # Ties: images of equal confidence are tagged together or not at all.
    assert threshold_for_precision(np.array([0.9, 0.9, 0.8]), np.array([True, False, True]), 0.6) == 0.8


def test_thresholds_fitted_on_validation_reach_the_asked_precision_there():
    p, y = overconfident(seed=1, classes=5, spread=3.0)  # right 75% of the time
    fitted = fit_head(p, y, 0.97)
    assert abs(fitted.temperature - 3.0) < 0.15
    q = apply_temperature(p, fitted.temperature)
    reached, covered = precision_and_coverage(q.max(1), q.argmax(1) == y, fitted.threshold)
    assert reached >= 0.97 and 0.2 < covered < 0.3
    below = q.max(1)[q.max(1) < fitted.threshold].max()  # the next confidence down misses it
    assert precision_and_coverage(q.max(1), q.argmax(1) == y, below)[0] < 0.97


def test_a_model_without_calibration_is_used_as_it_is_and_never_automatic():
    probs = {"article_type": np.array([[0.999, 0.001], [0.6, 0.4]])}
    assert head_calibration({}, "article_type") == HeadCalibration(1.0, None)
    assert calibrated(probs, {"heads": {}})["article_type"].tolist() == probs["article_type"].astype(np.float32).tolist()
    assert automatic(np.array([0.999, 0.6]), {}, "article_type").tolist() == [False, False]
    labels = {"calibration": {"article_type": {"temperature": 1.0, "threshold": 0.9}}}
    assert automatic(np.array([0.999, 0.6, 0.9]), labels, "article_type").tolist() == [True, False, True]
    assert automatic(np.array([0.999]), {"calibration": {"article_type": {"temperature": 2.0, "threshold": None}}},
                     "article_type").tolist() == [False]
    assert HeadCalibration(1.23456789, 0.987654321).to_json() == {"temperature": 1.234568, "threshold": 0.987654}


def test_the_split_keeps_blocks_of_neighbouring_ids_whole():
    """A style's colours get neighbouring ids: the validation split keeps blocks of consecutive
    (group-first) ids whole, at most 1/20 of the id range, so a small selection still splits."""
    from fashion_assets.classifier.train import split_by_group, split_groups

    groups = np.array([10_000, 10_001, 10_063, 10_064, 10_200, 12_000, 19_999])
    assert split_groups(groups, 64).tolist() == [156, 156, 157, 157, 159, 187, 312]  # id // 64
    assert split_groups(groups, 1).tolist() == groups.tolist()
    assert split_groups(np.arange(1, 41), 64).tolist() == (np.arange(1, 41) // 2).tolist()  # 40 ids: blocks of 2
    ids = np.arange(10_000, 20_000)
    train, val = split_by_group(split_groups(ids, 64).tolist(), 0.15, 1)
    blocks_val = set((ids[val] // 64).tolist())
    assert not blocks_val & set((ids[train] // 64).tolist()) and 0.13 < len(val) / len(ids) < 0.17
