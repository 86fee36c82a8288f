"""Augmentations for radiographs in plain PIL/numpy (there is no torchvision here).

Ranges are small: X-rays are acquired upright and centred, so strong geometry would teach the
model images it never sees, while exposure, contrast, blur and noise vary a lot between machines.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter


@dataclass(frozen=True)
class XRayAugmentation:
    strength: float = 1.0
    horizontal_flip: bool = False
    max_rotation_degrees: float = 10.0
    max_scale_change: float = 0.10
    max_translation: float = 0.06
    max_brightness_change: float = 0.20
    max_contrast_change: float = 0.25
    max_gamma_change: float = 0.25
    blur_probability: float = 0.2
    max_blur_radius: float = 1.2
    noise_probability: float = 0.2
    max_noise_std: float = 8.0

    @classmethod
    def from_data_arguments(cls, data_args) -> "XRayAugmentation":
        """The recipe's augmentation from `DataArguments`: training and its benchmark use the same one."""
        return cls(strength=data_args.augmentation_strength, horizontal_flip=data_args.horizontal_flip,
                   max_scale_change=data_args.max_scale_change)

    def __call__(self, image: Image.Image, rng: random.Random) -> Image.Image:
        """Augment one grey ("L") image; `rng` makes runs reproducible per worker."""
        if self.strength <= 0:
            return image
        s = self.strength
        if self.horizontal_flip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image = self._affine(image, rng, s)
        image = ImageEnhance.Brightness(image).enhance(1 + rng.uniform(-1, 1) * self.max_brightness_change * s)
        image = ImageEnhance.Contrast(image).enhance(1 + rng.uniform(-1, 1) * self.max_contrast_change * s)
        image = adjust_gamma(image, math.exp(rng.uniform(-1, 1) * self.max_gamma_change * s))
        if rng.random() < self.blur_probability * s:
            image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, self.max_blur_radius)))
        if rng.random() < self.noise_probability * s:
            image = add_gaussian_noise(image, rng.uniform(1.0, self.max_noise_std), rng)
        return image

    def _affine(self, image: Image.Image, rng: random.Random, s: float) -> Image.Image:
        width, height = image.size
        angle = math.radians(rng.uniform(-1, 1) * self.max_rotation_degrees * s)
        scale = 1 + rng.uniform(-1, 1) * self.max_scale_change * s
        shift_x = rng.uniform(-1, 1) * self.max_translation * s * width
        shift_y = rng.uniform(-1, 1) * self.max_translation * s * height
        # PIL wants the inverse map (output -> input) about the image centre.
        cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
        cx, cy = width / 2, height / 2
        a, b = cos, sin
        d, e = -sin, cos
        c = cx - a * (cx + shift_x) - b * (cy + shift_y)
        f = cy - d * (cx + shift_x) - e * (cy + shift_y)
        return image.transform(image.size, Image.Transform.AFFINE, (a, b, c, d, e, f), Image.Resampling.BILINEAR)


def adjust_gamma(image: Image.Image, gamma: float) -> Image.Image:
    table = [round(255 * (i / 255) ** gamma) for i in range(256)]
    return image.point(table)


def add_gaussian_noise(image: Image.Image, std: float, rng: random.Random) -> Image.Image:
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, std, (image.height, image.width))
    pixels = np.asarray(image, dtype=np.float32) + noise
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L")
