"""Choose the operating point on validation: a temperature for honest probabilities, then a threshold."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import log_softmax, softmax

from chestxray.classifier import calibrated_logits


TEMPERATURE_RANGE = (0.05, 20.0)
MAX_ABS_BIAS = 10.0
# Strategies that only consider cut points whose validation sensitivity reaches the floor.
FLOORED_STRATEGIES = ("youden_at_min_sensitivity", "specificity_at_min_sensitivity")
STRATEGIES = (*FLOORED_STRATEGIES, "youden", "fixed")
# Fewer validation films of a class than this and the calibration is a guess (a few films can be perfectly separated).
MIN_FILMS_PER_CLASS = 20

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float
    temperature: float
    bias: float
    strategy: str
    min_sensitivity: float | None
    validation_sensitivity: float
    validation_specificity: float

    def to_dict(self) -> dict:
        return asdict(self)


def positive_probabilities(logits: np.ndarray, temperature: float, bias: float = 0.0, positive_index: int = 1) -> np.ndarray:
    return softmax(calibrated_logits(logits, temperature, bias, positive_index), axis=1)[:, positive_index]


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float, bias: float) -> float:
    return -float(np.mean(log_softmax(calibrated_logits(logits, temperature, bias), axis=1)[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The single T > 0 that minimises validation negative log-likelihood of softmax(logits / T)."""
    logits, labels = np.asarray(logits, dtype=float), np.asarray(labels, dtype=int)
    result = minimize_scalar(lambda log_t: _nll(logits, labels, np.exp(log_t), 0.0),
                             bounds=tuple(np.log(TEMPERATURE_RANGE)), method="bounded")
    return float(np.exp(result.x))


def fit_calibration(logits: np.ndarray, labels: np.ndarray, positive_index: int = 1) -> tuple[float, float]:
    """(T, b) minimising validation NLL of softmax(logits / T + b on PNEUMONIA), for labels 1 = PNEUMONIA and
    logits in the model's own order (PNEUMONIA in column `positive_index`, as a Hub model may have it).

    A class-weighted loss shifts every logit by about log(class weight ratio): a prior shift that no
    temperature can undo. The bias takes it back out (it stays ~0 for an unweighted loss).
    """
    logits, labels = np.asarray(logits, dtype=float), np.asarray(labels, dtype=int)
    logits = logits if positive_index == 1 else logits[:, [1 - positive_index, positive_index]]  # NORMAL, PNEUMONIA
    # Bounded: on perfectly separable validation data the likelihood keeps rising as T -> 0, which would
    # saturate every probability to exactly 0 or 1.
    result = minimize(lambda p: _nll(logits, labels, np.exp(p[0]), p[1]),
                      x0=np.array([np.log(fit_temperature(logits, labels)), 0.0]), method="L-BFGS-B",
                      bounds=[(np.log(TEMPERATURE_RANGE[0]), np.log(TEMPERATURE_RANGE[1])), (-MAX_ABS_BIAS, MAX_ABS_BIAS)])
    temperature, bias = float(np.exp(result.x[0])), float(result.x[1])
    warn_if_unreliable(logits, labels, temperature, bias)
    return temperature, bias


def warn_if_unreliable(logits: np.ndarray, labels: np.ndarray, temperature: float, bias: float) -> None:
    """A fit at its bounds, or on a handful of films, gives probabilities of nearly 0 or 1 that mean little: say so."""
    counts = np.bincount(labels, minlength=2)
    at_bound = bool(np.isclose(temperature, TEMPERATURE_RANGE, rtol=1e-3).any() or np.isclose(abs(bias), MAX_ABS_BIAS, rtol=1e-3))
    if not at_bound and counts.min() >= MIN_FILMS_PER_CLASS:
        return
    margin = logits[:, 1] - logits[:, 0]
    separated = counts.min() > 0 and margin[labels == 1].min() > margin[labels == 0].max()
    logger.warning(
        "The calibration (temperature %.3g, bias %.3g%s) was fitted on %d validation images (%d NORMAL, %d PNEUMONIA)%s: "
        "its probabilities and threshold are unreliable. Validate on at least %d films of each class "
        "(--validation_fraction, or `python -m train.calibrate` on more labelled films).",
        temperature, bias, ", at the limit of its range" if at_bound else "", len(labels), counts[0], counts[1],
        ", which they separate perfectly" if separated else "", MIN_FILMS_PER_CLASS)


def choose_threshold(labels: np.ndarray, scores: np.ndarray, strategy: str, min_sensitivity: float = 0.95,
                     fixed_threshold: float = 0.5) -> tuple[float, float, float]:
    """(threshold, sensitivity, specificity) on these scores; a score >= threshold is called positive.

    Among the cut points allowed by the strategy, the best Youden's J wins (ties: the higher
    specificity); `specificity_at_min_sensitivity` takes the most specific cut that keeps the floor. The threshold is then placed halfway to the next lower score, so validation
    decisions are unchanged but the largest margin is left for unseen data.
    """
    labels, scores = np.asarray(labels, dtype=int), np.asarray(scores, dtype=float)
    if strategy == "fixed":
        return (fixed_threshold, *sensitivity_specificity(labels, scores, fixed_threshold))
    candidates = np.unique(scores)[::-1]
    best = None
    for index, cut in enumerate(candidates):
        sensitivity, specificity = sensitivity_specificity(labels, scores, cut)
        if strategy in FLOORED_STRATEGIES and sensitivity < min_sensitivity:
            continue
        if strategy == "specificity_at_min_sensitivity":
            key = (specificity, sensitivity)
        else:
            key = (sensitivity + specificity - 1, specificity)
        if best is None or key > best[0]:
            lower = candidates[index + 1] if index + 1 < len(candidates) else 0.0
            best = (key, (cut + lower) / 2, sensitivity, specificity)
    if best is None:  # no cut reaches the floor: call everything positive but keep the math honest
        return (0.0, *sensitivity_specificity(labels, scores, 0.0))
    return best[1], best[2], best[3]


def sensitivity_specificity(labels: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float]:
    called = scores >= threshold
    positives, negatives = labels == 1, labels == 0
    sensitivity = float(called[positives].mean()) if positives.any() else 0.0
    specificity = float((~called[negatives]).mean()) if negatives.any() else 0.0
    return sensitivity, specificity


def expected_calibration_error(labels: np.ndarray, scores: np.ndarray, bins: int = 15) -> float:
    """ECE of the positive-class probability: mean |accuracy - confidence| over equal-width bins, weighted."""
    labels, scores = np.asarray(labels, dtype=float), np.asarray(scores, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(scores, edges[1:-1]), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            error += in_bin.mean() * abs(labels[in_bin].mean() - scores[in_bin].mean())
    return float(error)


def reliability_curve(labels: np.ndarray, scores: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean predicted, observed frequency, count) per non-empty bin, for the reliability diagram."""
    labels, scores = np.asarray(labels, dtype=float), np.asarray(scores, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(scores, edges[1:-1]), 0, bins - 1)
    rows = [(scores[which == b].mean(), labels[which == b].mean(), (which == b).sum()) for b in range(bins) if (which == b).any()]
    predicted, observed, counts = (np.array(column) for column in zip(*rows)) if rows else (np.zeros(0),) * 3
    return predicted, observed, counts
