"""Evaluate a classifier on one split: metrics JSON and figures, the same for training and `train.evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import evaluate
import numpy as np
import torch
from datasets import Dataset

from chestxray.classifier import FOLDED_CALIBRATION_KEY, PneumoniaClassifier
from train import figures
from train.calibration import expected_calibration_error, positive_probabilities
from train.data import load_image

METRIC_PATH = str(Path(__file__).resolve().parent.parent / "metrics" / "binary_diagnostic")


def load_metric():
    """The local `evaluate` module: works offline, unlike `evaluate.load("accuracy")`."""
    return evaluate.load(METRIC_PATH)


def dataset_logits(classifier: PneumoniaClassifier, dataset: Dataset, batch_size: int = 64, with_features: bool = False):
    """Logits (numpy) of every image, and with `with_features` the OOD features (torch) from the same pass."""
    logits, features = [], []
    for start in range(0, len(dataset), batch_size):
        images = [load_image(cell) for cell in dataset[start : start + batch_size]["image"]]
        batch_logits, batch_features = classifier.logits(images, batch_size, with_features=True)
        logits.append(batch_logits.float().numpy())
        features.append(batch_features)
    all_logits = np.concatenate(logits) if logits else np.zeros((0, 2))
    return (all_logits, torch.cat(features) if features else torch.zeros(0, 0)) if with_features else all_logits


def uncalibrated_logits(logits: np.ndarray, folded: dict | None, positive_index: int) -> np.ndarray:
    """The network's logits before calibration: a head with the calibration folded in is unfolded."""
    if not folded:
        return logits
    raw = np.array(logits, dtype=float)
    raw[:, positive_index] -= folded["bias"]
    return raw * folded["temperature"]


def evaluate_split(classifier: PneumoniaClassifier, dataset: Dataset, split: str, dataset_description: str,
                   output_dir: Path, logits: np.ndarray | None = None) -> dict:
    """Score `dataset` at the model's stored temperature and threshold; write `metrics_<split>.json` and PNGs."""
    if logits is None:
        logits = dataset_logits(classifier, dataset)
    labels = np.asarray(dataset["label"])
    folded = getattr(classifier.config, FOLDED_CALIBRATION_KEY, None)
    raw = positive_probabilities(uncalibrated_logits(logits, folded, classifier.positive_index), 1.0, 0.0, classifier.positive_index)
    calibrated = classifier.calibrated_probabilities(torch.from_numpy(logits))  # exactly what the app computes
    metrics = load_metric().compute(references=labels, prediction_scores=calibrated, threshold=classifier.threshold)
    metrics["ece"] = expected_calibration_error(labels, calibrated)
    metrics["ece_before_temperature"] = expected_calibration_error(labels, raw)
    metrics["temperature"], metrics["bias"] = (folded["temperature"], folded["bias"]) if folded else (classifier.temperature, classifier.bias)
    metrics["normal_count"], metrics["pneumonia_count"] = int((labels == 0).sum()), int((labels == 1).sum())
    output_dir.mkdir(parents=True, exist_ok=True)
    figure_files = {
        "confusion_matrix": figures.confusion_matrix_figure(
            metrics["confusion_matrix"], split, classifier.threshold, output_dir / f"{split}_confusion_matrix.png"),
        "reliability": figures.reliability_figure(labels, raw, calibrated, split, output_dir / f"{split}_reliability.png"),
    }
    if metrics["roc_auc"] is not None:
        figure_files["roc"] = figures.roc_figure(
            labels, calibrated, metrics["roc_auc"], classifier.threshold, split, output_dir / f"{split}_roc.png")
    report = {"split": split, "dataset": dataset_description, "metrics": metrics, "figures": figure_files}
    (output_dir / f"metrics_{split}.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
