"""The border shortcut (issue 11): margin augmentation in training, margin shifts and the margin-only probe in
`train.shifts`, as a user of `python -m train --margin_augmentation 0.5` and of the robustness report sees them."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import synthetic_xray
from train.augment import MARGIN_OPERATIONS, XRayAugmentation, add_bars, crop_sides, edge_exposure, pad_sides
from train.shifts import MARGIN_SHIFTS, ROBUSTNESS_FILE, SHIFTS, hide_centre, margin_summary, shift_report


def centre(image: Image.Image, keep: float = 0.6) -> np.ndarray:
    w, h = image.size
    dx, dy = round(w * (1 - keep) / 2), round(h * (1 - keep) / 2)
    return np.asarray(image.crop((dx, dy, w - dx, h - dy)))


def test_bars_and_edge_exposure_change_the_margins_only():
    image = synthetic_xray(1, 5, size=100)
    for altered in (add_bars(image, 0.15, 0.1, 0.05, 0.15, fill=255), edge_exposure(image, 1.4, 0.15)):
        assert altered.size == image.size and altered.mode == "L"
        assert np.array_equal(centre(altered), centre(image))
        assert not np.array_equal(np.asarray(altered), np.asarray(image))
    barred = np.asarray(add_bars(image, 0.1, 0, 0, 0, fill=0))
    assert (barred[:, :10] == 0).all() and (barred[:, 10:] > 0).any()


def test_crop_and_padding_reframe_the_image():
    image = synthetic_xray(0, 6, size=100)
    assert crop_sides(image, 0.1, 0.2, 0, 0.05).size == (90, 75)
    padded = pad_sides(image, 0.1, 0.1, 0.1, 0.1, fill=0)
    assert padded.size == image.size and (np.asarray(padded)[0] == 0).all()


def test_margin_augmentation_draws_every_operation_reproducibly():
    augmentation = XRayAugmentation(margin_probability=1.0, max_margin_fraction=0.15)
    image = synthetic_xray(1, 7, size=96)
    first = [augmentation(image, random.Random(seed)) for seed in range(40)]
    again = [augmentation(image, random.Random(seed)) for seed in range(40)]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, again))
    rng = random.Random(0)
    drawn = {rng.choice(MARGIN_OPERATIONS) for _ in range(40)}
    assert drawn == set(MARGIN_OPERATIONS)
    assert len({im.size for im in first}) > 1  # crops into the margin change the framing
    off = XRayAugmentation(margin_probability=0.0, strength=0.0)
    assert off(image, random.Random(0)) is image


def test_the_flag_reaches_the_training_augmentation(tmp_path):
    from train.pipeline import parse_arguments

    _, data_args, _ = parse_arguments(["--data_dir", str(tmp_path), "--margin_augmentation", "0.5",
                                       "--max_margin_fraction", "0.1", "--margin_swap", "0.3"])
    augmentation = XRayAugmentation.from_data_arguments(data_args)
    assert (augmentation.margin_probability, augmentation.max_margin_fraction) == (0.5, 0.1)
    assert augmentation.margin_swap_probability == 0.3
    _, data_args, _ = parse_arguments(["--data_dir", str(tmp_path), "--normal_crop", "0.5"])
    assert XRayAugmentation.from_data_arguments(data_args).normal_crop_probability == 0.5
    with pytest.raises(ValueError, match="probabilities"):
        parse_arguments(["--data_dir", str(tmp_path), "--normal_crop", "2"])
    with pytest.raises(ValueError, match="probabilities"):
        parse_arguments(["--data_dir", str(tmp_path), "--margin_augmentation", "1.5"])
    model_args, _, _ = parse_arguments(["--data_dir", str(tmp_path), "--teacher_view", "filmed"])
    assert model_args.teacher_view == "filmed"
    with pytest.raises(ValueError, match="teacher_view"):
        parse_arguments(["--data_dir", str(tmp_path), "--teacher_view", "cropped"])


def test_the_margin_swap_keeps_each_centre_and_takes_another_images_margins():
    augmentation = XRayAugmentation(margin_swap_probability=1.0, max_margin_fraction=0.15)
    images = [Image.new("L", (100, 100), level) for level in (10, 120, 240)]
    swapped = augmentation.swap_margins(images, random.Random(0))
    again = augmentation.swap_margins(images, random.Random(0))
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(swapped, again))
    for image, result in zip(images, swapped):
        pixels = np.asarray(result)
        assert result.size == image.size and (centre(result, keep=0.7) == image.getpixel((0, 0))).all()
        border = np.concatenate([pixels[:3].ravel(), pixels[-3:].ravel(), pixels[:, :3].ravel(), pixels[:, -3:].ravel()])
        assert len(set(border.tolist())) == 1 and border[0] != image.getpixel((0, 0))  # another image's margin
    assert XRayAugmentation().swap_margins(images, random.Random(0)) is images  # off by default
    assert XRayAugmentation(margin_swap_probability=1.0).swap_margins(images[:1], random.Random(0)) == images[:1]


def test_teachers_see_the_film_before_its_margins_are_swapped_or_unaugmented_if_asked(trained_model):
    import io

    from transformers import AutoImageProcessor

    from train.distillation import load_teachers
    from train.pipeline import make_transforms

    processor = AutoImageProcessor.from_pretrained(trained_model)
    teachers = load_teachers([str(trained_model)], onnx=False)
    side = teachers.largest_side
    images = [synthetic_xray(label, 40 + i, size=side) for i, label in enumerate((0, 1, 1, 0))]  # four different films
    cells = []
    for image in images:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        cells.append({"bytes": buffer.getvalue(), "path": None})
    as_filmed = teachers.inputs(images)["teacher_pixel_values_0"]

    def seen_by(augmentation: XRayAugmentation, teacher_view: str) -> tuple[list, list]:
        train_transform, _ = make_transforms(processor, side, augmentation, teachers, teacher_view)
        batch = train_transform({"image": cells, "label": [0, 1, 1, 0]})
        assert batch["labels"] == [0, 1, 1, 0]
        return batch["teacher_pixel_values_0"], batch["pixel_values"]

    def same(first: list, second: list) -> list[bool]:
        return [torch.equal(a, b) for a, b in zip(first, second)]

    teachers_saw, student_saw = seen_by(XRayAugmentation(strength=0.0, margin_swap_probability=1.0), "augmented")
    assert all(same(teachers_saw, as_filmed)) and not any(same(student_saw, as_filmed))
    # `--teacher_view filmed`: the whole augmentation is the student's alone.
    everything = XRayAugmentation(margin_probability=1.0, margin_swap_probability=0.5)
    teachers_saw, student_saw = seen_by(everything, "filmed")
    assert all(same(teachers_saw, as_filmed)) and not any(same(student_saw, as_filmed))
    teachers_saw, student_saw = seen_by(everything, "augmented")
    assert not any(same(teachers_saw, as_filmed))


def test_normal_crop_frames_only_normal_films_tighter():
    augmentation = XRayAugmentation(normal_crop_probability=1.0, max_margin_fraction=0.15)
    film = synthetic_xray(0, 11, size=120)
    tighter = augmentation.reframe_normal(film, 0, random.Random(3))
    assert tighter.size == film.size and tighter.mode == film.mode
    assert not np.array_equal(np.asarray(tighter), np.asarray(film))
    assert augmentation.reframe_normal(film, 1, random.Random(3)) is film  # PNEUMONIA films keep their framing
    rng = random.Random(3)
    assert XRayAugmentation().reframe_normal(film, 0, rng) is film  # off by default
    assert rng.random() == random.Random(3).random()  # and, off, it leaves the recipe's random stream alone
    # A tighter crop is a zoom: a white square in the middle of the film fills more of it afterwards.
    square = Image.new("L", (120, 120), 0)
    square.paste(255, (40, 40, 80, 80))
    for seed in range(5):
        zoomed = np.asarray(augmentation.reframe_normal(square, 0, random.Random(seed)))
        assert zoomed.shape == (120, 120) and (zoomed > 127).sum() > 40 * 40


def test_the_proportions_augmentation_stretches_one_axis_against_the_other_and_is_off_by_default(tmp_path):
    from train.pipeline import parse_arguments

    square = Image.new("L", (120, 120), 0)
    square.paste(255, (40, 40, 80, 80))
    still = dict(max_rotation_degrees=0, max_scale_change=0, max_translation=0, max_brightness_change=0,
                 max_contrast_change=0, max_gamma_change=0, blur_probability=0, noise_probability=0)
    shapes = []
    for seed in range(12):
        white = np.asarray(XRayAugmentation(max_aspect_change=0.3, **still)(square, random.Random(seed))) > 127
        width, height = int(white.any(0).sum()), int(white.any(1).sum())
        assert 40 / 1.3 - 2 <= width / height * 40 <= 40 * 1.3 + 2
        shapes.append(width / height)
    assert max(shapes) > 1.08 and min(shapes) < 1 / 1.08  # wider and narrower both drawn
    # On, it takes one more random number; off (the default), none, so the bundled recipe's stream is unchanged.
    plain, stretched = random.Random(4), random.Random(4)
    XRayAugmentation()(square, plain)
    XRayAugmentation(max_aspect_change=0.3)(square, stretched)
    stretched_next = stretched.random()
    assert plain.random() != stretched_next and plain.random() == stretched_next
    _, data_args, _ = parse_arguments(["--data_dir", str(tmp_path), "--max_aspect_change", "0.3"])
    assert XRayAugmentation.from_data_arguments(data_args).max_aspect_change == 0.3
    with pytest.raises(ValueError, match="max_aspect_change"):
        parse_arguments(["--data_dir", str(tmp_path), "--max_aspect_change", "-0.1"])


def test_the_film_shape_shifts_change_the_proportions_the_network_sees():
    film = synthetic_xray(0, 5, size=200)
    wider = MARGIN_SHIFTS["a wider film (top and bottom 10 % cropped)"](film)
    narrower = MARGIN_SHIFTS["a narrower film (sides 10 % cropped)"](film)
    assert wider.size == (200, 160) and narrower.size == (160, 200)  # squashed to a square, one axis is stretched


def test_tighter_framings_zoom_into_each_image_by_at_most_the_share_asked():
    from train.distillation import tighter_framings

    square = torch.zeros(6, 3, 60, 60)
    square[:, :, 20:40, 20:40] = 1.0  # a white square in the middle: a tighter framing makes it larger
    generator = torch.Generator().manual_seed(0)
    tighter = tighter_framings(square, 0.25, generator)
    assert tighter.shape == square.shape
    white = (tighter[:, 0] > 0.5).flatten(1).sum(1)
    assert (white >= 20 * 20).all() and (white > 20 * 20).any() and (white <= (20 / 0.75 + 1) ** 2).all()  # zoom 1 to 1/0.75
    assert torch.allclose(tighter_framings(square, 1e-6, generator), square, atol=1e-4)  # no zoom: the image itself
    again = tighter_framings(square, 0.25, torch.Generator().manual_seed(0))
    assert torch.equal(tighter, again)  # seeded: a run can be reproduced


def test_the_framing_consistency_term_pulls_the_tighter_copy_to_the_images_own_answer():
    from train.distillation import DistillationLoss, distillation_term

    hard = lambda outputs, labels, num_items_in_batch=None: torch.nn.functional.cross_entropy(outputs["logits"], labels)  # noqa: E731
    logits = torch.randn(4, 2, requires_grad=True)
    tighter = torch.randn(4, 2, requires_grad=True)
    labels = torch.tensor([0, 1, 1, 0])
    loss = DistillationLoss(hard, temperature=2.0, weight=0.5, consistency_weight=0.8)
    plain = loss({"logits": logits}, labels)
    loss.tighter_logits = tighter
    total = loss({"logits": logits}, labels)
    assert (total - plain).item() == pytest.approx(0.8 * distillation_term(tighter, logits, 2.0).item(), rel=1e-5)
    (total - plain).backward()
    assert tighter.grad.abs().sum() > 0 and logits.grad.abs().sum() == 0  # the image's answer is the target, not moved


def test_a_student_trains_with_framing_consistency(tiny_image_folder, tmp_path, monkeypatch):
    import train.distillation
    from conftest import tiny_training_args
    from train.pipeline import main as train_main, parse_arguments

    shapes = []
    original = train.distillation.tighter_framings

    def spy(pixels, max_zoom, generator):
        shapes.append((tuple(pixels.shape), max_zoom))
        return original(pixels, max_zoom, generator)

    monkeypatch.setattr(train.distillation, "tighter_framings", spy)
    output_dir = tmp_path / "consistent"
    args = tiny_training_args(tiny_image_folder, output_dir, "--num_train_epochs", "1", "--export_onnx", "false",
                              "--post_training_checks", "false", "--framing_consistency", "0.5", "--consistency_zoom", "0.2")
    assert train_main(args) == 0
    assert shapes and all(shape[1:] == (3, 32, 32) and zoom == 0.2 for shape, zoom in shapes)  # training steps only
    summary = json.loads((output_dir / "training_summary.json").read_text())
    assert summary["hyperparameters"]["framing consistency (weight, largest share of a side cut)"] == "0.5, 20%"
    with pytest.raises(ValueError, match="consistency_zoom"):
        parse_arguments(["--data_dir", str(tmp_path), "--consistency_zoom", "1"])
    with pytest.raises(ValueError, match="framing_consistency"):
        parse_arguments(["--data_dir", str(tmp_path), "--framing_consistency", "-1"])


def test_hide_centre_keeps_only_the_margins():
    image = synthetic_xray(1, 8, size=100)
    probe = np.asarray(hide_centre(image))
    assert (probe[10:90, 10:90] == 128).all()
    assert np.array_equal(probe[:10], np.asarray(image)[:10]) and np.array_equal(probe[:, 90:], np.asarray(image)[:, 90:])


class BorderReader:
    """A stand-in model that has learnt the shortcut: its score is the brightness of the image's top rows."""

    threshold = 0.5

    def logits(self, images, batch_size=32):
        brightness = [float(np.asarray(im.convert("L"))[: max(1, im.height // 12)].mean() / 255) for im in images]
        return torch.tensor([[0.0, b] for b in brightness])

    def calibrated_probabilities(self, logits):
        return logits[:, 1].numpy()


def test_the_probe_and_the_margin_check_expose_a_model_that_reads_the_borders():
    labels = [0, 1] * 6
    images = []
    for i, label in enumerate(labels):  # PNEUMONIA images carry a bright top margin, as one machine's framing might
        image = synthetic_xray(label, 100 + i, size=60)
        images.append(add_bars(image, 0, 0.08, 0, 0, fill=230) if label else add_bars(image, 0, 0.08, 0, 0, fill=40))
    report = shift_report(BorderReader(), images, labels)
    assert [row["shift"] for row in report["shifts"]] == list(SHIFTS)
    assert report["margin_probe"]["roc_auc"] == 1.0  # the margins alone give the label away
    check = report["margin_check"]
    assert check["shifts"] == list(MARGIN_SHIFTS) and check["holds"] is False  # white bars make everyone sick
    assert check["worst_specificity"] == 0.0
    assert "NO" in margin_summary(report)


def test_training_writes_the_probe_and_the_margin_check_and_the_card_shows_the_margin_shifts(trained_model):
    report = json.loads((trained_model / ROBUSTNESS_FILE).read_text())
    assert {"margin_probe", "margin_check"} <= set(report)
    assert 0.0 <= report["margin_probe"]["roc_auc"] <= 1.0
    assert report["margin_check"]["shifts"] == list(MARGIN_SHIFTS)
    assert isinstance(report["margin_check"]["holds"], bool)
    card = (trained_model / "README.md").read_text()
    assert "| black bars at the sides (10 %) |" in card


def test_the_cards_limitations_name_the_shift_that_costs_the_most_specificity(trained_model, tmp_path):
    import shutil

    from train.card import render_card

    model = tmp_path / "model"
    shutil.copytree(trained_model, model, ignore=shutil.ignore_patterns("checkpoint-*"))
    report = json.loads((model / ROBUSTNESS_FILE).read_text())
    for row in report["shifts"]:
        row["specificity"] = 0.9
    next(row for row in report["shifts"] if row["shift"] == "borders cropped (left and top 10 %)")["specificity"] = 0.7
    (model / ROBUSTNESS_FILE).write_text(json.dumps(report))
    limitations = render_card(model).content.split("## Limitations and risks")[1].split("\n## ")[0]
    assert ("of the shifts measured above, borders cropped (left and top 10 %) costs this model the most specificity: "
            "0.700 against 0.900 as filmed") in limitations
    for row in report["shifts"]:
        row["specificity"] = 0.9  # no shift costs anything: nothing to warn about
    (model / ROBUSTNESS_FILE).write_text(json.dumps(report))
    assert "Framing and acquisition" not in render_card(model).content


def test_margin_alterations_paint_grey_on_colour_uploads_too():
    image = synthetic_xray(1, 9, size=50).convert("RGB")
    for altered in (add_bars(image, 0.1, 0, 0, 0, fill=200), pad_sides(image, 0.1, 0, 0, 0, fill=200), hide_centre(image)):
        pixels = np.asarray(altered)
        assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()
