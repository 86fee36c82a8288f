"""`python -m train.evaluate`: metrics and figures for any model on any split, at the model's stored threshold."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from transformers import HfArgumentParser

from chestxray.classifier import ModelLoadError, PneumoniaClassifier
from train.card import SUMMARY_FILE, render_card
from train.data import drop_unreadable, load_raw_dataset, split_membership
from train.report import evaluate_split


@dataclass
class EvaluationArguments:
    model: str = field(metadata={"help": "Model folder or Hub repo id."})
    revision: Optional[str] = field(default=None, metadata={"help": "Hub revision of the model."})
    data_dir: Optional[str] = field(default=None, metadata={"help": "Image folder DIR/<split>/{NORMAL,PNEUMONIA}."})
    dataset_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset id."})
    dataset_revision: Optional[str] = field(default=None, metadata={"help": "Hub revision of the dataset."})
    split: str = field(default="test", metadata={
        "help": "Split to evaluate; a split the data lacks but the model lists in `splits/<split>.csv` (its carved "
                "validation) is taken from the data's train split."})
    output_dir: Optional[str] = field(
        default=None, metadata={"help": "Where metrics and figures go (default: evaluation/<model>/, or the model folder with --update_card)."}
    )
    update_card: bool = field(default=False, metadata={"help": "Add these results to the model card's model-index (local folder)."})

    def __post_init__(self) -> None:
        if (self.dataset_name is None) == (self.data_dir is None):
            raise ValueError("Give exactly one of --data_dir or --dataset_name.")


def run(args: EvaluationArguments) -> dict:
    model_folder = Path(args.model)
    if args.update_card and not (model_folder / SUMMARY_FILE).is_file():
        raise ValueError(f"--update_card needs a local model folder written by `python -m train` ({SUMMARY_FILE} not found in {args.model}).")
    classifier = PneumoniaClassifier.from_pretrained(args.model, revision=args.revision)
    raw = load_raw_dataset(args.dataset_name, args.data_dir, args.dataset_revision)
    source = args.dataset_name or f"the local image folder `{Path(args.data_dir).name}`"
    own_split = model_folder / "splits" / f"{args.split}.csv"
    if args.split in raw:
        dataset, description = raw[args.split], f"`{args.split}` split of {source}"
    elif own_split.is_file() and "train" in raw:  # the split the model carved from the training data (its validation)
        dataset, _ = split_membership(raw["train"], own_split)
        earlier = model_folder / f"metrics_{args.split}.json"  # training described these same films
        description = (json.loads(earlier.read_text())["dataset"] if earlier.is_file() else
                       f"this model's own `{args.split}` hold-out (`splits/{args.split}.csv`), carved from the train "
                       f"split of {source}")
    else:
        raise ValueError(f"No `{args.split}` split in the data; available: {', '.join(raw)}.")
    dataset, skipped = drop_unreadable(dataset, args.split)
    if args.update_card:
        output_dir = model_folder
    else:
        output_dir = Path(args.output_dir or Path("evaluation") / Path(str(args.model).rstrip("/")).name)
    seen = trained_on_fraction(dataset, model_folder)
    if seen:
        print(f"warning: {seen:.0%} of these {len(dataset)} images were in this model's training set "
              f"(splits/train.csv): the figures are optimistic, not an evaluation.", file=sys.stderr)
    report = evaluate_split(classifier, dataset, args.split, description, output_dir)
    report["skipped_files"] = skipped
    report["trained_on_fraction"] = seen
    (output_dir / f"metrics_{args.split}.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.update_card:
        render_card(model_folder)
    return report


def trained_on_fraction(dataset, model_folder: Path) -> float:
    """Share of `dataset` listed in the model's own `splits/train.csv` (0 when the folder has none)."""
    train_list = model_folder / "splits" / "train.csv"
    if not train_list.is_file() or not len(dataset):
        return 0.0
    trained, _ = split_membership(dataset, train_list)
    return len(trained) / len(dataset)


def main(argv: list[str] | None = None) -> int:
    try:
        (args,) = HfArgumentParser(EvaluationArguments, prog="python -m train.evaluate").parse_args_into_dataclasses(args=argv)
        report = run(args)
    except (ModelLoadError, ValueError, OSError) as error:  # OSError: missing files, and the Hub out of reach
        print(f"error: {error}", file=sys.stderr)
        return 1
    metrics = report["metrics"]
    print(json.dumps({k: metrics[k] for k in ("roc_auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "ece",
                                                "threshold", "confusion_matrix", "support", "intervals")}, indent=2))
    if report["skipped_files"]:
        print(f"skipped {len(report['skipped_files'])} unreadable images: {', '.join(report['skipped_files'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
