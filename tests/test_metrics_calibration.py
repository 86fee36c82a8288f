"""The local `evaluate` metric against scikit-learn; temperature and threshold selection on known scores."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score

from train.calibration import choose_threshold, expected_calibration_error, fit_temperature
from train.report import load_metric


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.2, 0.5, 0.83])
def test_metric_module_agrees_with_scikit_learn(seed, threshold):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = np.clip(labels * 0.3 + rng.normal(0.35, 0.25, 300), 0, 1).round(2)  # rounding makes ties
    result = load_metric().compute(references=labels, prediction_scores=scores, threshold=threshold)
    called = (scores >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, called, labels=[0, 1]).ravel()
    assert result["confusion_matrix"] == [[tn, fp], [fn, tp]]
    assert result["accuracy"] == pytest.approx(accuracy_score(labels, called))
    assert result["precision"] == pytest.approx(precision_score(labels, called, zero_division=0))
    assert result["recall"] == pytest.approx(recall_score(labels, called))
    assert result["specificity"] == pytest.approx(recall_score(labels, called, pos_label=0))
    assert result["f1"] == pytest.approx(f1_score(labels, called, zero_division=0))
    assert result["roc_auc"] == pytest.approx(roc_auc_score(labels, scores))


def test_metric_module_with_one_class_has_no_auc():
    result = load_metric().compute(references=[1, 1, 1], prediction_scores=[0.9, 0.2, 0.7], threshold=0.5)
    assert result["roc_auc"] is None
    assert result["sensitivity"] == pytest.approx(2 / 3)
    assert result["intervals"]["roc_auc"] is None and result["intervals"]["specificity"] is None


def test_proportion_intervals_are_wilson_score_intervals():
    """182 of 192 NORMAL films right (the bundled model's validation specificity): the textbook Wilson formula."""
    labels = [0] * 192 + [1] * 10
    scores = [0.1] * 182 + [0.9] * 10 + [0.9] * 10
    low, high = load_metric().compute(references=labels, prediction_scores=scores, threshold=0.5)["intervals"]["specificity"]
    n, p, z = 192, 182 / 192, 1.959963984540054
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (low, high) == pytest.approx((centre - half, centre + half))
    assert low < p < high


def _structural_components_auc_variance(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """DeLong's variance written out pair by pair (O(m n)), to check the rank formula against."""
    positive, negative = scores[labels == 1], scores[labels == 0]
    kernel = (positive[:, None] > negative[None, :]) + 0.5 * (positive[:, None] == negative[None, :])
    per_positive, per_negative = kernel.mean(axis=1), kernel.mean(axis=0)
    return float(kernel.mean()), per_positive.var(ddof=1) / len(positive) + per_negative.var(ddof=1) / len(negative)


@pytest.mark.parametrize("seed", [0, 1])
def test_auc_interval_is_delongs_and_covers_like_a_bootstrap(seed):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(120, int), np.ones(200, int)]
    scores = np.r_[rng.normal(0, 1, 120), rng.normal(1.5, 1, 200)].round(1)  # rounding makes ties
    low, high = load_metric().compute(references=labels, prediction_scores=scores)["intervals"]["roc_auc"]
    auc, variance = _structural_components_auc_variance(labels, scores)
    assert (low + high) / 2 == pytest.approx(auc)
    assert (high - low) / 2 == pytest.approx(1.959963984540054 * np.sqrt(variance))
    resampled = [roc_auc_score(labels[i], scores[i]) for i in (rng.integers(0, len(labels), len(labels)) for _ in range(1000))]
    bootstrap_low, bootstrap_high = np.percentile(resampled, [2.5, 97.5])
    assert low == pytest.approx(bootstrap_low, abs=0.015) and high == pytest.approx(bootstrap_high, abs=0.015)


def test_auc_interval_stays_within_zero_and_one():
    labels = np.r_[np.zeros(30, int), np.ones(30, int)]
    scores = np.r_[np.linspace(0, 0.4, 30), np.linspace(0.6, 1, 30)]  # perfectly separated
    assert load_metric().compute(references=labels, prediction_scores=scores)["intervals"]["roc_auc"] == [1.0, 1.0]


def test_threshold_meets_the_sensitivity_floor_with_the_best_youden_j():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    scores = np.array([0.05, 0.2, 0.3, 0.55, 0.4, 0.6, 0.7, 0.8, 0.9, 0.95])
    threshold, sensitivity, specificity = choose_threshold(labels, scores, "youden_at_min_sensitivity", 0.95)
    # every positive must be caught (6/6 >= 0.95): the cut is at 0.4, placed halfway down to 0.3
    assert threshold == pytest.approx(0.35)
    assert (sensitivity, specificity) == (1.0, 0.75)
    # without the floor the best J cuts at 0.6 (sens 5/6, spec 1.0), halfway down to 0.55
    threshold, sensitivity, specificity = choose_threshold(labels, scores, "youden")
    assert threshold == pytest.approx(0.575)
    assert (sensitivity, specificity) == (pytest.approx(5 / 6), 1.0)
    assert choose_threshold(labels, scores, "fixed", fixed_threshold=0.5)[0] == 0.5


def test_the_most_specific_cut_that_keeps_the_sensitivity_floor():
    labels = np.array([0] * 10 + [1] * 10)
    scores = np.array([0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.57, 0.72] + [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95])
    # Youden with sensitivity >= 0.8 keeps every positive (J 0.8 at the cut 0.5: sens 1.0, spec 0.8)
    assert choose_threshold(labels, scores, "youden_at_min_sensitivity", 0.8)[1:] == (1.0, 0.8)
    # the most specific cut with sensitivity >= 0.8 is 0.6 (sens 0.8, spec 0.9), placed halfway down to 0.57
    threshold, sensitivity, specificity = choose_threshold(labels, scores, "specificity_at_min_sensitivity", 0.8)
    assert threshold == pytest.approx(0.585)
    assert (sensitivity, specificity) == (0.8, 0.9)


def test_temperature_recovers_the_true_scale_and_improves_calibration():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2.0, (4000, 2))
    labels = np.array([rng.random() < p for p in softmax(true_logits, axis=1)[:, 1]]).astype(int)
    overconfident = true_logits * 3.0  # the model's logits are three times too large
    temperature = fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(labels, softmax(overconfident, axis=1)[:, 1])
    after = expected_calibration_error(labels, softmax(overconfident / temperature, axis=1)[:, 1])
    assert after < before / 2


def test_expected_calibration_error_of_known_cases():
    assert expected_calibration_error([1, 0, 1, 0], [1.0, 0.0, 1.0, 0.0]) == pytest.approx(0.0)
    # all scores 0.8 but only half positive: |0.5 - 0.8| = 0.3
    assert expected_calibration_error([1, 0, 1, 0], [0.8] * 4) == pytest.approx(0.3)


def test_bias_undoes_the_prior_shift_of_a_class_weighted_loss(caplog):
    from train.calibration import fit_calibration, positive_probabilities

    rng = np.random.default_rng(1)
    true_logits = rng.normal(0, 2.0, (5000, 2))
    labels = np.array([rng.random() < p for p in softmax(true_logits, axis=1)[:, 1]]).astype(int)
    # what weighted training produces: too confident (x2) and pushed towards NORMAL by log(2.9) / 2
    shifted = true_logits * 2.0
    shifted[:, 1] -= np.log(2.9)
    temperature, bias = fit_calibration(shifted, labels)
    assert temperature == pytest.approx(2.0, rel=0.1)
    assert "unreliable" not in caplog.text  # 5,000 films of both classes, a fit inside its range: no warning
    assert bias == pytest.approx(np.log(2.9) / 2.0, abs=0.12)
    temperature_only = expected_calibration_error(labels, softmax(shifted / fit_temperature(shifted, labels), axis=1)[:, 1])
    with_bias = expected_calibration_error(labels, positive_probabilities(shifted, temperature, bias))
    assert with_bias < 0.02 < temperature_only


def test_calibration_stays_bounded_on_perfectly_separable_validation_data(caplog):
    from train.calibration import MAX_ABS_BIAS, TEMPERATURE_RANGE, fit_calibration, positive_probabilities

    logits = np.array([[2.0, -2.0], [1.5, -1.0], [0.5, 0.2], [-1.0, 1.0], [-0.2, 0.6], [-2.0, 3.0]])
    labels = np.array([0, 0, 0, 1, 1, 1])
    with caplog.at_level("WARNING", logger="train.calibration"):
        temperature, bias = fit_calibration(logits, labels)
    # six films, perfectly separated: the fit runs to its limit, and whoever trains is told it means little
    assert "fitted on 6 validation images (3 NORMAL, 3 PNEUMONIA), which they separate perfectly" in caplog.text
    assert TEMPERATURE_RANGE[0] <= temperature <= TEMPERATURE_RANGE[1] and abs(bias) <= MAX_ABS_BIAS
    scores = positive_probabilities(logits, temperature, bias)
    assert roc_auc_score(labels, scores) == 1.0  # no saturation into ties


def test_a_model_with_pneumonia_first_is_calibrated_as_the_same_model_with_pneumonia_second():
    """A Hub model may order its labels PNEUMONIA, NORMAL: its logits' columns are swapped, the data's labels are not
    (1 = PNEUMONIA). Calibrating it must give the same temperature, bias and probabilities."""
    from train.calibration import fit_calibration, positive_probabilities

    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2.0, (2000, 2))
    labels = np.array([rng.random() < p for p in softmax(logits, axis=1)[:, 1]]).astype(int)
    logits = logits * 1.7
    logits[:, 1] -= 0.8
    swapped = logits[:, ::-1].copy()
    expected = fit_calibration(logits, labels)
    assert fit_calibration(swapped, labels, positive_index=0) == pytest.approx(expected, rel=1e-4)
    assert positive_probabilities(swapped, *expected, positive_index=0) == pytest.approx(
        positive_probabilities(logits, *expected), abs=1e-9)
