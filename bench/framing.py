"""Which part of a film's framing moves the answer: a tighter zoom, or the film's shape?

    python bench/framing.py [--model model [other_model ...]] [--split validation batch_holdout] [--per_class 400]

Every film is squashed to a square before the network sees it, so cutting 10 % off the top and bottom makes the
anatomy 1.25 times taller against its width, while cutting 10 % off every side is a plain zoom. For each model and
split (`splits/<split>.csv`; `batch_holdout` for a batch hold-out sibling), on up to `--per_class` films of each
class: specificity (NORMAL films) and sensitivity (PNEUMONIA films) at the stored threshold with each side or pair
of sides cut, and the median change of each film's logit margin (PNEUMONIA minus NORMAL; > 0 leans to PNEUMONIA).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.margins import logit_margin, split_films  # noqa: E402
from chestxray import PneumoniaClassifier  # noqa: E402
from train.augment import crop_sides  # noqa: E402
from train.data import load_raw_dataset  # noqa: E402

CUT = 0.10
# (left, top, right, bottom) shares cut; the first three keep the film's shape, the rest change it.
FRAMINGS = {
    "every side (a zoom, shape kept)": (CUT / 2,) * 4,
    "left and top (shape kept)": (CUT, CUT, 0, 0),
    "right and bottom (shape kept)": (0, 0, CUT, CUT),
    "top only (wider)": (0, CUT, 0, 0),
    "bottom only (wider)": (0, 0, 0, CUT),
    "top and bottom (wider)": (0, CUT, 0, CUT),
    "left only (narrower)": (CUT, 0, 0, 0),
    "right only (narrower)": (0, 0, CUT, 0),
    "left and right (narrower)": (CUT, 0, CUT, 0),
}


def every_kth(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Up to `per_class` films of each class, evenly spread over the split's order (deterministic)."""
    rows = []
    for label in (0, 1):
        members = np.flatnonzero(labels == label)
        rows.append(members[:: max(1, -(-len(members) // per_class))])
    return np.concatenate(rows)


def report(classifier: PneumoniaClassifier, model_dir: Path, split: str, train, per_class: int) -> None:
    films = split_films(model_dir, split, train)
    if films is None:
        return
    images, labels = films
    rows = every_kth(labels, per_class)
    images, labels = [images[i] for i in rows], labels[rows]

    def scored(batch):
        logits = classifier.logits(batch, batch_size=32)
        return classifier.calibrated_probabilities(logits), logit_margin(classifier, logits)

    cut = classifier.threshold
    base_probability, base = scored(images)
    normal, pneumonia = labels == 0, labels == 1
    print(f"\n{model_dir}, {split}: {normal.sum()} NORMAL and {pneumonia.sum()} PNEUMONIA films, stored threshold {cut:.3f}\n")
    print("| cut 10 % off | specificity | sensitivity | median margin change, NORMAL / PNEUMONIA |\n|---|---|---|---|")
    print(f"| nothing | {np.mean(base_probability[normal] < cut):.3f} | {np.mean(base_probability[pneumonia] >= cut):.3f} | – |")
    for name, sides in FRAMINGS.items():
        probability, margin = scored([crop_sides(image, *sides) for image in images])
        change = margin - base
        print(f"| {name} | {np.mean(probability[normal] < cut):.3f} | {np.mean(probability[pneumonia] >= cut):.3f} "
              f"| {np.median(change[normal]):+.2f} / {np.median(change[pneumonia]):+.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=[str(REPO / "model")])
    parser.add_argument("--split", nargs="+", default=["validation", "batch_holdout"])
    parser.add_argument("--per_class", type=int, default=400)
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "chest_xray"))
    args = parser.parse_args()
    train = load_raw_dataset(None, args.data_dir)["train"]
    for model in args.model:
        classifier = PneumoniaClassifier.from_pretrained(model)  # once for every split
        for split in args.split:
            report(classifier, Path(model), split, train, args.per_class)


if __name__ == "__main__":
    main()
