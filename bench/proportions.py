"""Does a film's shape carry its label, and would undoing the shape at serving time remove the shape shortcut?

    python bench/proportions.py [--model model] [--estimator outputs/proportions/estimator.safetensors] [--epochs 20]

This copy of the data was squashed to 224 x 224 from originals of differing shape, so a child's anatomy shows the
original film's aspect ratio; cutting 10 % off the top and bottom of a film makes it 1.25 times taller again, and
the bundled model reads that as pneumonia (`bench/framing.py`). To see that stretch without looking at any label, a
small CNN (the proportion estimator) learns, on the training films only, to predict a synthetic stretch: a random
window of each film, narrower or shorter by up to a factor e^0.45, squashed back to a square. It takes every film as
filmed for unstretched, so what it calls a film's shape is that film against the hospital's typical proportions.

Then, on the model's validation films: the estimate on films as filmed (by class and NORMAL batch: does the shape
alone separate the classes?), the estimate under each of `bench/framing.py`'s cuts (does it see them?), and the
model's ROC-AUC, sensitivity and specificity at its stored threshold with each cut, as served today and after
canonicalising the shape (squeeze the film by the estimated stretch, pad it back to a square with black), with no
dead zone and with one: only the part of the estimate beyond `--dead_zone` is undone, so films of this hospital's
usual shapes are left alone. The estimator is trained once (about 4 minutes on 2 cores) and kept at `--estimator`.

To train as well as serve canonicalised films (one code path for both, without touching the pipeline):

    python bench/proportions.py --write_canonical_copy DIR        # DIR/train/{NORMAL,PNEUMONIA}, same names
    python -m train ... --data_dir DIR --output_dir CANONICAL    # and the same command as filmed: PLAIN
    python bench/proportions.py --compare PLAIN CANONICAL         # each served its own way, under the cuts
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.framing import FRAMINGS  # noqa: E402
from bench.margins import logit_margin  # noqa: E402
from chestxray import PneumoniaClassifier  # noqa: E402
from train.augment import crop_sides  # noqa: E402
from train.data import normal_batch  # noqa: E402

FILM_SIDE = 224  # the films' stored size
INPUT_SIDE = 128  # what the estimator sees
MAX_LOG_STRETCH = 0.45


class ProportionEstimator(nn.Module):
    """Grey square in, log(height stretch / width stretch) of the anatomy out (> 0: the anatomy looks taller)."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 96, 128)):
        super().__init__()
        layers, channels = [], 1
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                       nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, 1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head(self.features((pixels - 0.5) / 0.25).mean(dim=(2, 3))).squeeze(1)


def stretched_windows(films: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of (N, 1, 224, 224) films in [0, 1], squashed to INPUT_SIDE squares, and their log stretch.

    A window of width w and height h (shares of the film) squashed to a square stretches the anatomy by 1/w across
    and 1/h down: log stretch = log(w / h). Only crops, so no added border tells the estimator the answer."""
    n = films.shape[0]
    log_stretch = (torch.rand(n, generator=generator) * 2 - 1) * MAX_LOG_STRETCH
    zoom = 0.8 + 0.2 * torch.rand(n, generator=generator)
    width = zoom * torch.clamp(torch.exp(log_stretch), max=1.0)
    height = zoom * torch.clamp(torch.exp(-log_stretch), max=1.0)
    centre_x = (1 - width) * (torch.rand(n, generator=generator) * 2 - 1)
    centre_y = (1 - height) * (torch.rand(n, generator=generator) * 2 - 1)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = width, centre_x, height, centre_y
    flip = torch.rand(n, generator=generator) < 0.5
    theta[flip, 0, 0] *= -1
    grid = F.affine_grid(theta, (n, 1, INPUT_SIDE, INPUT_SIDE), align_corners=False)
    windows = F.grid_sample(films, grid, mode="bilinear", align_corners=False)
    gamma = torch.exp((torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * 0.4)  # exposure shouldn't matter
    return windows.clamp(0, 1) ** gamma, log_stretch


def grey_squares(images: list[Image.Image]) -> torch.Tensor:
    """(N, 1, INPUT_SIDE, INPUT_SIDE) in [0, 1]: each image squashed to a square, as the classifier squashes it."""
    arrays = [np.asarray(image.convert("L").resize((INPUT_SIDE, INPUT_SIDE), Image.Resampling.BILINEAR)) for image in images]
    return torch.from_numpy(np.stack(arrays)).float().div(255).unsqueeze(1)


@torch.no_grad()
def estimate(estimator: ProportionEstimator, images: list[Image.Image], batch_size: int = 128) -> np.ndarray:
    estimator.eval()
    return np.concatenate([estimator(grey_squares(images[i:i + batch_size])).numpy()
                           for i in range(0, len(images), batch_size)])


def train_estimator(films: torch.Tensor, epochs: int, seed: int = 0, batch_size: int = 64) -> ProportionEstimator:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    estimator = ProportionEstimator()
    optimiser = torch.optim.AdamW(estimator.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * math.ceil(len(films) / batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    for epoch in range(epochs):
        started, losses = time.perf_counter(), []
        estimator.train()
        for batch in torch.randperm(len(films), generator=generator).split(batch_size):
            windows, target = stretched_windows(films[batch].float().div(255), generator)
            loss = F.smooth_l1_loss(estimator(windows), target, beta=0.1)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(loss.item())
        print(f"estimator epoch {epoch + 1}/{epochs}: loss {np.mean(losses):.4f} ({time.perf_counter() - started:.0f} s)", flush=True)
    return estimator


def canonicalise(image: Image.Image, log_stretch: float, dead_zone: float = 0.0) -> Image.Image:
    """Undo the estimated stretch beyond `dead_zone`: squeeze the squashed film, then pad it back to a square."""
    excess = math.copysign(max(0.0, abs(log_stretch) - dead_zone), log_stretch)
    if excess == 0.0:
        return image
    side = max(image.size)
    square = image.resize((side, side), Image.Resampling.BILINEAR)
    size = (side, round(side * math.exp(-excess))) if excess > 0 else (round(side * math.exp(excess)), side)
    canvas = Image.new(square.mode, (side, side), 0)
    canvas.paste(square.resize(size, Image.Resampling.BILINEAR), ((side - size[0]) // 2, (side - size[1]) // 2))
    return canvas


def split_images(data_dir: Path, split_csv: Path) -> tuple[list[Path], np.ndarray]:
    with open(split_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return ([data_dir / row["label"] / row["file"] for row in rows],
            np.array([row["label"] == "PNEUMONIA" for row in rows], dtype=int))


def load_films(images: list[Image.Image]) -> torch.Tensor:
    """(N, 1, FILM_SIDE, FILM_SIDE) uint8: what the synthetic windows are cut from."""
    return torch.from_numpy(np.stack([np.asarray(image.convert("L").resize((FILM_SIDE, FILM_SIDE))) for image in images])).unsqueeze(1)


def operating_figures(classifier: PneumoniaClassifier, images: list[Image.Image], labels: np.ndarray) -> str:
    probability = classifier.calibrated_probabilities(classifier.logits(images, batch_size=32))
    called = probability >= classifier.threshold
    return (f"{roc_auc_score(labels, probability):.4f} | {called[labels == 1].mean():.3f} | "
            f"{(~called[labels == 0]).mean():.3f}")


def write_canonical_copy(estimator: ProportionEstimator, data_dir: Path, target: Path, batch_size: int = 256) -> None:
    """Every film of an image folder canonicalised, under the same class folders and names (so the same split)."""
    for class_dir in sorted(path for path in data_dir.iterdir() if path.is_dir()):
        (target / class_dir.name).mkdir(parents=True, exist_ok=True)
        files = sorted(class_dir.glob("*.jpeg"))
        for start in range(0, len(files), batch_size):
            chunk = files[start:start + batch_size]
            images = [Image.open(path).convert("L") for path in chunk]
            for path, image, stretch in zip(chunk, images, estimate(estimator, images)):
                canonicalise(image, float(stretch)).save(target / class_dir.name / path.name, quality=95)
    print(f"canonical copy of {data_dir} written to {target}")


COMPARED_CUTS = ("every side (a zoom, shape kept)", "left and top (shape kept)", "top and bottom (wider)",
                 "left and right (narrower)")


def compare(estimator: ProportionEstimator, plain_dir: Path, canonical_dir: Path, data_dir: Path, splits: list[str]) -> None:
    """A model trained on the films as filmed against one trained on their canonical copy, each served its own way,
    on the plain model's split files (the same films for both: the canonical copy keeps every name)."""
    served = {"as filmed": PneumoniaClassifier.from_pretrained(plain_dir),
              "canonicalised": PneumoniaClassifier.from_pretrained(canonical_dir)}
    for split in splits:
        split_file = plain_dir / "splits" / f"{split}.csv"
        if not split_file.is_file():
            continue
        paths, labels = split_images(data_dir, split_file)
        images = [Image.open(path).convert("L") for path in paths]
        print(f"\n{split}: {np.sum(labels == 0)} NORMAL, {np.sum(labels == 1)} PNEUMONIA; ROC-AUC | sensitivity | "
              f"specificity at each model's stored threshold ({plain_dir}: {served['as filmed'].threshold:.3f}, "
              f"{canonical_dir}: {served['canonicalised'].threshold:.3f})\n")
        print("| cut 10 % off | trained and served as filmed | trained and served canonicalised |\n|---|---|---|")
        for name in ("nothing", *COMPARED_CUTS):
            cut = images if name == "nothing" else [crop_sides(image, *FRAMINGS[name]) for image in images]
            canonical = [canonicalise(image, s) for image, s in zip(cut, estimate(estimator, cut))]
            print(f"| {name} | {operating_figures(served['as filmed'], cut, labels)} "
                  f"| {operating_figures(served['canonicalised'], canonical, labels)} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(REPO / "model"))
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "chest_xray" / "train"))
    parser.add_argument("--estimator", default=str(REPO / "outputs" / "proportions" / "estimator.safetensors"))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--dead_zone", type=float, default=0.1)
    parser.add_argument("--skip_model", action="store_true", help="only train and describe the estimator")
    parser.add_argument("--write_canonical_copy", metavar="DIR", help="write the data folder canonicalised to DIR, then stop")
    parser.add_argument("--compare", nargs=2, metavar=("PLAIN_MODEL", "CANONICAL_MODEL"),
                        help="compare a model trained as filmed with one trained on the canonical copy, then stop")
    parser.add_argument("--splits", nargs="+", default=["validation", "batch_holdout"])
    args = parser.parse_args()
    torch.set_num_threads(2)
    model_dir, data_dir, estimator_file = Path(args.model), Path(args.data_dir), Path(args.estimator)

    estimator = ProportionEstimator()
    if estimator_file.is_file():
        estimator.load_state_dict(load_file(estimator_file))
    else:
        train_paths, _ = split_images(data_dir, model_dir / "splits" / "train.csv")
        estimator = train_estimator(load_films([Image.open(path) for path in train_paths]), args.epochs)
        estimator_file.parent.mkdir(parents=True, exist_ok=True)
        save_file(estimator.state_dict(), estimator_file)
    if args.write_canonical_copy:
        return write_canonical_copy(estimator, data_dir, Path(args.write_canonical_copy) / data_dir.name)
    if args.compare:
        return compare(estimator, Path(args.compare[0]), Path(args.compare[1]), data_dir, args.splits)

    paths, labels = split_images(data_dir, model_dir / "splits" / "validation.csv")
    images = [Image.open(path).convert("L") for path in paths]
    windows, target = stretched_windows(load_films(images).float().div(255), torch.Generator().manual_seed(1))
    with torch.no_grad():
        estimator.eval()
        predicted = estimator(windows).numpy()
    target = target.numpy()
    print(f"\nvalidation, synthetic stretches (|log| ≤ {MAX_LOG_STRETCH}): RMSE {np.sqrt(np.mean((predicted - target) ** 2)):.3f}, "
          f"correlation {np.corrcoef(predicted, target)[0, 1]:.3f}")

    native = estimate(estimator, images)
    batch = np.array([normal_batch(path.name) if label == 0 else ("virus" if "virus" in path.name else "bacteria")
                      for path, label in zip(paths, labels)])
    print("\n| films as filmed | count | estimated log stretch: mean (sd) |\n|---|---|---|")
    for name in ("IM", "NORMAL2", "bacteria", "virus"):
        print(f"| {name} | {np.sum(batch == name)} | {native[batch == name].mean():+.3f} ({native[batch == name].std():.3f}) |")
    print(f"\nROC-AUC of the estimate alone for PNEUMONIA (taller = PNEUMONIA): {roc_auc_score(labels, native):.3f}; "
          f"for NORMAL2 against IM among NORMAL: {roc_auc_score(batch[labels == 0] == 'NORMAL2', native[labels == 0]):.3f}")

    print("\n| cut 10 % off | true log stretch | mean estimate change |\n|---|---|---|")
    cuts = {name: [crop_sides(image, *sides) for image in images] for name, sides in FRAMINGS.items()}
    stretches = {"nothing": native, **{name: estimate(estimator, cut) for name, cut in cuts.items()}}
    cuts = {"nothing": images, **cuts}
    for name, (left, top, right, bottom) in FRAMINGS.items():
        truth = math.log((1 - left - right) / (1 - top - bottom))
        print(f"| {name} | {truth:+.3f} | {np.mean(stretches[name] - native):+.3f} |")
    if args.skip_model:
        return

    classifier = PneumoniaClassifier.from_pretrained(model_dir)
    logits = classifier.logits(images, batch_size=32)
    margin, probability = logit_margin(classifier, logits), classifier.calibrated_probabilities(logits)
    print(f"\n{model_dir} on the films as filmed: Spearman(estimated stretch, logit margin) among NORMAL "
          f"{spearmanr(native[labels == 0], margin[labels == 0])[0]:+.3f}, among PNEUMONIA "
          f"{spearmanr(native[labels == 1], margin[labels == 1])[0]:+.3f}")
    normal_native = native[labels == 0]
    for name, rows in zip(("shortest", "middle", "tallest"), np.array_split(np.argsort(normal_native), 3)):
        print(f"  NORMAL films, {name} third of estimated stretch ({normal_native[rows].min():+.3f} to "
              f"{normal_native[rows].max():+.3f}): specificity {np.mean(probability[labels == 0][rows] < classifier.threshold):.3f}")
    print(f"\n{model_dir}: ROC-AUC | sensitivity | specificity at the stored threshold {classifier.threshold:.3f}\n")
    print(f"| cut 10 % off | as served | canonicalised | canonicalised beyond ±{args.dead_zone} |\n|---|---|---|---|")
    for name, cut in cuts.items():
        stretch = stretches[name]
        full = [canonicalise(image, s) for image, s in zip(cut, stretch)]
        beyond = [canonicalise(image, s, args.dead_zone) for image, s in zip(cut, stretch)]
        print(f"| {name} | {operating_figures(classifier, cut, labels)} | {operating_figures(classifier, full, labels)} "
              f"| {operating_figures(classifier, beyond, labels)} |", flush=True)


if __name__ == "__main__":
    main()
