"""Figures for the model card: training curves, confusion matrix, ROC curve, reliability diagram."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from train.calibration import reliability_curve  # noqa: E402
from train.data import LABEL_NAMES  # noqa: E402


def _save(figure, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path.name


def training_curves(log_history: list[dict], path: Path) -> str | None:
    train = [(row["epoch"], row["loss"]) for row in log_history if "loss" in row and "epoch" in row]
    evals = [(row["epoch"], row["eval_loss"], row.get("eval_roc_auc")) for row in log_history if "eval_loss" in row]
    if not train and not evals:
        return None
    figure, (loss_axis, auc_axis) = plt.subplots(1, 2, figsize=(9, 3.5))
    if train:
        loss_axis.plot(*zip(*train), linewidth=1, label="train")  # logged many times an epoch
    if evals:
        loss_axis.plot([e for e, _, _ in evals], [l for _, l, _ in evals], marker="o", label="validation")
        auc_axis.plot([e for e, _, _ in evals], [a for _, _, a in evals], marker="o", color="tab:green")
    loss_axis.set(xlabel="epoch", ylabel="loss", title="Loss")
    loss_axis.legend()
    auc_axis.set(xlabel="epoch", ylabel="ROC-AUC", title="Validation ROC-AUC")
    return _save(figure, path)


def confusion_matrix_figure(matrix: list[list[int]], split: str, threshold: float, path: Path) -> str:
    figure, axis = plt.subplots(figsize=(4, 3.6))
    values = np.asarray(matrix)
    axis.imshow(values, cmap="Blues")
    for (row, column), count in np.ndenumerate(values):
        axis.text(column, row, str(count), ha="center", va="center",
                  color="white" if count > values.max() / 2 else "black", fontsize=13)
    axis.set(xticks=[0, 1], yticks=[0, 1], xticklabels=LABEL_NAMES, yticklabels=LABEL_NAMES,
             xlabel="predicted", ylabel="true", title=f"{split} (threshold {threshold:.3f})")
    return _save(figure, path)


def roc_figure(labels: np.ndarray, scores: np.ndarray, auc: float | None, threshold: float, split: str, path: Path) -> str:
    false_positive_rate, true_positive_rate, _ = roc_curve(labels, scores)
    called = scores >= threshold
    sensitivity = called[labels == 1].mean() if (labels == 1).any() else 0.0
    specificity = (~called[labels == 0]).mean() if (labels == 0).any() else 0.0
    figure, axis = plt.subplots(figsize=(4, 4))
    axis.plot(false_positive_rate, true_positive_rate, label=f"AUC {auc:.4f}" if auc is not None else "ROC")
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey")
    axis.scatter([1 - specificity], [sensitivity], color="red", zorder=3, label="operating point")
    axis.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"ROC, {split}")
    axis.legend(loc="lower right")
    return _save(figure, path)


def reliability_figure(labels: np.ndarray, raw_scores: np.ndarray, calibrated_scores: np.ndarray, split: str, path: Path) -> str:
    figure, axis = plt.subplots(figsize=(4, 4))
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
    for scores, name in ((raw_scores, "raw softmax"), (calibrated_scores, "calibrated")):
        predicted, observed, _ = reliability_curve(labels, scores)
        axis.plot(predicted, observed, marker="o", label=name)
    axis.set(xlabel="predicted P(PNEUMONIA)", ylabel="observed frequency", title=f"Reliability, {split}")
    axis.legend(loc="upper left")
    return _save(figure, path)
