"""Binary diagnostic metrics as a local `evaluate` module (Hub-hosted metrics cannot be loaded offline).

Load with `evaluate.load("metrics/binary_diagnostic")`. Scores are P(positive); the decision at
`threshold` gives the confusion matrix, and ROC-AUC is threshold-free. Computed here from the
counts and ranks directly, and cross-checked against scikit-learn in the tests.

Each figure comes with its 95 % interval (`intervals`): a validation split of a few hundred films
moves specificity by several points between draws, and a reader comparing two models or a new
test split needs to see that. Wilson intervals for the proportions (scipy), DeLong's for ROC-AUC.
"""

import datasets
import evaluate
import numpy as np
from scipy.stats import binomtest, norm, rankdata

_DESCRIPTION = """Accuracy, precision, recall (sensitivity), specificity, F1, ROC-AUC and the confusion
matrix of a binary classifier, from reference labels (1 = positive) and positive-class scores."""

_KWARGS_DESCRIPTION = """
Args:
    references: list of int, 1 for the positive class (PNEUMONIA), 0 otherwise.
    prediction_scores: list of float, the predicted probability of the positive class.
    threshold: float, a score at or above it is called positive (default 0.5).
Returns:
    accuracy, precision, recall, sensitivity (= recall), specificity, f1, roc_auc (None when only
    one class is present), confusion_matrix as [[TN, FP], [FN, TP]], threshold, support.
Examples:
    >>> metric = evaluate.load("metrics/binary_diagnostic")
    >>> metric.compute(references=[0, 1, 1], prediction_scores=[0.2, 0.9, 0.4], threshold=0.5)["recall"]
    0.5
"""

_CITATION = """@article{fawcett2006roc, title={An introduction to ROC analysis}, author={Fawcett, Tom},
journal={Pattern Recognition Letters}, volume={27}, number={8}, pages={861--874}, year={2006}}"""


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class BinaryDiagnostic(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"references": datasets.Value("int32"), "prediction_scores": datasets.Value("float64")}
            ),
        )

    def _compute(self, references, prediction_scores, threshold: float = 0.5, confidence_level: float = 0.95):
        truth = np.asarray(references, dtype=int)
        scores = np.asarray(prediction_scores, dtype=float)
        called = scores >= threshold
        tp = int(np.sum(called & (truth == 1)))
        fp = int(np.sum(called & (truth == 0)))
        fn = int(np.sum(~called & (truth == 1)))
        tn = int(np.sum(~called & (truth == 0)))
        precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        return {
            "accuracy": _ratio(tp + tn, len(truth)),
            "precision": precision,
            "recall": recall,
            "sensitivity": recall,
            "specificity": _ratio(tn, tn + fp),
            "f1": _ratio(2 * precision * recall, precision + recall),
            "roc_auc": _roc_auc(truth, scores),
            "confusion_matrix": [[tn, fp], [fn, tp]],
            "threshold": float(threshold),
            "support": int(len(truth)),
            "intervals": {
                "accuracy": _wilson(tp + tn, len(truth), confidence_level),
                "precision": _wilson(tp, tp + fp, confidence_level),
                "sensitivity": _wilson(tp, tp + fn, confidence_level),
                "specificity": _wilson(tn, tn + fp, confidence_level),
                "roc_auc": _delong_interval(truth, scores, confidence_level),
            },
        }


def _wilson(successes: int, trials: int, confidence_level: float):
    if not trials:
        return None
    interval = binomtest(successes, trials).proportion_ci(confidence_level=confidence_level, method="wilson")
    return [float(interval.low), float(interval.high)]


def _roc_auc(truth: np.ndarray, scores: np.ndarray):
    """Mann-Whitney U: the chance a random positive outscores a random negative (ties count half)."""
    positives, negatives = int(truth.sum()), int((1 - truth).sum())
    if positives == 0 or negatives == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[truth == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _delong_interval(truth: np.ndarray, scores: np.ndarray, confidence_level: float):
    """DeLong et al. (1988) via midranks (Sun and Xu 2014): each film's share of the AUC, whose spread over
    positives and over negatives gives the AUC's variance; clipped to [0, 1] (so a perfect separation gets [1, 1])."""
    positive, negative = scores[truth == 1], scores[truth == 0]
    m, n = len(positive), len(negative)
    if m < 2 or n < 2:
        return None
    combined = rankdata(np.concatenate([positive, negative]))
    per_positive = (combined[:m] - rankdata(positive)) / n  # share of negatives each positive outscores
    per_negative = 1.0 - (combined[m:] - rankdata(negative)) / m  # share of positives outscoring each negative
    auc = float(per_positive.mean())
    spread = np.sqrt(per_positive.var(ddof=1) / m + per_negative.var(ddof=1) / n)
    half_width = float(norm.ppf(0.5 + confidence_level / 2) * spread)
    return [max(0.0, auc - half_width), min(1.0, auc + half_width)]
