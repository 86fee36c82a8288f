"""How much do the margins say? The margin-only probe and the margin shifts on every split a model folder lists,
and how well the margins' plain statistics separate the classes without any network.

    python bench/margins.py [--model model [other_model ...]] [--data_dir ../shared/data/chest_xray]

For each model: on its `splits/validation.csv` and, for a batch hold-out sibling, `splits/batch_holdout.csv`
(films never trained or validated on): ROC-AUC, sensitivity and specificity at the stored threshold, as filmed
and under `train.shifts`' margin shifts; the probe's ROC-AUC (centre grey, 10 % margins kept) with a bootstrap
interval over the films, and where its probabilities sit; whether the score follows the share of air (near-black
pixels) within each class. Then, on the first model's validation films: the ROC-AUC of simple statistics of the 10 %
margin band, as filmed and after a crop to the body (the box of rows and columns where more than 5 % of the
pixels are brighter than grey 20), the crop issue 11 suggests.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from chestxray import PneumoniaClassifier  # noqa: E402
from train.data import load_image, load_raw_dataset, split_membership  # noqa: E402
from train.shifts import MARGIN_SHIFTS, PROBE_MARGIN, SHIFTS, hide_centre, scores_at_threshold  # noqa: E402

SIDE = 192  # statistics on the squashed film, as the network sees it
BODY_LEVEL = 20


def split_films(model_dir: Path, split: str, train) -> tuple[list[Image.Image], np.ndarray] | None:
    split_file = model_dir / "splits" / f"{split}.csv"
    if not split_file.is_file():
        return None
    listed, _ = split_membership(train, split_file)
    return [load_image(cell) for cell in listed["image"]], np.asarray(listed["label"])


def body_box(image: Image.Image) -> tuple[int, int, int, int]:
    bright = np.asarray(image.convert("L").filter(ImageFilter.BoxBlur(2))) > BODY_LEVEL
    columns, rows = np.flatnonzero(bright.mean(axis=0) > 0.05), np.flatnonzero(bright.mean(axis=1) > 0.05)
    if not len(columns) or not len(rows):
        return 0, 0, image.width, image.height
    return int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1


def band_statistics(image: Image.Image) -> dict[str, float]:
    pixels = np.asarray(image.convert("L").resize((SIDE, SIDE), Image.Resampling.BILINEAR), dtype=np.float32)
    inner = round(SIDE * PROBE_MARGIN)
    band = np.ones_like(pixels, dtype=bool)
    band[inner:-inner, inner:-inner] = False
    return {"mean grey": float(pixels[band].mean()), "standard deviation": float(pixels[band].std()),
            "near-black share (≤ 20)": float((pixels[band] <= BODY_LEVEL).mean()),
            "outer 16 columns' mean grey": float(np.concatenate([pixels[:, :16], pixels[:, -16:]]).mean())}


def separability(values: list[dict[str, float]], labels: np.ndarray) -> dict[str, float]:
    """ROC-AUC of each statistic, folded to ≥ 0.5 (the direction does not matter to a network)."""
    return {name: max(auc, 1 - auc) for name in values[0]
            for auc in [roc_auc_score(labels, [v[name] for v in values])]}


def report_model(model_dir: Path, train) -> None:
    classifier = PneumoniaClassifier.from_pretrained(model_dir)
    print(f"\n{model_dir} (stored threshold {classifier.threshold:.3f})\n")
    print("| split | films | input | ROC-AUC | sensitivity | specificity |\n|---|---|---|---|---|---|")
    for split in ("validation", "batch_holdout"):
        films = split_films(model_dir, split, train)
        if films is None:
            continue
        images, labels = films
        for name in ("none", *MARGIN_SHIFTS):
            row = scores_at_threshold(classifier, [SHIFTS[name](image) for image in images], labels)
            print(f"| {split} | {len(labels)} | {name} | {row['roc_auc']:.4f} | {row['sensitivity']:.3f} | {row['specificity']:.3f} |")
        print(f"| {split} | {len(labels)} | {air_dependence(classifier, images, labels)} | – | – | – |")
        logits = classifier.logits([hide_centre(image) for image in images], batch_size=32)
        probabilities = np.asarray(classifier.calibrated_probabilities(logits))
        margin = logit_margin(classifier, logits)
        auc, (ci_low, ci_high) = roc_auc_score(labels, margin), bootstrap_interval(labels, margin)
        low, median, high = np.percentile(probabilities, [5, 50, 95])
        print(f"| {split} | {len(labels)} | margin-only probe (95 % bootstrap interval {ci_low:.3f}–{ci_high:.3f}; "
              f"P(PNEUMONIA) 5th/50th/95th percentile {low:.4f} / {median:.4f} / {high:.4f}) | {auc:.4f} | – | – |")


def logit_margin(classifier: PneumoniaClassifier, logits) -> np.ndarray:
    """PNEUMONIA logit minus NORMAL logit: the calibrated probability's ranking, without its saturation near 1."""
    return np.asarray(2 * logits[:, classifier.positive_index] - logits.sum(dim=1), dtype=np.float64)


def air_share(image: Image.Image) -> float:
    """The share of near-black pixels: the air around the child, more of it on NORMAL films in this data."""
    return float((np.asarray(image.convert("L").resize((SIDE, SIDE), Image.Resampling.BILINEAR)) <= BODY_LEVEL).mean())


def air_dependence(classifier: PneumoniaClassifier, images: list[Image.Image], labels: np.ndarray) -> str:
    """Does the score follow the air share within a class? A shortcut on framing would make NORMAL films with
    little air (a tight framing) score higher: a negative rank correlation among NORMALs."""
    margin = logit_margin(classifier, classifier.logits(images, batch_size=32))
    air = np.array([air_share(image) for image in images])
    cells = [f"air share NORMAL / PNEUMONIA {air[labels == 0].mean():.3f} / {air[labels == 1].mean():.3f}"]
    for label, name in ((0, "NORMAL"), (1, "PNEUMONIA")):
        cells.append(f"Spearman(air, score) among {name} {spearmanr(air[labels == label], margin[labels == label])[0]:+.3f}")
    return "; ".join(cells)


def bootstrap_interval(labels: np.ndarray, scores: np.ndarray, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """The ROC-AUC's 95 % percentile interval over resampled films: how far one run's probe can move by chance."""
    rng = np.random.default_rng(seed)
    aucs = []
    for _ in range(resamples):
        rows = rng.integers(0, len(labels), len(labels))
        if labels[rows].min() != labels[rows].max():
            aucs.append(roc_auc_score(labels[rows], scores[rows]))
    return float(np.percentile(aucs, 2.5)), float(np.percentile(aucs, 97.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", default=[str(REPO / "model")])
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "chest_xray"))
    args = parser.parse_args()
    train = load_raw_dataset(None, args.data_dir)["train"]
    for model in args.model:
        report_model(Path(model), train)
    images, labels = split_films(Path(args.model[0]), "validation", train)
    boxes = [body_box(image) for image in images]
    kept = np.mean([(x1 - x0) * (y1 - y0) / (image.width * image.height) for image, (x0, y0, x1, y1) in zip(images, boxes)])
    as_filmed = separability([band_statistics(image) for image in images], labels)
    cropped = separability([band_statistics(image.crop(box)) for image, box in zip(images, boxes)], labels)
    print(f"\nThe {round(100 * PROBE_MARGIN)} % margin band's statistics alone, {len(labels)} validation films of "
          f"{args.model[0]} (ROC-AUC, 0.5 = no label in them); the body crop keeps {kept:.1%} of the area\n")
    print("| statistic | as filmed | cropped to the body |\n|---|---|---|")
    for name in as_filmed:
        print(f"| {name} | {as_filmed[name]:.3f} | {cropped[name]:.3f} |")


if __name__ == "__main__":
    main()
