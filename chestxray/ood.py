"""'This does not look like a frontal chest X-ray': flag inputs the model was never meant to see.

Two independent signals. The image itself: blank, in colour, or mostly white like a document or a
screenshot. The model's view of it: the Mahalanobis distance of its pooled features from those of the
training X-rays, against a threshold set above every real radiograph seen at training time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

REFERENCE_FILE = "ood_reference.safetensors"
NOT_AN_XRAY = "This does not look like a frontal chest X-ray"
MIN_GREY_STD = 4.0  # grey levels: below this the image is practically uniform
MAX_COLOURFULNESS = 12.0  # Hasler & Süsstrunk (2003); grey-scale renders score ~0, photos 30+
MAX_WHITE_FRACTION = 0.55  # radiographs are mostly mid-grey and dark; documents mostly paper-white
# Mean neighbour difference / contrast on a 128-px thumbnail: radiographs are smooth (max 0.25 over
# all 5,216 Kermany training images), noise is not (~1.0).
MAX_ROUGHNESS = 0.5


@dataclass
class OodReference:
    mean: torch.Tensor
    precision: torch.Tensor
    threshold: float

    def distances(self, features: torch.Tensor) -> np.ndarray:
        centred = features.double() - self.mean
        return torch.sqrt(torch.einsum("nd,de,ne->n", centred, self.precision, centred).clamp_min(0)).numpy()

    def save(self, folder: Path) -> None:
        save_file({"mean": self.mean.contiguous(), "precision": self.precision.contiguous(),
                   "threshold": torch.tensor([self.threshold], dtype=torch.float64)}, str(Path(folder) / REFERENCE_FILE))

    @classmethod
    def load(cls, folder: Path) -> "OodReference | None":
        path = Path(folder) / REFERENCE_FILE
        if not path.is_file():
            return None
        tensors = load_file(str(path))
        return cls(tensors["mean"].double(), tensors["precision"].double(), float(tensors["threshold"][0]))


def colourfulness(image: Image.Image) -> float:
    """Hasler-Süsstrunk colourfulness on a thumbnail (cheap on huge uploads)."""
    small = image.convert("RGB")
    small.thumbnail((96, 96))
    r, g, b = (np.asarray(small, dtype=float)[..., i] for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def image_reasons(image: Image.Image) -> list[str]:
    """Plain checks on the grey image (and the colourfulness recorded when it was read)."""
    small = image.convert("L")
    small.thumbnail((128, 128))
    pixels = np.asarray(small, dtype=float)
    reasons = []
    if pixels.std() < MIN_GREY_STD:
        reasons.append("the image is blank (almost uniform)")
    if image.info.get("colourfulness", 0.0) > MAX_COLOURFULNESS:
        reasons.append("the image is in colour")
    if (pixels > 235).mean() > MAX_WHITE_FRACTION:
        reasons.append("the image is mostly white, like a document or a screenshot")
    if pixels.std() >= MIN_GREY_STD and np.abs(np.diff(pixels, axis=1)).mean() / pixels.std() > MAX_ROUGHNESS:
        reasons.append("the image is noise-like, without the smooth structure of a radiograph")
    return reasons


def ood_warning(image: Image.Image, distance: float | None, reference: OodReference | None) -> str | None:
    reasons = image_reasons(image)
    if reference is not None and distance is not None and distance > reference.threshold:
        reasons.append("its features are unlike the training X-rays")
    return f"{NOT_AN_XRAY}: {'; '.join(reasons)}." if reasons else None
