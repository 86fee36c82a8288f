"""`python -m train.policies`: how each threshold policy, chosen on validation, does on a batch never trained on.

Carved validation shares its batches with training, so every policy looks alike there. A model trained with
`--holdout_normal_batch` keeps a whole NORMAL batch out (and a matched share of PNEUMONIA patients): each
policy picks its threshold on the model's own validation split, and is then judged on that batch hold-out,
the nearest thing here to a new hospital's films. Writes `operating_points.json` into the model folder.

    python -m train.policies --model_dir outputs/run5-holdout-N2 --data_dir ../shared/data/chest_xray
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from transformers import HfArgumentParser

from chestxray.classifier import PneumoniaClassifier
from train.calibration import choose_threshold, sensitivity_specificity
from train.card import POLICIES_FILE, SUMMARY_FILE, render_card
from train.data import BATCH_HOLDOUT_SPLIT, drop_unreadable, load_raw_dataset, split_membership
from train.report import dataset_logits

# (strategy, sensitivity floor): the policies compared, in train.calibration's terms.
POLICIES = (
    ("youden_at_min_sensitivity", 0.99), ("youden_at_min_sensitivity", 0.97), ("youden_at_min_sensitivity", 0.95),
    ("youden_at_min_sensitivity", 0.93), ("youden_at_min_sensitivity", 0.90),
    ("specificity_at_min_sensitivity", 0.97), ("specificity_at_min_sensitivity", 0.95),
    ("youden", None), ("fixed", None),
)


@dataclass
class PolicyArguments:
    model_dir: str = field(metadata={"help": "Model folder trained with --holdout_normal_batch (its splits/*.csv name the files)."})
    data_dir: str = field(metadata={"help": "The image folder it was trained from (DIR/train/{NORMAL,PNEUMONIA})."})
    train_split_name: str = field(default="train", metadata={"help": "The split the model's splits were carved from."})
    record_in: Optional[str] = field(
        default=None, metadata={"help": "Also write the comparison into this model folder (the full-data model of the same "
                                "recipe), whose card then shows it as the evidence for its policy."})


def split_probabilities(classifier: PneumoniaClassifier, dataset, split_file: Path) -> tuple[np.ndarray, np.ndarray]:
    listed, _ = split_membership(dataset, split_file)
    if not len(listed):
        raise ValueError(f"None of the images in {split_file} is in the data folder.")
    logits = dataset_logits(classifier, listed)
    return np.asarray(listed["label"]), classifier.calibrated_probabilities(torch.from_numpy(logits))


def compare(validation: tuple[np.ndarray, np.ndarray], holdout: tuple[np.ndarray, np.ndarray]) -> list[dict]:
    rows = []
    for strategy, floor in POLICIES:
        threshold, val_sensitivity, val_specificity = choose_threshold(*validation, strategy, floor or 0.0)
        sensitivity, specificity = sensitivity_specificity(*holdout, threshold)
        labels = holdout[0]
        accuracy = (sensitivity * (labels == 1).sum() + specificity * (labels == 0).sum()) / len(labels)
        rows.append({"policy": strategy if floor is None else f"{strategy} {floor:.2f}", "strategy": strategy,
                     "min_sensitivity": floor, "threshold": round(threshold, 4),
                     "validation_sensitivity": round(val_sensitivity, 4), "validation_specificity": round(val_specificity, 4),
                     "holdout_sensitivity": round(sensitivity, 4), "holdout_specificity": round(specificity, 4),
                     "holdout_accuracy": round(float(accuracy), 4)})
    return rows


def run(args: PolicyArguments) -> dict:
    folder = Path(args.model_dir)
    holdout_file = folder / "splits" / f"{BATCH_HOLDOUT_SPLIT}.csv"
    if not holdout_file.is_file():
        raise ValueError(f"{holdout_file} not found: train the model with --holdout_normal_batch first.")
    classifier = PneumoniaClassifier.from_pretrained(str(folder))
    dataset, _ = drop_unreadable(load_raw_dataset(None, args.data_dir)[args.train_split_name], args.train_split_name)
    validation = split_probabilities(classifier, dataset, folder / "splits" / "validation.csv")
    holdout = split_probabilities(classifier, dataset, holdout_file)
    summary = json.loads((folder / SUMMARY_FILE).read_text()) if (folder / SUMMARY_FILE).is_file() else {}
    result = {"model_dir": folder.name, "normal_batch": summary.get("batch_holdout", {}).get("normal_batch"),
              "validation_images": len(validation[0]), "holdout_images": len(holdout[0]),
              "holdout_normal": int((holdout[0] == 0).sum()), "policies": compare(validation, holdout)}
    for target in [folder] + ([Path(args.record_in)] if args.record_in else []):
        (target / POLICIES_FILE).write_text(json.dumps(result, indent=2) + "\n")
    if args.record_in and (Path(args.record_in) / SUMMARY_FILE).is_file():
        render_card(args.record_in)
    return result


def markdown(result: dict) -> str:
    lines = ["| policy (chosen on validation) | threshold | validation sens / spec | hold-out sens / spec | hold-out accuracy |",
             "|---|---|---|---|---|"]
    for row in result["policies"]:
        lines.append(f"| {row['policy']} | {row['threshold']:.4f} | {row['validation_sensitivity']:.3f} / "
                     f"{row['validation_specificity']:.3f} | {row['holdout_sensitivity']:.3f} / {row['holdout_specificity']:.3f} "
                     f"| {row['holdout_accuracy']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    try:
        (args,) = HfArgumentParser(PolicyArguments, prog="python -m train.policies").parse_args_into_dataclasses(args=argv)
        result = run(args)
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
