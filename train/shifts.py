"""Acquisition shifts: does the stored threshold survive another machine's or hospital's pictures?

The official test split and other sites are out of reach, so the model's own patient-level validation
images are altered the ways acquisition differs (exposure, contrast, gamma, blur, noise, heavy JPEG,
low resolution, a tighter framing) and scored at the **stored** threshold. A threshold on a knife edge
shows as specificity or sensitivity collapsing under mild shifts. Training writes the table next to the
weights (`robustness_validation.json`) and the card shows it;

    python -m train.shifts --model_dir model --data_dir ../shared/data/chest_xray [--write]

prints it for any model folder (and with `--write` stores it and re-renders the card).

Two checks aim at the border shortcut (issue 11). The margin shifts (bars, an added border, borders cropped, a
wider or a narrower film: every film is squashed to a square, so its shape becomes the anatomy's proportions)
are other machines' framings: sensitivity and specificity at the stored threshold must stay within
`MARGIN_TOLERANCE` of the unaltered images (`margin_check`). The margin-only probe hides the centre and keeps
only the margins: its ROC-AUC (`margin_probe`) should be near 0.5, since the margins show no lung.
"""

from __future__ import annotations

import io
import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from sklearn.metrics import roc_auc_score

from chestxray.classifier import PneumoniaClassifier
from train.augment import add_bars, add_gaussian_noise, adjust_gamma, crop_sides, grey_ink, pad_sides
from train.calibration import sensitivity_specificity
from train.card import ROBUSTNESS_FILE, SUMMARY_FILE, render_card

MARGIN_TOLERANCE = 0.05  # largest drop in sensitivity or specificity a margin shift may cause
PROBE_MARGIN = 0.10  # the margin-only probe keeps this share of each side and hides the rest
PROBE_GREY = 128


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("L")


def central_crop(image: Image.Image, keep: float) -> Image.Image:
    """A tighter framing: the central `keep` of each side (0.85 is a 1.18x zoom)."""
    w, h = image.size
    dx, dy = int(w * (1 - keep) / 2), int(h * (1 - keep) / 2)
    return image.crop((dx, dy, w - dx, h - dy))


def hide_centre(image: Image.Image, margin: float = PROBE_MARGIN, grey: int = PROBE_GREY) -> Image.Image:
    """Only the margins: everything but `margin` of each side painted uniform grey."""
    w, h = image.size
    hidden = image.copy()
    hidden.paste(grey_ink(image, grey), (round(w * margin), round(h * margin), w - round(w * margin), h - round(h * margin)))
    return hidden


MARGIN_SHIFTS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "black bars at the sides (10 %)": lambda im: add_bars(im, 0.10, 0, 0.10, 0, fill=0),
    "white bars top and bottom (8 %)": lambda im: add_bars(im, 0, 0.08, 0, 0.08, fill=255),
    "black border added (10 %)": lambda im: pad_sides(im, 0.10, 0.10, 0.10, 0.10, fill=0),
    "borders cropped (left and top 10 %)": lambda im: crop_sides(im, 0.10, 0.10, 0, 0),
    # Another film shape: the processor squashes every film to a square, so these change the anatomy's proportions.
    "a wider film (top and bottom 10 % cropped)": lambda im: crop_sides(im, 0, 0.10, 0, 0.10),
    "a narrower film (sides 10 % cropped)": lambda im: crop_sides(im, 0.10, 0, 0.10, 0),
}
SHIFTS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "none": lambda im: im,
    "brighter (+20 %)": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
    "darker (-20 %)": lambda im: ImageEnhance.Brightness(im).enhance(0.8),
    "more contrast (+30 %)": lambda im: ImageEnhance.Contrast(im).enhance(1.3),
    "less contrast (-30 %)": lambda im: ImageEnhance.Contrast(im).enhance(0.7),
    "gamma 0.7": lambda im: adjust_gamma(im, 0.7),
    "gamma 1.4": lambda im: adjust_gamma(im, 1.4),
    "blur (radius 1.5)": lambda im: im.filter(ImageFilter.GaussianBlur(1.5)),
    # This copy of the data was shrunk to 224 px by its publisher; a full-size upload, shrunk once, is sharper.
    "sharper (unsharp mask, radius 2, 100 %)": lambda im: im.filter(ImageFilter.UnsharpMask(2, 100, 0)),
    "noise (std 8)": lambda im: add_gaussian_noise(im, 8.0, random.Random(0)),
    "JPEG quality 20": lambda im: jpeg(im, 20),
    "half resolution": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.BILINEAR),
    "crop to central 85 %": lambda im: central_crop(im, 0.85),
    **MARGIN_SHIFTS,
}


def scores_at_threshold(classifier: PneumoniaClassifier, images: Sequence[Image.Image], labels: np.ndarray) -> dict:
    """The network's calibrated scores, as the app computes them, without the serving gate: an altered X-ray the
    gate would refuse still shows where the threshold stands."""
    scores = classifier.calibrated_probabilities(classifier.logits(images, batch_size=32))
    sensitivity, specificity = sensitivity_specificity(labels, scores, classifier.threshold)
    auc = float(roc_auc_score(labels, scores)) if len(set(labels.tolist())) == 2 else None
    return {"roc_auc": auc, "sensitivity": sensitivity, "specificity": specificity}


def margin_check(rows: list[dict], tolerance: float = MARGIN_TOLERANCE) -> dict:
    """Do sensitivity and specificity at the stored threshold hold under every margin shift?"""
    clean = next(row for row in rows if row["shift"] == "none")
    margin_rows = [row for row in rows if row["shift"] in MARGIN_SHIFTS]
    worst_sensitivity = min(row["sensitivity"] for row in margin_rows)
    worst_specificity = min(row["specificity"] for row in margin_rows)
    return {"shifts": [row["shift"] for row in margin_rows], "tolerance": tolerance,
            "worst_sensitivity": worst_sensitivity, "worst_specificity": worst_specificity,
            "holds": bool(worst_sensitivity >= clean["sensitivity"] - tolerance
                          and worst_specificity >= clean["specificity"] - tolerance)}


def shift_report(classifier: PneumoniaClassifier, images: Sequence[Image.Image], labels: Sequence[int]) -> dict:
    """ROC-AUC, and sensitivity and specificity at the stored threshold, for every shift; the margin check and
    the margin-only probe."""
    labels = np.asarray(labels)
    rows = [{"shift": name, **scores_at_threshold(classifier, [shift(image) for image in images], labels)} for name, shift in SHIFTS.items()]
    probe = {"alteration": f"central {round(100 * (1 - 2 * PROBE_MARGIN))} % grey, {round(100 * PROBE_MARGIN)} % margins kept",
             **scores_at_threshold(classifier, [hide_centre(image) for image in images], labels)}
    return {"split": "validation", "threshold": classifier.threshold, "images": len(labels), "shifts": rows,
            "margin_check": margin_check(rows), "margin_probe": probe}


def write_shift_report(report: dict, model_dir: Path) -> None:
    (Path(model_dir) / ROBUSTNESS_FILE).write_text(json.dumps(report, indent=2) + "\n")


def markdown_table(report: dict) -> str:
    lines = ["| alteration | ROC-AUC | sensitivity | specificity |", "|---|---|---|---|"]
    for row in report["shifts"]:
        auc = "n/a" if row["roc_auc"] is None else f"{row['roc_auc']:.4f}"
        lines.append(f"| {row['shift']} | {auc} | {row['sensitivity']:.3f} | {row['specificity']:.3f} |")
    return "\n".join(lines)


def margin_summary(report: dict) -> str:
    """Two lines on the border shortcut: the probe's AUC (0.5 = no signal in the margins) and the margin check."""
    lines = []
    if "margin_probe" in report:
        probe = report["margin_probe"]
        auc = "n/a" if probe["roc_auc"] is None else f"{probe['roc_auc']:.3f}"
        lines.append(f"Margin-only probe ({probe['alteration']}): ROC-AUC {auc} (0.5 = the margins carry no label).")
    if "margin_check" in report:
        check = report["margin_check"]
        lines.append(f"Margin shifts: worst sensitivity {check['worst_sensitivity']:.3f}, worst specificity "
                     f"{check['worst_specificity']:.3f}; within {check['tolerance']} of the unaltered images: "
                     f"{'yes' if check['holds'] else 'NO'}.")
    return "\n".join(lines)


def validation_images(model_dir: Path, data_dir: str | None, dataset_name: str | None = None) -> tuple[list, list[int]]:
    """The images and labels a model was validated on, from its `splits/validation.csv` and its training data."""
    from train.data import load_image, load_raw_dataset, split_membership

    split_file = Path(model_dir) / "splits" / "validation.csv"
    validation, _ = split_membership(load_raw_dataset(dataset_name, data_dir)["train"], split_file)
    return [load_image(cell) for cell in validation["image"]], list(validation["label"])


@dataclass
class ShiftArguments:
    model_dir: str = field(metadata={"help": "Model folder with its splits/validation.csv (written by `python -m train`)."})
    data_dir: Optional[str] = field(default=None, metadata={"help": "The image folder the model was trained from."})
    dataset_name: Optional[str] = field(default=None, metadata={"help": "The Hub dataset the model was trained from."})
    write: bool = field(default=False, metadata={"help": f"Store {ROBUSTNESS_FILE} in the model folder and re-render its card."})


def main(argv: list[str] | None = None) -> int:
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(ShiftArguments).parse_args_into_dataclasses(args=argv)
    model_dir = Path(args.model_dir)
    split_file = model_dir / "splits" / "validation.csv"
    if not split_file.is_file():
        print(f"error: {split_file} not found: the shifts are measured on the model's own validation images.", file=sys.stderr)
        return 1
    classifier = PneumoniaClassifier.from_pretrained(model_dir)
    report = shift_report(classifier, *validation_images(model_dir, args.data_dir, args.dataset_name))
    print(f"{model_dir}: {report['images']} validation images, stored threshold {classifier.threshold:.3f}\n")
    print(markdown_table(report))
    print("\n" + margin_summary(report))
    if args.write:
        write_shift_report(report, model_dir)
        if (model_dir / SUMMARY_FILE).is_file():
            render_card(model_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
