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
import torch
from transformers import HfArgumentParser

from chestxray.classifier import FOLDED_CALIBRATION_KEY, PneumoniaClassifier
from train.calibration import FLOORED_STRATEGIES, STRATEGIES, OperatingPoint, calibrated_logits, choose_threshold, fit_calibration, positive_probabilities


def fit_operating_point(logits: np.ndarray, labels: np.ndarray, strategy: str, min_sensitivity: float,
                        fixed_threshold: float, positive_index: int = 1) -> OperatingPoint:
    """Temperature and bias, then threshold, on validation only; nothing is changed."""
    temperature, bias = fit_calibration(logits, labels, positive_index)
    scores = positive_probabilities(logits, temperature, bias, positive_index)
    threshold, sensitivity, specificity = choose_threshold(labels, scores, strategy, min_sensitivity, fixed_threshold)
    return OperatingPoint(
        threshold=float(threshold), temperature=temperature, bias=bias, strategy=strategy,
        min_sensitivity=min_sensitivity if strategy in FLOORED_STRATEGIES else None,
        validation_sensitivity=sensitivity, validation_specificity=specificity)


def select_operating_point(classifier: PneumoniaClassifier, logits: np.ndarray, labels: np.ndarray, strategy: str,
                           min_sensitivity: float, fixed_threshold: float) -> OperatingPoint:
    """`fit_operating_point`, then the calibration folded into the head and the threshold written into the
    model's config."""
    point = fit_operating_point(logits, labels, strategy, min_sensitivity, fixed_threshold, classifier.positive_index)
    fold_calibration(classifier, point.temperature, point.bias)
    classifier.model.config.decision_threshold = classifier.threshold = point.threshold
    return point


def recorded_operating_point(point: OperatingPoint, config) -> dict:
    """The operating point as the card reports it: with the whole calibration the head carries (this fit on top of
    any earlier one, say the scratch teacher's a fine-tuned student started from), as `config.json` records it."""
    folded = getattr(config, FOLDED_CALIBRATION_KEY, None)
    return {**point.to_dict(), **({"temperature": folded["temperature"], "bias": folded["bias"]} if folded else {})}


def fold_calibration(classifier: PneumoniaClassifier, temperature: float, bias: float) -> None:
    """Divide the head by T and add the bias to its PNEUMONIA output, so the network itself gives calibrated
    logits: `pipeline()`, the Hub widget and ONNX then agree with the app without applying anything.

    Applied on top of the config's own (unfolded) calibration, if any; the config then asks for none
    (temperature 1, bias 0) and records the total in `calibration_folded_into_head` for provenance.
    """
    head, config = classifier.model.classifier, classifier.model.config
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(f"Cannot fold the calibration into a {type(head).__name__} head (expected a linear layer).")
    # Whatever the config still asks for is folded first: raw / T0 + b0, then / T + b.
    total_temperature = classifier.temperature * temperature
    total_bias = classifier.bias / temperature + bias
    with torch.no_grad():
        head.weight.div_(total_temperature)
        head.bias.div_(total_temperature)
        head.bias[classifier.positive_index] += total_bias
    earlier = getattr(config, FOLDED_CALIBRATION_KEY, None) or {"temperature": 1.0, "bias": 0.0}
    setattr(config, FOLDED_CALIBRATION_KEY, {"temperature": earlier["temperature"] * total_temperature,
                                             "bias": earlier["bias"] / total_temperature + total_bias})
    config.calibration_temperature, config.calibration_bias = 1.0, 0.0
    classifier.temperature, classifier.bias = 1.0, 0.0
    classifier.onnx_network = None  # an export of the old head would no longer match


def folded_logits(logits: np.ndarray, point: OperatingPoint, positive_index: int = 1) -> np.ndarray:
    """What the head outputs after `fold_calibration`, from logits computed before it."""
    return calibrated_logits(logits, point.temperature, point.bias, positive_index)


@dataclass
class CalibrateArguments:
    model_dir: str = field(metadata={"help": "Local model folder to recalibrate (config.json is rewritten)."})
    data_dir: Optional[str] = field(default=None, metadata={"help": "Image folder with the validation images."})
    dataset_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset id."})
    split: Optional[str] = field(
        default=None, metadata={"help": "Split to calibrate on; default: the model's own splits/validation.csv files from train."})
    threshold_strategy: str = field(default="youden_at_min_sensitivity", metadata={"help": ", ".join(STRATEGIES) + "."})
    min_sensitivity: float = field(default=0.95, metadata={"help": "Sensitivity floor for the threshold."})
    fixed_threshold: float = field(default=0.5, metadata={"help": "Threshold for `fixed`."})
    refit: bool = field(
        default=True, metadata={"help": "Refit on labelled images. `--refit false` only folds the calibration an older "
                                "folder keeps in its config into the head (no data needed)."})


def main(argv: list[str] | None = None) -> int:
    from train.card import SUMMARY_FILE, published_path, render_card
    from train.data import drop_unreadable, load_raw_dataset, split_membership
    from train.report import dataset_logits, evaluate_split

    (args,) = HfArgumentParser(CalibrateArguments, prog="python -m train.calibrate").parse_args_into_dataclasses(args=argv)
    model_dir = Path(args.model_dir)
    classifier = PneumoniaClassifier.from_pretrained(model_dir)
    if not args.refit:
        fold_calibration(classifier, 1.0, 0.0)
        save_weights(classifier, model_dir)
        print(f"{model_dir}: calibration folded into the head; decision threshold {classifier.threshold:.4f} kept.")
        return 0
    raw = load_raw_dataset(args.dataset_name, args.data_dir)
    if args.split:
        dataset, _ = drop_unreadable(raw[args.split], args.split)
        description = f"`{args.split}` split of {args.dataset_name or published_path(args.data_dir)}"
    else:
        dataset, _ = split_membership(raw["train"], model_dir / "splits" / "validation.csv")
        description = "patient-level hold-out carved from the Kermany train split"
    logits = dataset_logits(classifier, dataset)
    point = select_operating_point(classifier, logits, np.asarray(dataset["label"]), args.threshold_strategy,
                                   args.min_sensitivity, args.fixed_threshold)
    save_weights(classifier, model_dir)
    evaluate_split(classifier, dataset, "validation", description, model_dir,
                   folded_logits(logits, point, classifier.positive_index))
    if (model_dir / SUMMARY_FILE).is_file():
        import json

        summary = json.loads((model_dir / SUMMARY_FILE).read_text())
        summary["operating_point"] = recorded_operating_point(point, classifier.model.config)
        (model_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
        render_card(model_dir)
    print(f"{model_dir}: {point}")
    return 0


def save_weights(classifier: PneumoniaClassifier, model_dir: Path) -> None:
    """The refolded head changes the weights: save them, and re-export ONNX if the folder had an export."""
    from chestxray.runtime import ONNX_FILE
    from train.export_onnx import export_onnx

    had_onnx = (model_dir / ONNX_FILE).is_file()
    classifier.model.save_pretrained(model_dir, safe_serialization=True)
    if had_onnx:
        export_onnx(classifier, model_dir)


if __name__ == "__main__":
    sys.exit(main())
