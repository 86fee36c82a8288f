"""Fit the out-of-distribution reference stored next to the weights (`ood_reference.safetensors`).

`python -m train.ood --model_dir DIR (--data_dir DIR | --dataset_name ID)` adds it to an existing model
folder; `python -m train` fits it at the end of training on the same patient-level split.
"""

from __future__ import annotations

import json
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
from chestxray.ood import REFERENCE_FILE, OodReference
from train.report import dataset_logits

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
    (model_dir / "ood_reference.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


@dataclass
class OodArguments:
    model_dir: str = field(metadata={"help": "Local model folder to add the reference to."})
    data_dir: Optional[str] = field(default=None, metadata={"help": "Training image folder (train split used)."})
    dataset_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset id (train split used)."})


def main(argv: list[str] | None = None) -> int:
    from train.data import drop_unreadable, load_raw_dataset, split_membership

    (args,) = HfArgumentParser(OodArguments).parse_args_into_dataclasses(args=argv)
    model_dir = Path(args.model_dir)
    classifier = PneumoniaClassifier.from_pretrained(model_dir)
    train, _ = drop_unreadable(load_raw_dataset(args.dataset_name, args.data_dir)["train"], "train")
    # Reuse the model's own split lists when it has them, so the held-out side really is held out.
    split_file = model_dir / "splits" / "validation.csv"
    if split_file.is_file():
        held_out, train = split_membership(train, split_file)
    else:
        split = train.train_test_split(test_size=0.15, seed=0)
        train, held_out = split["train"], split["test"]
    stats = write_reference(classifier, dataset_features(classifier, train), dataset_features(classifier, held_out), model_dir)
    print(f"Wrote {model_dir / REFERENCE_FILE}: {json.dumps(stats)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
