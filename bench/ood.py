"""How the gate (chestxray.ood) treats real and generated images, and what it costs per image.

    python bench/ood.py [--model model] [--data ../shared/data] [--per_kind 50] [--timing_runs 300]

- the held-out part of each development folder (listed in the model's `ood_gate_splits.json`, never fitted on):
  lateral chest views, CT slices, hands, knees must get no decision; adult films the population warning;
- the model's paediatric validation split (`splits/validation.csv`), as is and under each acquisition shift of
  `train.shifts`: every flag there is a false alarm;
- generated inputs (seeded): blank, noise, colour photos, documents, screenshots, grey shapes; validation films
  turned sideways or upside down, inverted, or cropped to a detail;
- the cost: the gate's own work per image (descriptor of the image + the gate's arithmetic), batch 1, on a
  2000x1600 JPEG upload and on a 224-px training film, median over --timing_runs.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from chestxray import PneumoniaClassifier, read_image  # noqa: E402
from chestxray.batch import read_split_list  # noqa: E402
from chestxray.ood import image_descriptor, judge_images  # noqa: E402
from train.card import rate_interval  # noqa: E402
from train.gate import FILM_TRANSFORMS, SPLITS_FILE, SYNTHETIC_NOT_XRAYS, as_upload, rates  # noqa: E402
from train.shifts import SHIFTS  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def outcomes(classifier: PneumoniaClassifier, images: list[Image.Image]) -> list:
    return [p for start in range(0, len(images), 32) for p in classifier.predict(images[start : start + 32])]


def row(name: str, predictions: list) -> str:
    r = rates(predictions)
    reasons = ", ".join(f"{code} {count}" for code, count in r["reasons"].items())
    low, high = rate_interval(r["flagged"], r["images"]) or (float("nan"), float("nan"))
    return (f"| {name} | {r['images']} | {r['flagged']:.1%} ({low:.1%}–{high:.1%}) | {r['not_frontal_chest']:.1%} | "
            f"{r['outside_population']:.1%} | {reasons} |")


def gate_cost_ms(classifier: PneumoniaClassifier, image: Image.Image, runs: int) -> float:
    """Median milliseconds of the gate's own work on one image (the network's features are computed anyway)."""
    features = classifier.logits([image], with_features=True)[1].double().numpy()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        descriptor = image_descriptor(image)[None]
        judge_images([image], descriptor, features, classifier.gate, classifier.ood_reference)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def big_upload(film: Image.Image) -> Image.Image:
    """A training film blown up to a 2000x1600 JPEG and read back as the app reads uploads."""
    buffer = io.BytesIO()
    film.resize((2000, 1600), Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=90)
    return read_image(buffer.getvalue(), name="big.jpeg", min_side=2 * 192)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "model"))
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--per_kind", type=int, default=50)
    parser.add_argument("--timing_runs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    classifier = PneumoniaClassifier.from_pretrained(args.model)
    model, data = Path(args.model), Path(args.data)
    print(f"model {args.model}: {'learned gate' if classifier.gate else 'no learned gate (feature reference and rules)'}\n")
    print("| input | images | flagged (95 % Wilson interval) | no decision | population warning | reasons |\n"
          "|---|---|---|---|---|---|")
    started = time.perf_counter()
    split_file = model / SPLITS_FILE
    if split_file.is_file() and data.is_dir():
        for kind, files in json.loads(split_file.read_text())["held_out"].items():
            print(row(f"held out: {kind}", outcomes(classifier, [classifier.read(data / f) for f in files])), flush=True)
    validation = []
    validation_file = model / "splits" / "validation.csv"
    if validation_file.is_file() and (data / "chest_xray" / "train").is_dir():
        rows = read_split_list(validation_file).items()
        validation = [classifier.read(data / "chest_xray" / "train" / label / name) for name, label in rows]
        for name, shift in SHIFTS.items():
            label = "paediatric validation" + ("" if name == "none" else f", {name}")
            print(row(label, outcomes(classifier, [shift(image) for image in validation])), flush=True)
    rng = np.random.default_rng(args.seed)
    for kind, (make, _) in SYNTHETIC_NOT_XRAYS.items():
        print(row(f"generated: {kind}", outcomes(classifier, [as_upload(make(rng)) for _ in range(args.per_kind)])), flush=True)
    if validation:
        picks = rng.choice(len(validation), size=min(args.per_kind, len(validation)), replace=False)
        for kind, transform in FILM_TRANSFORMS.items():
            print(row(f"validation film: {kind}", outcomes(classifier, [transform(validation[i], rng) for i in picks])), flush=True)
    print(f"\n({time.perf_counter() - started:.0f} s)")
    film = validation[0] if validation else as_upload(SYNTHETIC_NOT_XRAYS["grey_shapes"][0](rng))
    for name, image in (("2000x1600 JPEG upload", big_upload(film)), (f"{film.width}x{film.height} film", film)):
        print(f"gate cost per image, {name} (read at {image.width}x{image.height}): "
              f"{gate_cost_ms(classifier, image, args.timing_runs):.2f} ms (median of {args.timing_runs}, batch 1)")


if __name__ == "__main__":
    main()
