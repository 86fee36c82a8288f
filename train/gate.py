"""Fit the out-of-distribution gate stored with a model (`ood_gate.safetensors`, `ood_gate.json`) and measure it.

What it learns from:

- what must pass: the paediatric frontal films the model was trained on, each also once augmented the ways
  other machines and sites differ (exposure, contrast, gamma, framing, blur, noise, JPEG, resolution);
- what must be refused (outlier exposure): the development folders under `--ood_dir` (`ood/<kind>/`: lateral
  chest views, CT slices, hands, knees, ...), each image also 8 times augmented, and synthetic negatives:
  films turned sideways or upside down, inverted, cropped to a detail; blank, noise, colour photos,
  documents, screenshots, grey shapes;
- what must be answered with a warning: adult frontal films (`adult_nih/`), each also twice augmented.

A fixed, seeded part of each development folder (grouped by patient or figure) is held out and never fitted
on: `ood_gate_splits.json` lists it, and the rates the card reports are measured on it. Thresholds come from
5-fold cross-validation over the paediatric training films (grouped by patient): every learned component
flags the same top share of its out-of-fold scores, the smallest share whose combined out-of-fold false-alarm
rate stays within `target_false_alarm_rate`. Nothing held out, and nothing of the validation split, sets them.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps
from sklearn.covariance import LedoitWolf
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from chestxray.batch import IMAGE_SUFFIXES as BATCH_SUFFIXES
from chestxray.classifier import PneumoniaClassifier
from chestxray.imaging import read_image
from chestxray.ood import (FRONTAL_CHEST, GATE_CONFIG_FILE, GATE_FILE, NOT_FRONTAL_CHEST, OUTSIDE_POPULATION, Gaussian,
                           LinearHead, OodGate, image_descriptor, probe_pixels)
from train.augment import XRayAugmentation
from train.shifts import jpeg

logger = logging.getLogger(__name__)

SPLITS_FILE = "ood_gate_splits.json"
ADULT = "adult"
IMAGE_SUFFIXES = {suffix for suffix in BATCH_SUFFIXES if suffix}  # what `predict` reads, less files without a suffix
# Development folders under ood/ and the reason a person is told; a folder not listed here is "other body part".
REASON_OF_KIND = {
    "lateral_chest": "lateral_view", "lateral": "lateral_view", "ct_chest": "not_radiograph", "ct": "not_radiograph",
    "mri": "not_radiograph", "ultrasound": "not_radiograph", "hand": "other_body_part", "knee": "other_body_part",
}
DEFAULT_REASON = "other_body_part"
ADULT_FOLDERS = ("adult_nih",)


@dataclass
class GateArguments:
    holdout_fraction: float = field(default=0.4, metadata={"help": "Share of each development folder held out to measure the gate."})
    seed: int = field(default=0, metadata={"help": "Seed of the hold-out split, the augmentations and the synthetic negatives."})
    target_false_alarm_rate: float = field(
        default=0.005, metadata={"help": "Out-of-fold share of paediatric training films the gate may flag (sets the thresholds)."})
    augmented_copies_refused: int = field(default=8, metadata={"help": "Augmented copies of each refused development image."})
    augmented_copies_adult: int = field(default=2, metadata={"help": "Augmented copies of each adult development film."})
    synthetic_per_kind: int = field(default=40, metadata={"help": "Synthetic negatives of each junk kind."})
    films_per_transform: int = field(default=150, metadata={"help": "Training films per film transform (rotated, inverted, ...)."})
    regularisation: float = field(default=1.0, metadata={
        "help": "Inverse L2 strength (C) of the logistic heads (1.0 refused more of a kind left out of fitting than 0.1 or 0.03)."})
    folds: int = field(default=5, metadata={"help": "Cross-validation folds over the paediatric films for the thresholds."})
    adult_density_quantile: float = field(default=0.95, metadata={
        "help": "Share of adult films (out-of-fold) whose descriptor counts as adult-like; the rest of what the adult "
                "head flags is refused as unlike any training film."})
    adult_refusal_quantile: float = field(default=0.8, metadata={
        "help": "Adult-looking images whose not-frontal score exceeds this quantile of the adult frontal films' "
                "(out-of-fold) scores are refused instead of warned: 0.8 refuses a fifth of adult frontal films, which "
                "are flagged either way, and refused more lateral views and hands of a kind left out of fitting "
                "(97.9 %% and 95.1 %%, against 95.8 %% and 91.0 %% without it)."})


# --- development data ----------------------------------------------------------------------------------------

def group_of(file_name: str) -> str:
    """Images of one patient or one figure stay together: `000002-14.jpeg` -> `000002`, `16745_2_3` -> `16745`,
    `00001304_001` (NIH) -> `00001304`, `...gr3_lrg-b.jpeg` (panel b of a figure) -> `...gr3_lrg`."""
    stem = Path(file_name).stem
    match = re.match(r"^(\d+)[-_]\d", stem)
    return match.group(1) if match else re.sub(r"-[a-z]$", "", stem)


def holdout_split(names: Sequence[str], fraction: float, seed: int) -> list[str]:
    """Whole groups, in a seeded random order, each taken when it brings the held-out count closer to `fraction`."""
    groups = sorted({group_of(n) for n in names})
    sizes = {g: sum(group_of(n) == g for n in names) for g in groups}
    target, held, count = fraction * len(names), set(), 0
    for index in np.random.default_rng(seed).permutation(len(groups)):
        if abs(count + sizes[groups[index]] - target) < abs(count - target):  # closer to the target with it
            held.add(groups[index])
            count += sizes[groups[index]]
    return sorted(n for n in names if group_of(n) in held)


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def development_kinds(ood_dir: Path) -> dict[str, list[str]]:
    """{kind: file paths relative to ood_dir}: every folder under ood/, and the adult films."""
    kinds = {folder.name: [str(p.relative_to(ood_dir)) for p in image_files(folder)]
             for folder in sorted((ood_dir / "ood").iterdir()) if folder.is_dir()} if (ood_dir / "ood").is_dir() else {}
    adults = [str(p.relative_to(ood_dir)) for name in ADULT_FOLDERS if (ood_dir / name).is_dir() for p in image_files(ood_dir / name)]
    if adults:
        kinds[ADULT] = adults
    return {kind: files for kind, files in kinds.items() if files}


def development_split(ood_dir: Path, fraction: float, seed: int) -> dict:
    """{"held_out": {kind: [files]}, "fitted": {kind: [files]}}, every path relative to ood_dir."""
    split = {"held_out": {}, "fitted": {}, "holdout_fraction": fraction, "seed": seed,
             "grouping": "by patient or figure (train.gate.group_of)"}
    for offset, (kind, files) in enumerate(development_kinds(ood_dir).items()):
        held = set(holdout_split(files, fraction, seed + offset))
        split["held_out"][kind] = sorted(held)
        split["fitted"][kind] = [f for f in files if f not in held]
    return split


# --- synthetic negatives and augmentations -------------------------------------------------------------------

def blank(rng):
    return Image.new("L", (512, 512), int(rng.integers(0, 256)))


def noise(rng):
    return Image.fromarray(rng.integers(0, 256, (384, 384), dtype=np.uint8))


def photo(rng):
    """A colour scene: sky gradient, ground, a few coloured blobs, blurred."""
    h, w = 360, 480
    sky = np.linspace(rng.uniform(120, 220), rng.uniform(30, 120), h)[:, None, None] * np.array(rng.uniform(0.3, 1.0, 3))
    image = Image.fromarray(np.broadcast_to(sky, (h, w, 3)).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, int(h * rng.uniform(0.5, 0.8)), w, h], fill=tuple(int(c) for c in rng.integers(0, 200, 3)))
    for _ in range(6):
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(10, 80)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return image.filter(ImageFilter.GaussianBlur(2))


def document(rng):
    page = Image.new("L", (850, 1100), 250)
    draw = ImageDraw.Draw(page)
    y = 80
    while y < 1000:
        words = " ".join("".join(chr(97 + int(c)) for c in rng.integers(0, 26, rng.integers(2, 9))) for _ in range(12))
        draw.text((70, y), words, fill=20)
        y += int(rng.integers(18, 30))
    return page


def screenshot(rng):
    image = Image.new("RGB", (1280, 800), (245, 246, 248))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 0, 1280, 60], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    for _ in range(8):
        x, y = rng.integers(20, 1100), rng.integers(80, 700)
        draw.rectangle([x, y, x + rng.integers(60, 300), y + rng.integers(30, 120)], outline=(180, 180, 190), fill=(255, 255, 255))
        draw.text((x + 8, y + 8), "Button", fill=(30, 30, 30))
    return image


def grey_shapes(rng):
    image = Image.new("L", (400, 400), int(rng.integers(0, 120)))
    draw = ImageDraw.Draw(image)
    for _ in range(10):
        x, y, r = rng.uniform(0, 400), rng.uniform(0, 400), rng.uniform(10, 90)
        draw.rectangle([x - r, y - r, x + r, y + r], fill=int(rng.integers(0, 256)))
    return image


# Junk a public Space receives: kind -> (maker, reason code)
SYNTHETIC_NOT_XRAYS = {
    "blank": (blank, "blank"), "noise": (noise, "noise"), "colour_photo": (photo, "colour_photo"),
    "document": (document, "document"), "screenshot": (screenshot, "document"),
    "grey_shapes": (grey_shapes, "unlike_training_xrays"),
}


def detail_crop(image: Image.Image, rng) -> Image.Image:
    """A quarter to a half of each side of a film, blown up: a detail, not a chest."""
    w, h = image.size
    side = rng.uniform(0.25, 0.5)
    cw, ch = max(1, int(w * side)), max(1, int(h * side))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    return image.crop((x, y, x + cw, y + ch)).resize((w, h), Image.Resampling.BILINEAR)


# A paediatric film in a presentation the model must not answer: kind -> transform(image, rng)
FILM_TRANSFORMS: dict[str, Callable] = {
    "film_rotated_90": lambda image, rng: image.rotate(90, expand=True),
    "film_rotated_270": lambda image, rng: image.rotate(270, expand=True),
    "film_upside_down": lambda image, rng: image.rotate(180),
    "film_inverted": lambda image, rng: ImageOps.invert(image.convert("L")),
    "film_detail": detail_crop,
}

# The bundled recipe's augmentation, with the margins randomised half the time (bars, borders, crops, edge
# exposure: machines and sites differ there most, train.augment), so that the gate answers such films.
FILM_AUGMENTATION = XRayAugmentation(max_scale_change=0.25, margin_probability=0.5)


def augment_film(image: Image.Image, rng: random.Random) -> Image.Image:
    """A frontal film as another site might send it: the training augmentation, sometimes JPEG or half resolution."""
    image = FILM_AUGMENTATION(image.convert("L"), rng)
    if rng.random() < 0.3:
        image = jpeg(image, rng.randint(20, 60))
    if rng.random() < 0.3:
        image = image.resize((max(1, image.width // 2), max(1, image.height // 2)), Image.Resampling.BILINEAR)
    return image


def augment_refused(image: Image.Image, rng: random.Random) -> Image.Image:
    """Another picture of the same kind: mirrored, framed differently, turned a little, exposed differently."""
    image = image.convert("L")
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    w, h = image.size
    keep = rng.uniform(0.75, 1.0)
    left, top = rng.uniform(0, 1 - keep) * w, rng.uniform(0, 1 - keep) * h
    image = image.crop((int(left), int(top), int(left + keep * w), int(top + keep * h)))
    return XRayAugmentation(max_rotation_degrees=15, max_scale_change=0.15)(image, rng)


def as_upload(image: Image.Image) -> Image.Image:
    """Through PNG bytes and the real reader, as an upload would arrive."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return read_image(buffer.getvalue(), name="generated.png")


# --- descriptors and features --------------------------------------------------------------------------------

@dataclass
class Described:
    """Per image: its kind, group (patient) and the gate's inputs."""

    kinds: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    descriptors: list[np.ndarray] = field(default_factory=list)
    features: list[np.ndarray] = field(default_factory=list)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return (np.array(self.kinds), np.array(self.groups), np.vstack(self.descriptors), np.vstack(self.features))


def describe(classifier: PneumoniaClassifier, items: Iterable[tuple[str, str, Image.Image]], batch_size: int = 64) -> Described:
    """(kind, group, image) items -> descriptors and the network's OOD features, one forward pass per batch."""
    described, batch = Described(), []

    def flush():
        if batch:
            images = [image for _, _, image in batch]
            _, features = classifier.logits(images, batch_size, with_features=True)
            described.kinds += [kind for kind, _, _ in batch]
            described.groups += [group for _, group, _ in batch]
            described.descriptors += [image_descriptor(image) for image in images]
            described.features.append(features.double().numpy())
            batch.clear()

    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            flush()
    flush()
    described.features = [np.vstack(described.features)] if described.features else []
    return described


def training_items(classifier: PneumoniaClassifier, films: Iterable[tuple[str, Image.Image]], film_count: int,
                   ood_dir: Path, split: dict, args: GateArguments) -> Iterator[tuple[str, str, Image.Image]]:
    """Everything the gate is fitted on, as (kind, group, image); paediatric films once, streamed."""
    rng = np.random.default_rng(args.seed)
    augment_rng = random.Random(args.seed)
    picks = {kind: set(rng.choice(film_count, min(args.films_per_transform, film_count), replace=False).tolist())
             for kind in FILM_TRANSFORMS}
    for index, (patient, film) in enumerate(films):
        yield "paediatric", patient, film
        yield "paediatric_augmented", patient, augment_film(film, augment_rng)
        for kind, transform in FILM_TRANSFORMS.items():
            if index in picks[kind]:
                yield kind, f"{kind}-{index}", transform(film, rng)
    for kind, (make, _) in SYNTHETIC_NOT_XRAYS.items():
        for index in range(args.synthetic_per_kind):
            yield kind, f"{kind}-{index}", as_upload(make(rng))
    for kind, files in split["fitted"].items():
        copies = args.augmented_copies_adult if kind == ADULT else args.augmented_copies_refused
        augment = augment_film if kind == ADULT else augment_refused
        for name in files:
            image = classifier.read(ood_dir / name)
            yield kind, group_of(name), image
            for _ in range(copies):
                yield kind, group_of(name), augment(image, augment_rng)


# --- fitting -------------------------------------------------------------------------------------------------

def reason_of(kind: str) -> str | None:
    """The reason code a refused training kind teaches; None for the kinds that are answered."""
    if kind.startswith("paediatric") or kind == ADULT:
        return None
    if kind in SYNTHETIC_NOT_XRAYS:
        return SYNTHETIC_NOT_XRAYS[kind][1]
    if kind in FILM_TRANSFORMS:
        return "unlike_training_xrays"
    return REASON_OF_KIND.get(kind, DEFAULT_REASON)


def fit_gaussian(points: np.ndarray) -> Gaussian:
    estimator = LedoitWolf().fit(points)
    return Gaussian(estimator.location_, estimator.precision_)


def fit_head(inputs: np.ndarray, labels: np.ndarray, weights: np.ndarray, regularisation: float) -> tuple[LinearHead, list]:
    """Weighted L2 logistic regression on standardised inputs; also returns the classes in output order."""
    scaler = StandardScaler().fit(inputs)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    model = LogisticRegression(C=regularisation, max_iter=3000)
    model.fit((inputs - scaler.mean_) / scale, labels, sample_weight=weights)
    return LinearHead(scaler.mean_, scale, model.coef_.copy(), model.intercept_.copy()), list(model.classes_)


def paediatric_rows(kinds: np.ndarray) -> np.ndarray:
    """Which rows are children's frontal films (original or augmented): the images the gate must answer."""
    return np.char.startswith(kinds.astype(str), "paediatric")


def balanced_weights(kinds: np.ndarray, refused: np.ndarray) -> np.ndarray:
    """Refused kinds weigh the same each, and together as much as the answered images; adults a fifth of those."""
    weights = np.zeros(len(kinds))
    refused_kinds = sorted(set(kinds[refused]))
    for kind in refused_kinds:
        weights[kinds == kind] = 1.0 / ((kinds == kind).sum() * len(refused_kinds))
    paediatric, adult = paediatric_rows(kinds), kinds == ADULT
    weights[paediatric] = 0.8 / max(paediatric.sum(), 1)
    weights[adult] = 0.2 / max(adult.sum(), 1)
    return weights * len(kinds) / weights.sum()


@dataclass
class GateParts:
    density: Gaussian
    not_frontal: LinearHead
    adult: LinearHead


def fit_not_frontal(kinds: np.ndarray, inputs: np.ndarray, answered_mask: np.ndarray, args: GateArguments) -> LinearHead:
    """The "not a frontal chest X-ray" head, fitted on the paediatric films of `answered_mask` and all other rows."""
    rows = answered_mask | ~paediatric_rows(kinds)
    refused = np.array([reason_of(k) is not None for k in kinds[rows]])
    head, _ = fit_head(inputs[rows], refused.astype(int), balanced_weights(kinds[rows], refused), args.regularisation)
    return head


def fit_parts(kinds: np.ndarray, descriptors: np.ndarray, inputs: np.ndarray, answered_mask: np.ndarray,
              args: GateArguments) -> GateParts:
    """Density and the two heads, fitted on the rows of `answered_mask` (paediatric films) and all others."""
    paediatric = paediatric_rows(kinds) & answered_mask
    not_frontal = fit_not_frontal(kinds, inputs, answered_mask, args)
    # Adults against children (augmented too: framing and borders must not pass for age), half the weight each;
    # that the film is a chest at all is the other parts' business.
    adult_rows = paediatric | (kinds == ADULT)
    is_adult = (kinds[adult_rows] == ADULT).astype(int)
    if is_adult.any():
        weights = np.where(is_adult == 1, 0.5 / is_adult.sum(), 0.5 / max((1 - is_adult).sum(), 1)) * len(is_adult)
        adult, _ = fit_head(inputs[adult_rows], is_adult, weights, args.regularisation)
    else:  # no adult films to learn from: a head that never fires
        width = inputs.shape[1]
        adult = LinearHead(np.zeros(width), np.ones(width), np.zeros((1, width)), np.array([-1.0]))
    return GateParts(fit_gaussian(descriptors[paediatric]), not_frontal, adult)


def patient_folds(groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    names = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(names))
    fold_of = {names[i]: rank % folds for rank, i in enumerate(order)}
    return np.array([fold_of[g] for g in groups])


def out_of_fold_scores(kinds, groups, descriptors, inputs, args: GateArguments) -> dict[str, np.ndarray]:
    """Each component's scores on paediatric films (original and augmented) from models that never saw them."""
    paediatric = paediatric_rows(kinds)
    fold = np.full(len(kinds), -1)
    fold[paediatric] = patient_folds(groups[paediatric], args.folds, args.seed)
    scores = {name: np.full(len(kinds), np.nan) for name in ("density", "not_frontal", "adult")}
    for f in range(args.folds):
        parts = fit_parts(kinds, descriptors, inputs, paediatric & (fold != f), args)
        rows = fold == f
        scores["density"][rows] = parts.density.distances(descriptors[rows])
        scores["not_frontal"][rows] = parts.not_frontal.logits(inputs[rows])[:, 0]
        scores["adult"][rows] = parts.adult.logits(inputs[rows])[:, 0]
        logger.info("Gate cross-validation: fold %d of %d done.", f + 1, args.folds)
    return {name: values[paediatric] for name, values in scores.items()}


def choose_thresholds(scores: dict[str, np.ndarray], target: float) -> tuple[dict[str, float], float, float]:
    """The same upper quantile of each component's out-of-fold scores: the lowest whose combined rate <= target."""
    for quantile in np.arange(0.990, 0.99991, 0.0001):
        thresholds = {name: float(np.quantile(values, quantile)) for name, values in scores.items()}
        flagged = np.any([values > thresholds[name] for name, values in scores.items()], axis=0)
        if flagged.mean() <= target:
            return thresholds, float(quantile), float(flagged.mean())
    thresholds = {name: float(values.max()) for name, values in scores.items()}
    return thresholds, 1.0, 0.0


def fit_gate(classifier: PneumoniaClassifier, described: Described, args: GateArguments) -> tuple[OodGate, dict]:
    kinds, groups, descriptors, features = described.arrays()
    inputs = np.hstack([descriptors, features])
    paediatric_kinds = paediatric_rows(kinds)
    scores = out_of_fold_scores(kinds, groups, descriptors, inputs, args)
    originals = kinds[paediatric_kinds] == "paediatric"
    thresholds, quantile, rate = choose_thresholds({k: v[originals] for k, v in scores.items()}, args.target_false_alarm_rate)
    augmented_rate = float(np.any([scores[k][~originals] > thresholds[k] for k in scores], axis=0).mean())

    parts = fit_parts(kinds, descriptors, inputs, paediatric_kinds, args)
    adults = kinds == ADULT
    adult_density = fit_gaussian(descriptors[adults] if adults.sum() > 1 else descriptors)
    adult_distances = cross_validated_distances(descriptors[adults], groups[adults], args)
    thresholds["adult_density"] = float(np.quantile(adult_distances, args.adult_density_quantile)) if len(adult_distances) else 0.0
    adult_scores = out_of_fold_adult_scores(kinds, groups, inputs, args)
    thresholds["adult_not_frontal"] = min(thresholds["not_frontal"], float(np.quantile(adult_scores, args.adult_refusal_quantile))
                                          if len(adult_scores) else np.inf)
    refused = np.array([reason_of(k) is not None for k in kinds])
    reason_labels = np.array([reason_of(k) for k in kinds[refused]])
    reason_kinds = kinds[refused]
    reason_weights = np.array([1.0 / (reason_kinds == k).sum() for k in reason_kinds])
    reasons, codes = fit_head(inputs[refused], reason_labels, reason_weights * len(reason_kinds) / reason_weights.sum(),
                              args.regularisation)
    if len(codes) == 2:  # scikit-learn gives one output for two classes: make it two logits
        reasons = LinearHead(reasons.mean, reasons.scale, np.vstack([-reasons.weight, reasons.weight]) / 2,
                             np.concatenate([-reasons.bias, reasons.bias]) / 2)
    probe = classifier.logits_and_features(probe_pixels(classifier.image_size))[1].double().numpy()
    counts = {kind: int((kinds == kind).sum()) for kind in sorted(set(kinds))}
    config = {
        "fitted_on": counts,
        "cross_validation": {"folds": args.folds, "quantile": quantile, "false_alarm_rate_training_films": rate,
                             "false_alarm_rate_augmented_training_films": augmented_rate,
                             "target_false_alarm_rate": args.target_false_alarm_rate},
        "arguments": dataclasses.asdict(args),
        "splits_file": SPLITS_FILE,
    }
    gate = OodGate(parts.density, adult_density, parts.not_frontal, parts.adult, reasons, [str(c) for c in codes],
                   thresholds, probe, config)
    return gate, config


def out_of_fold_adult_scores(kinds, groups, inputs, args: GateArguments) -> np.ndarray:
    """The not-frontal head's scores on the adult films, each from a head fitted without that film's patients."""
    adults = np.flatnonzero(kinds == ADULT)
    if len(adults) < 2 * args.folds:
        return np.zeros(0)
    fold = patient_folds(groups[adults], args.folds, args.seed)
    paediatric = paediatric_rows(kinds)
    scores = np.zeros(len(adults))
    for f in range(args.folds):
        keep = np.ones(len(kinds), dtype=bool)
        keep[adults[fold == f]] = False
        head = fit_not_frontal(kinds[keep], inputs[keep], paediatric[keep], args)
        scores[fold == f] = head.logits(inputs[adults[fold == f]])[:, 0]
    return scores


def cross_validated_distances(points: np.ndarray, groups: np.ndarray, args: GateArguments) -> np.ndarray:
    """Distances of adult films from a density fitted on the other folds' films (honest, not in-sample)."""
    if len(points) < 2 * args.folds:
        return np.zeros(0)
    fold = patient_folds(groups, args.folds, args.seed)
    distances = np.zeros(len(points))
    for f in range(args.folds):
        distances[fold == f] = fit_gaussian(points[fold != f]).distances(points[fold == f])
    return distances


# --- measuring -----------------------------------------------------------------------------------------------

def leave_one_kind_out(classifier: PneumoniaClassifier, described: Described, args: GateArguments) -> dict[str, float]:
    """For each development kind refused: fit the whole gate without it, and the share of its images (with their
    augmented copies) the gate still refuses. The kinds a Space will meet are not all in the folders: this measures
    how far refusal reaches beyond what was fitted, which the held-out part of a folder cannot."""
    kinds, groups, descriptors, features = described.arrays()
    rates = {}
    for kind in sorted(set(kinds)):
        if kind in SYNTHETIC_NOT_XRAYS or kind in FILM_TRANSFORMS or reason_of(kind) is None:
            continue
        keep = kinds != kind
        without = Described(list(kinds[keep]), list(groups[keep]), [descriptors[keep]], [features[keep]])
        gate, _ = fit_gate(classifier, without, args)
        outcomes = gate.judge(descriptors[~keep], features[~keep])
        rates[kind] = round(float(np.mean([outcome.gate == NOT_FRONTAL_CHEST for outcome in outcomes])), 4)
        logger.info("Gate without %s refuses %.1f%% of them.", kind, 100 * rates[kind])
    return rates


def gate_outcomes(classifier: PneumoniaClassifier, images: Sequence[Image.Image], batch_size: int = 32) -> list:
    """What `PneumoniaClassifier.predict` would decide about each image, gate only."""
    return [p for start in range(0, len(images), batch_size) for p in classifier.predict(images[start : start + batch_size])]


def rates(predictions: Sequence) -> dict:
    count = len(predictions)
    share = lambda gate: round(sum(p.gate == gate for p in predictions) / max(count, 1), 4)  # noqa: E731
    return {"images": count, "flagged": round(sum(p.gate != FRONTAL_CHEST for p in predictions) / max(count, 1), 4),
            NOT_FRONTAL_CHEST: share(NOT_FRONTAL_CHEST), OUTSIDE_POPULATION: share(OUTSIDE_POPULATION),
            "reasons": dict(sorted({r: sum(p.gate_reason == r for p in predictions)
                                    for r in {p.gate_reason for p in predictions if p.gate_reason}}.items()))}


def measure_gate(classifier: PneumoniaClassifier, ood_dir: Path, split: dict,
                 answered_films: dict[str, Iterable[Image.Image]]) -> dict:
    """Flag rates on the held-out part of each development folder, and false alarms on each set of paediatric
    films that must be answered (`paediatric_validation`, and `paediatric_batch_holdout` for a batch never seen)."""
    measured = {}
    for kind, files in split["held_out"].items():
        measured[kind] = rates(gate_outcomes(classifier, [classifier.read(ood_dir / name) for name in files]))
    for name, films in answered_films.items():
        predictions, batch = [], []
        for film in films:
            batch.append(film)
            if len(batch) == 64:
                predictions += classifier.predict(batch)
                batch = []
        predictions += classifier.predict(batch) if batch else []
        measured[name] = rates(predictions)
    return measured


# --- the whole job -------------------------------------------------------------------------------------------

def write_gate(classifier: PneumoniaClassifier, model_dir: Path, films: Callable[[], Iterable[tuple[str, Image.Image]]],
               film_count: int, ood_dir: Path, answered_films: dict[str, Callable[[], Iterable[Image.Image]]] | None = None,
               args: GateArguments | None = None) -> dict:
    """Fit the gate on `films` ((patient, image) pairs of the model's training split) and the development folders
    in `ood_dir`, write it into `model_dir`, attach it to `classifier`, and measure it (also its false alarms on
    each set of `answered_films`, never fitted on). Returns the JSON config."""
    args = args or GateArguments()
    model_dir, ood_dir = Path(model_dir), Path(ood_dir)
    started = time.perf_counter()
    split = development_split(ood_dir, args.holdout_fraction, args.seed)
    if not split["fitted"]:
        raise FileNotFoundError(f"{ood_dir} has no development folders (expected ood/<kind>/ and adult_nih/).")
    (model_dir / SPLITS_FILE).write_text(json.dumps(split, indent=2) + "\n")
    logger.info("Gate: describing %d training films (each also augmented) and %d development images (minutes on a CPU)...",
                film_count, sum(len(files) for files in split["fitted"].values()))
    described = describe(classifier, training_items(classifier, films(), film_count, ood_dir, split, args))
    logger.info("Gate inputs described in %.0f s.", time.perf_counter() - started)
    gate, config = fit_gate(classifier, described, args)
    gate.config["unseen_kind_refusal_rate"] = leave_one_kind_out(classifier, described, args)
    classifier.gate = gate
    gate.config["measured"] = measure_gate(classifier, ood_dir, split, {name: make() for name, make in (answered_films or {}).items()})
    gate.config["minutes"] = round((time.perf_counter() - started) / 60, 1)
    gate.save(model_dir)
    logger.info("Wrote %s and %s.", model_dir / GATE_FILE, model_dir / GATE_CONFIG_FILE)
    return gate.config

