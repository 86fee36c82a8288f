"""Choose a model's operating point on validation data, and `python -m train.calibrate` to redo it.

Recalibrating is how a model moves to a new site: the weights stay, while the temperature, bias and
decision threshold are refitted on that site's labelled validation images.

    python -m train.calibrate --model_dir model --data_dir ../shared/data/chest_xray [--min_sensitivity 0.97]
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from transformers import HfArgumentParser

from chestxray.classifier import PneumoniaClassifier
from train.calibration import OperatingPoint, choose_threshold, fit_calibration, positive_probabilities


def select_operating_point(classifier: PneumoniaClassifier, logits: np.ndarray, labels: np.ndarray, strategy: str,
                           min_sensitivity: float, fixed_threshold: float) -> OperatingPoint:
    """Temperature and bias, then threshold, on validation only; written into the model's config."""
    temperature, bias = fit_calibration(logits, labels)
    scores = positive_probabilities(logits, temperature, bias, classifier.positive_index)
    threshold, sensitivity, specificity = choose_threshold(labels, scores, strategy, min_sensitivity, fixed_threshold)
    point = OperatingPoint(
        threshold=float(threshold), temperature=temperature, bias=bias, strategy=strategy,
        min_sensitivity=min_sensitivity if strategy == "youden_at_min_sensitivity" else None,
        validation_sensitivity=sensitivity, validation_specificity=specificity)
    config = classifier.model.config
    config.decision_threshold, config.calibration_temperature, config.calibration_bias = threshold, temperature, bias
    classifier.threshold, classifier.temperature, classifier.bias = point.threshold, temperature, bias
    return point


@dataclass
class CalibrateArguments:
    model_dir: str = field(metadata={"help": "Local model folder to recalibrate (config.json is rewritten)."})
    data_dir: Optional[str] = field(default=None, metadata={"help": "Image folder with the validation images."})
    dataset_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset id."})
    split: Optional[str] = field(
        default=None, metadata={"help": "Split to calibrate on; default: the model's own splits/validation.csv files from train."})
    threshold_strategy: str = field(default="youden_at_min_sensitivity", metadata={"help": "youden_at_min_sensitivity, youden or fixed."})
    min_sensitivity: float = field(default=0.95, metadata={"help": "Sensitivity floor for the threshold."})
    fixed_threshold: float = field(default=0.5, metadata={"help": "Threshold for `fixed`."})


def main(argv: list[str] | None = None) -> int:
    from train.card import SUMMARY_FILE, render_card
    from train.data import drop_unreadable, load_raw_dataset, split_membership
    from train.report import dataset_logits, evaluate_split

    (args,) = HfArgumentParser(CalibrateArguments).parse_args_into_dataclasses(args=argv)
    model_dir = Path(args.model_dir)
    classifier = PneumoniaClassifier.from_pretrained(model_dir)
    raw = load_raw_dataset(args.dataset_name, args.data_dir)
    if args.split:
        dataset, _ = drop_unreadable(raw[args.split], args.split)
        description = f"`{args.split}` split of {args.dataset_name or args.data_dir}"
    else:
        dataset, _ = split_membership(raw["train"], model_dir / "splits" / "validation.csv")
        description = "patient-level hold-out carved from the Kermany train split"
    logits = dataset_logits(classifier, dataset)
    point = select_operating_point(classifier, logits, np.asarray(dataset["label"]), args.threshold_strategy,
                                   args.min_sensitivity, args.fixed_threshold)
    classifier.model.config.save_pretrained(model_dir)
    evaluate_split(classifier, dataset, "validation", description, model_dir, logits)
    if (model_dir / SUMMARY_FILE).is_file():
        import json

        summary = json.loads((model_dir / SUMMARY_FILE).read_text())
        summary["operating_point"] = point.to_dict()
        (model_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        render_card(model_dir)
    print(f"{model_dir}: {point}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
