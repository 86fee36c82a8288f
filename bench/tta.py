"""Does test-time augmentation pay? The bundled model on its validation images, with and without TTA.

    python bench/tta.py [--model model] [--data_dir ../shared/data/chest_xray]

TTA here averages the logits of three framings of each image (as it is, a 10 % tighter crop, a 10 % wider
field with a black border), then applies the stored calibration and threshold. It costs three forward
passes per image. Printed for every acquisition shift of `train.shifts`: ROC-AUC, sensitivity and
specificity at the stored threshold, plain and with TTA.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from chestxray import PneumoniaClassifier  # noqa: E402
from train.calibration import sensitivity_specificity  # noqa: E402
from train.shifts import SHIFTS, central_crop, validation_images  # noqa: E402


def wider(image: Image.Image, margin: float = 0.05) -> Image.Image:
    return ImageOps.expand(image, border=(int(image.width * margin), int(image.height * margin)), fill=0)


VIEWS = (lambda im: im, lambda im: central_crop(im, 0.9), wider)


def scores(classifier: PneumoniaClassifier, images: list[Image.Image], views) -> np.ndarray:
    logits = torch.stack([classifier.logits([view(image) for image in images], batch_size=32) for view in views]).mean(dim=0)
    return classifier.calibrated_probabilities(logits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "model"))
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "chest_xray"))
    args = parser.parse_args()
    classifier = PneumoniaClassifier.from_pretrained(args.model)
    images, labels = validation_images(Path(args.model), args.data_dir)
    labels = np.asarray(labels)
    print(f"{args.model}: {len(images)} validation images, stored threshold {classifier.threshold:.3f}\n")
    print("| alteration | ROC-AUC plain / TTA | sensitivity plain / TTA | specificity plain / TTA |\n|---|---|---|---|")
    for name, shift in SHIFTS.items():
        shifted = [shift(image) for image in images]
        cells = []
        for views in (VIEWS[:1], VIEWS):
            s = scores(classifier, shifted, views)
            cells.append((roc_auc_score(labels, s), *sensitivity_specificity(labels, s, classifier.threshold)))
        (a0, se0, sp0), (a1, se1, sp1) = cells
        print(f"| {name} | {a0:.4f} / {a1:.4f} | {se0:.3f} / {se1:.3f} | {sp0:.3f} / {sp1:.3f} |")


if __name__ == "__main__":
    main()
