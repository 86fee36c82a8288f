"""The saved image processor's arithmetic in PIL and numpy: squash-resize, rescale, normalise.

Reading `preprocessor_config.json` directly spares the app the seconds it takes to import transformers
before it can answer; the tests check that it gives the same pixel values as transformers' processor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

PROCESSOR_FILE = "preprocessor_config.json"


@dataclass(frozen=True)
class Preprocessing:
    height: int
    width: int
    resample: int = Image.Resampling.BILINEAR
    do_resize: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)

    @classmethod
    def from_dict(cls, config: dict) -> "Preprocessing":
        size = config.get("size") or {}
        if not (size.get("height") and size.get("width")):
            raise ValueError(f"expected a squash resize (size with height and width), found size={size}")
        return cls(
            height=int(size["height"]), width=int(size["width"]), resample=int(config.get("resample", Image.Resampling.BILINEAR)),
            do_resize=bool(config.get("do_resize", True)), do_rescale=bool(config.get("do_rescale", True)),
            rescale_factor=float(config.get("rescale_factor", 1 / 255)), do_normalize=bool(config.get("do_normalize", True)),
            image_mean=tuple(config.get("image_mean", cls.image_mean)), image_std=tuple(config.get("image_std", cls.image_std)))

    @classmethod
    def from_folder(cls, folder: str | Path) -> "Preprocessing":
        return cls.from_dict(json.loads((Path(folder) / PROCESSOR_FILE).read_text()))

    @classmethod
    def from_processor(cls, processor) -> "Preprocessing":
        """From a loaded transformers image processor (training, benchmarks)."""
        return cls.from_dict(processor.to_dict())

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(N, 3, H, W) float32 pixel values from grey or RGB images."""
        arrays = [self._one(image) for image in images]
        return torch.from_numpy(np.stack(arrays)) if arrays else torch.zeros(0, 3, self.height, self.width)

    def _one(self, image: Image.Image) -> np.ndarray:
        image = image if image.mode in ("L", "RGB") else image.convert("RGB")
        if self.do_resize and image.size != (self.width, self.height):
            image = image.resize((self.width, self.height), Image.Resampling(self.resample))
        pixels = np.asarray(image, dtype=np.float32)
        pixels = np.repeat(pixels[None], 3, axis=0) if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # grey -> 3 equal channels
        if self.do_rescale:
            pixels = pixels * np.float32(self.rescale_factor)
        if self.do_normalize:
            mean = np.asarray(self.image_mean, dtype=np.float32)[:, None, None]
            std = np.asarray(self.image_std, dtype=np.float32)[:, None, None]
            pixels = (pixels - mean) / std
        return np.ascontiguousarray(pixels, dtype=np.float32)
