"""Fit what a model folder needs to know when not to answer.

- `ood_reference.safetensors`: the Mahalanobis reference of the training films' features (the fallback);
- with `--ood_dir` (development folders `ood/<kind>/` and `adult_nih/`): the learned gate, `ood_gate.safetensors`
  with `ood_gate.json` (thresholds, provenance, rates measured on the held-out parts) and `ood_gate_splits.json`
  (what was held out), see `train.gate`.

    python -m train.ood --model_dir model --data_dir ../shared/data/chest_xray --ood_dir ../shared/data

adds them to an existing model folder; `python -m train` fits them at the end of training on the same split.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from datasets import Dataset
from sklearn.covariance import LedoitWolf
from transformers import HfArgumentParser

from chestxray.classifier import PneumoniaClassifier
from chestxray.ood import GATE_FILE, REFERENCE_FILE, OodReference
from train.card import SUMMARY_FILE, render_card
from train.gate import GateArguments, write_gate
from train.report import dataset_logits

REFERENCE_STATS_FILE = "ood_reference.json"  # how the reference was fitted, for the card
# Set above every real radiograph: the check must stay silent on genuine X-rays.
THRESHOLD_QUANTILE = 0.999
THRESHOLD_MARGIN = 1.5


def fit_reference(train_features: torch.Tensor, held_out_features: torch.Tensor) -> tuple[OodReference, dict]:
    """Shrunk covariance of training features; threshold from the distances of all real images seen."""
    estimator = LedoitWolf().fit(train_features.double().numpy())
    reference = OodReference(torch.from_numpy(estimator.location_), torch.from_numpy(estimator.precision_), 0.0)
    distances = np.concatenate([reference.distances(train_features), reference.distances(held_out_features)])
    reference.threshold = float(np.quantile(distances, THRESHOLD_QUANTILE) * THRESHOLD_MARGIN)
    held_out = reference.distances(held_out_features)
    stats = {
        "threshold": reference.threshold,
        "held_out_distance_median": float(np.median(held_out)),
        "held_out_distance_max": float(held_out.max()),
        "held_out_flag_rate": float((held_out > reference.threshold).mean()),
        "quantile": THRESHOLD_QUANTILE,
        "margin": THRESHOLD_MARGIN,
    }
    return reference, stats


def dataset_features(classifier: PneumoniaClassifier, dataset: Dataset) -> torch.Tensor:
    return dataset_logits(classifier, dataset, with_features=True)[1]


def write_reference(classifier: PneumoniaClassifier, train_features: torch.Tensor, held_out_features: torch.Tensor,
                    model_dir: Path) -> dict:
    reference, stats = fit_reference(train_features, held_out_features)
    reference.save(model_dir)
    classifier.ood_reference = reference
    (model_dir / REFERENCE_STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def dataset_films(dataset: Dataset, batch_size: int = 64):
    """(patient, image) of every row, decoded a batch at a time with the app's reader."""
    from train.data import image_name, load_image, patient_id

    for start in range(0, len(dataset), batch_size):
        for cell in dataset[start : start + batch_size]["image"]:
            name = image_name(cell)
            yield patient_id(name) or name, load_image(cell)


def write_gate_for_splits(classifier: PneumoniaClassifier, model_dir: Path, train: Dataset, validation: Dataset | None,
                          ood_dir: str | Path, args: GateArguments | None = None, batch_holdout: Dataset | None = None) -> dict:
    """The learned gate from the model's own training split; false alarms measured on its validation split, and on
    its batch hold-out (a NORMAL batch never trained on, `--holdout_normal_batch`) when it has one."""
    answered = {"paediatric_validation": validation, "paediatric_batch_holdout": batch_holdout}
    answered_films = {name: (lambda d=dataset: (image for _, image in dataset_films(d)))
                      for name, dataset in answered.items() if dataset is not None and len(dataset)}
    return write_gate(classifier, Path(model_dir), lambda: dataset_films(train), len(train), Path(ood_dir), answered_films, args)


def gate_summary(config: dict) -> str:
    """One line for the log: flag rate per held-out kind, false alarms on validation."""
    measured = config.get("measured", {})
    return ", ".join(f"{kind} {m['flagged']:.1%} of {m['images']}" for kind, m in measured.items())


@dataclass
class OodArguments:
    model_dir: str = field(metadata={"help": "Local model folder to add the reference (and the gate) to."})
    data_dir: Optional[str] = field(default=None, metadata={"help": "Training image folder (train split used)."})
    dataset_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset id (train split used)."})
    ood_dir: Optional[str] = field(default=None, metadata={
        "help": "Development folders for the learned gate: ood/<kind>/ (not frontal chest X-rays) and adult_nih/ "
                "(adult frontal films). Without it only the feature reference is fitted."})


def main(argv: list[str] | None = None) -> int:
    from train.data import drop_unreadable, load_raw_dataset, split_membership

    args, gate_args = HfArgumentParser((OodArguments, GateArguments)).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)  # minutes of work
    model_dir = Path(args.model_dir)
    classifier = PneumoniaClassifier.from_pretrained(model_dir)
    train, _ = drop_unreadable(load_raw_dataset(args.dataset_name, args.data_dir)["train"], "train")
    # Reuse the model's own split lists when it has them, so the held-out side really is held out.
    splits = model_dir / "splits"
    batch_holdout = None
    if (splits / "validation.csv").is_file():
        held_out, rest = split_membership(train, splits / "validation.csv")
        if (splits / "batch_holdout.csv").is_file():
            batch_holdout, _ = split_membership(train, splits / "batch_holdout.csv")
        train = split_membership(train, splits / "train.csv")[0] if (splits / "train.csv").is_file() else rest
    else:
        split = train.train_test_split(test_size=0.15, seed=0)
        train, held_out = split["train"], split["test"]
    stats = write_reference(classifier, dataset_features(classifier, train), dataset_features(classifier, held_out), model_dir)
    print(f"Wrote {model_dir / REFERENCE_FILE}: {json.dumps(stats)}")
    if args.ood_dir:
        config = write_gate_for_splits(classifier, model_dir, train, held_out, args.ood_dir, gate_args, batch_holdout)
        print(f"Wrote {model_dir / GATE_FILE}; flagged on held-out images: {gate_summary(config)}")
    if (model_dir / SUMMARY_FILE).is_file():  # a folder this pipeline trained: its card describes the gate
        render_card(model_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
