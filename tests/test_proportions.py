"""The proportion bench's geometry: its synthetic stretch labels and its canonicalisation, checked on a disc."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

from bench.proportions import (FILM_SIDE, ProportionEstimator, canonicalise, estimate, stretched_windows,
                                write_canonical_copy)


def disc(size: tuple[int, int] = (FILM_SIDE, FILM_SIDE), box: tuple[int, int, int, int] | None = None) -> Image.Image:
    image = Image.new("L", size, 0)
    ImageDraw.Draw(image).ellipse(box or (size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4), fill=255)
    return image


def log_height_over_width(pixels: np.ndarray) -> float:
    """log(height / width) of the bright blob: the shape the network would see."""
    bright = pixels > pixels.max() / 2
    return math.log(bright.any(axis=1).sum() / bright.any(axis=0).sum())


def test_each_window_is_labelled_with_the_stretch_it_gives_the_anatomy():
    film = torch.from_numpy(np.asarray(disc(), dtype=np.float32) / 255)[None, None].repeat(64, 1, 1, 1)
    windows, log_stretch = stretched_windows(film, torch.Generator().manual_seed(0))
    # gamma changes the grey levels but not where the disc is; a window may cut the disc, so keep the whole ones
    measured, labels = [], []
    for window, label in zip(windows[:, 0].numpy(), log_stretch.numpy()):
        bright = window > 0.5
        if not (bright[0].any() or bright[-1].any() or bright[:, 0].any() or bright[:, -1].any()):
            measured.append(log_height_over_width(window))
            labels.append(label)
    assert len(labels) >= 20
    assert np.corrcoef(measured, labels)[0, 1] > 0.95
    assert np.max(np.abs(np.array(measured) - np.array(labels))) < 0.08


def test_canonicalising_undoes_a_stretch_and_keeps_a_square_film():
    tall = disc(box=(72, 40, 152, 184))  # 80 wide, 144 tall: log stretch ~0.59
    stretch = log_height_over_width(np.asarray(tall))
    square = canonicalise(tall, stretch)
    assert square.size == tall.size
    assert abs(log_height_over_width(np.asarray(square))) < 0.03
    assert np.asarray(square)[:20].max() == 0  # the squeeze padded black above and below
    assert canonicalise(tall, 0.05, dead_zone=0.1) is tall  # within the dead zone nothing is touched
    partly = canonicalise(tall, stretch, dead_zone=0.2)
    assert abs(log_height_over_width(np.asarray(partly)) - 0.2) < 0.03
    wide = canonicalise(disc(size=(300, 200)), -0.3)  # any film size: squashed first, as served
    assert wide.size == (300, 300)


def test_the_estimator_answers_one_number_per_image_of_any_size():
    estimator = ProportionEstimator()
    answers = estimate(estimator, [disc(), disc(size=(400, 250)), disc().convert("RGB")])
    assert answers.shape == (3,) and np.isfinite(answers).all()


def test_the_canonical_copy_keeps_every_class_folder_and_name(tmp_path):
    source = tmp_path / "train"
    for label, box in (("NORMAL", None), ("PNEUMONIA", (60, 20, 164, 204))):
        (source / label).mkdir(parents=True)
        for index in range(2):
            disc(box=box).convert("RGB").save(source / label / f"IM-000{index}-0001.jpeg")
    write_canonical_copy(ProportionEstimator(), source, tmp_path / "copy" / "train")
    copied = sorted(path.relative_to(tmp_path / "copy" / "train") for path in (tmp_path / "copy").rglob("*.jpeg"))
    assert copied == sorted(path.relative_to(source) for path in source.rglob("*.jpeg"))
    assert all(Image.open(tmp_path / "copy" / "train" / path).size == (FILM_SIDE, FILM_SIDE) for path in copied)
