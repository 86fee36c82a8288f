"""Augmentations for radiographs in plain PIL/numpy (there is no torchvision here).

Ranges are small: X-rays are acquired upright and centred, so strong geometry would teach the
model images it never sees, while exposure, contrast, blur and noise vary a lot between machines.

The margins are the exception. A model trained on one hospital's framing read disease from the image borders
(with the central 80 % greyed out it still separated the classes, AUC 0.80): collimation, black borders,
padding and the exposure of the edges differ by machine and say nothing about the lungs. The margin
augmentation randomises exactly those, so that the borders stop carrying the label. Randomising them still
leaves the shoulders, arms and background of the child's own film in place, and the label-to-margin link with
them; the margin swap cuts that link: an image keeps its label and takes the margins of another image of the
batch, drawn regardless of class (an option, not in the bundled recipe: it did not move the margin-only probe
beyond the noise between runs, docs/experiments.md).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

MARGIN_OPERATIONS = ("crop", "pad", "bars", "edge_exposure")


@dataclass(frozen=True)
class XRayAugmentation:
    strength: float = 1.0
    horizontal_flip: bool = False
    max_rotation_degrees: float = 10.0
    max_scale_change: float = 0.10
    max_aspect_change: float = 0.0
    max_translation: float = 0.06
    max_brightness_change: float = 0.20
    max_contrast_change: float = 0.25
    max_gamma_change: float = 0.25
    blur_probability: float = 0.2
    max_blur_radius: float = 1.2
    noise_probability: float = 0.2
    max_noise_std: float = 8.0
    margin_probability: float = 0.0
    max_margin_fraction: float = 0.15
    max_edge_gain_change: float = 0.4
    margin_swap_probability: float = 0.0
    normal_crop_probability: float = 0.0

    @classmethod
    def from_data_arguments(cls, data_args) -> "XRayAugmentation":
        """The recipe's augmentation from `DataArguments`: training and its benchmark use the same one."""
        return cls(strength=data_args.augmentation_strength, horizontal_flip=data_args.horizontal_flip,
                   max_scale_change=data_args.max_scale_change, max_aspect_change=data_args.max_aspect_change,
                   margin_probability=data_args.margin_augmentation,
                   max_margin_fraction=data_args.max_margin_fraction,
                   margin_swap_probability=data_args.margin_swap,
                   normal_crop_probability=data_args.normal_crop)

    def __call__(self, image: Image.Image, rng: random.Random) -> Image.Image:
        """Augment one grey ("L") image; `rng` makes runs reproducible per worker."""
        if self.strength <= 0:
            return image
        s = self.strength
        if self.horizontal_flip and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image = self._affine(image, rng, s)
        if rng.random() < self.margin_probability:
            image = self.randomise_margins(image, rng, s)
        image = ImageEnhance.Brightness(image).enhance(1 + rng.uniform(-1, 1) * self.max_brightness_change * s)
        image = ImageEnhance.Contrast(image).enhance(1 + rng.uniform(-1, 1) * self.max_contrast_change * s)
        image = adjust_gamma(image, math.exp(rng.uniform(-1, 1) * self.max_gamma_change * s))
        if rng.random() < self.blur_probability * s:
            image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, self.max_blur_radius)))
        if rng.random() < self.noise_probability * s:
            image = add_gaussian_noise(image, rng.uniform(1.0, self.max_noise_std), rng)
        return image

    def randomise_margins(self, image: Image.Image, rng: random.Random, s: float = 1.0) -> Image.Image:
        """One of: a crop into the margins, an added border, black/white bars over the edges, a change of the
        edges' exposure; each side drawn independently, up to `max_margin_fraction` (times the strength) of it."""
        limit = self.max_margin_fraction * s
        sides = [rng.uniform(0, limit) for _ in range(4)]  # left, top, right, bottom
        operation = rng.choice(MARGIN_OPERATIONS)
        if operation == "crop":
            return crop_sides(image, *sides)
        fill = rng.choice([0, 255, rng.randint(0, 255)])
        if operation == "pad":
            return pad_sides(image, *sides, fill=fill)
        if operation == "bars":
            kept = [side if rng.random() < 0.5 else 0.0 for side in sides]
            return add_bars(image, *(kept if any(kept) else sides), fill=fill)
        gain = 1 + rng.uniform(-1, 1) * self.max_edge_gain_change * s
        return edge_exposure(image, gain, max(limit, 0.02))

    def reframe_normal(self, image: Image.Image, label: int, rng: random.Random) -> Image.Image:
        """A NORMAL film (label 0), with `normal_crop_probability`, cropped tighter and brought back to its size.
        Zooming both classes at random leaves PNEUMONIA films tighter on average; only tighter NORMAL films say
        that a tight framing is no sign of disease."""
        # Off, it draws nothing: the recipe's random stream (and so its reproduced runs) stays as it was.
        if label != 0 or self.normal_crop_probability <= 0 or rng.random() >= self.normal_crop_probability:
            return image
        sides = [rng.uniform(0, self.max_margin_fraction) for _ in range(4)]
        return crop_sides(image, *sides).resize(image.size, Image.Resampling.BILINEAR)

    def swap_margins(self, images: list[Image.Image], rng: random.Random) -> list[Image.Image]:
        """A batch's images, each with `margin_swap_probability` given the margins (a band of each side, up to
        `max_margin_fraction`, drawn per side) of another image of the batch; labels stay with the centres."""
        if self.margin_swap_probability <= 0 or len(images) < 2:
            return images
        swapped = []
        for index, image in enumerate(images):
            if rng.random() >= self.margin_swap_probability:
                swapped.append(image)
                continue
            donor = images[rng.choice([i for i in range(len(images)) if i != index])]
            sides = [rng.uniform(0.03, max(0.03, self.max_margin_fraction)) for _ in range(4)]
            swapped.append(paste_margins(image, donor, *sides))
        return swapped

    def _affine(self, image: Image.Image, rng: random.Random, s: float) -> Image.Image:
        width, height = image.size
        angle = math.radians(rng.uniform(-1, 1) * self.max_rotation_degrees * s)
        scale = 1 + rng.uniform(-1, 1) * self.max_scale_change * s
        shift_x = rng.uniform(-1, 1) * self.max_translation * s * width
        shift_y = rng.uniform(-1, 1) * self.max_translation * s * height
        # Width over height changes by `aspect`; drawn only when asked, so the recipe's random stream stays as it was.
        aspect = math.exp(rng.uniform(-1, 1) * math.log1p(self.max_aspect_change * s)) if self.max_aspect_change > 0 else 1.0
        scale_x, scale_y = scale * math.sqrt(aspect), scale / math.sqrt(aspect)
        # PIL wants the inverse map (output -> input) about the image centre: (R S)^-1 = S^-1 R^-1.
        cos, sin = math.cos(angle), math.sin(angle)
        cx, cy = width / 2, height / 2
        a, b = cos / scale_x, sin / scale_x
        d, e = -sin / scale_y, cos / scale_y
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


def grey_ink(image: Image.Image, level: int) -> int | tuple[int, ...]:
    """A grey level as PIL wants it for this image's mode (an int alone would paint RGB images red)."""
    return level if len(image.getbands()) == 1 else (level,) * len(image.getbands())


def crop_sides(image: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    """Cut the given fractions off each side (a tighter, off-centre collimation); the size shrinks."""
    w, h = image.size
    return image.crop((round(w * left), round(h * top), w - round(w * right), h - round(h * bottom)))


def pad_sides(image: Image.Image, left: float, top: float, right: float, bottom: float, fill: int = 0) -> Image.Image:
    """Add a border of `fill` of the given fractions on each side (a wider field, a scanner's frame), then
    squash back to the original size, as the processor would."""
    w, h = image.size
    pads = (round(w * left), round(h * top), round(w * right), round(h * bottom))
    canvas = Image.new(image.mode, (w + pads[0] + pads[2], h + pads[1] + pads[3]), grey_ink(image, fill))
    canvas.paste(image, pads[:2])
    return canvas.resize((w, h), Image.Resampling.BILINEAR)


def add_bars(image: Image.Image, left: float, top: float, right: float, bottom: float, fill: int = 0) -> Image.Image:
    """Paint bars of `fill` over the given fractions of each side (collimator blades, burnt-in borders)."""
    w, h = image.size
    image = image.copy()
    draw = ImageDraw.Draw(image)
    for box in ((0, 0, round(w * left), h), (0, 0, w, round(h * top)),
                (w - round(w * right), 0, w, h), (0, h - round(h * bottom), w, h)):
        if box[2] > box[0] and box[3] > box[1]:
            draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=grey_ink(image, fill))
    return image


def paste_margins(image: Image.Image, donor: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    """`image`'s centre inside `donor`'s margins (the given fractions of each side; donor resized to fit)."""
    w, h = image.size
    framed = donor.convert(image.mode).resize((w, h), Image.Resampling.BILINEAR)
    box = (round(w * left), round(h * top), w - round(w * right), h - round(h * bottom))
    if box[2] > box[0] and box[3] > box[1]:
        framed.paste(image.crop(box), box[:2])
    return framed


def edge_exposure(image: Image.Image, gain: float, band: float) -> Image.Image:
    """Multiply the edges by `gain`, fading to 1 at `band` (a fraction of the side) from the border."""
    pixels = np.asarray(image, dtype=np.float32)
    h, w = pixels.shape[:2]
    ys, xs = np.arange(h, dtype=np.float32) / h, np.arange(w, dtype=np.float32) / w
    distance = np.minimum.outer(np.minimum(ys, 1 - ys), np.minimum(xs, 1 - xs))  # to the nearest border
    weight = np.clip(1 - distance / band, 0, 1)
    if pixels.ndim == 3:
        weight = weight[..., None]
    pixels = pixels * (1 + (gain - 1) * weight)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode=image.mode)
