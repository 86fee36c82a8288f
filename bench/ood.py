"""How often the "does not look like a frontal chest X-ray" warning fires, on real X-rays and on things that are not.

    python bench/ood.py [--model model] [--xrays ../shared/data/chest_xray/train] [--per_kind 50]

Real X-rays: every image in --xrays (the rate must be ~0). Non-X-rays are generated, seeded: blank
images, noise, colour photo-like scenes, text documents, UI screenshots, grey shapes; plus transformed
X-rays (inverted, rotated 90°) reported separately, as they are radiographs in a wrong presentation.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from chestxray import PneumoniaClassifier, read_image  # noqa: E402
from chestxray.batch import expand_paths  # noqa: E402


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


NOT_XRAYS = {"blank": blank, "noise": noise, "colour photo": photo, "document": document,
             "screenshot": screenshot, "grey shapes": grey_shapes}


def flag_rate(classifier: PneumoniaClassifier, images: list[Image.Image]) -> float:
    predictions = [p for start in range(0, len(images), 32) for p in classifier.predict(images[start : start + 32])]
    return float(np.mean([p.warning is not None for p in predictions]))


def as_upload(image: Image.Image) -> Image.Image:
    """Through PNG bytes and the real reader, as an upload would arrive."""
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return read_image(buffer.getvalue(), name="generated.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(Path(__file__).resolve().parent.parent / "model"))
    parser.add_argument("--xrays", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "chest_xray" / "train"))
    parser.add_argument("--per_kind", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    classifier = PneumoniaClassifier.from_pretrained(args.model)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    rows = []
    files = expand_paths([args.xrays]) if Path(args.xrays).is_dir() else []
    if files:
        xrays = [read_image(f) for f in files]
        rows.append(("real X-rays (should not fire)", len(xrays), flag_rate(classifier, xrays)))
        picks = rng.choice(len(xrays), size=min(args.per_kind, len(xrays)), replace=False)
        rows.append(("X-ray, inverted", len(picks), flag_rate(classifier, [ImageOps.invert(xrays[i]) for i in picks])))
        rows.append(("X-ray, rotated 90°", len(picks), flag_rate(classifier, [xrays[i].rotate(90, expand=True) for i in picks])))
    for kind, make in NOT_XRAYS.items():
        images = [as_upload(make(rng)) for _ in range(args.per_kind)]
        rows.append((f"{kind} (should fire)", len(images), flag_rate(classifier, images)))
    print(f"| input | images | warning rate |\n|---|---|---|")
    for name, count, rate in rows:
        print(f"| {name} | {count} | {rate:.1%} |")
    print(f"\n({time.perf_counter() - started:.0f} s, model {args.model})")


if __name__ == "__main__":
    main()
