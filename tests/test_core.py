"""The inference core on both supported architectures, and its command line."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from chestxray import PneumoniaClassifier
from chestxray.__main__ import main as cli_main
from chestxray.explain import grad_cam, overlay
from conftest import synthetic_xray, tiny_training_args, xray_as_dicom
from train.pipeline import main as train_main

TINY_VIT = json.dumps({"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64})


@pytest.fixture(scope="module")
def trained_vit(tiny_image_folder, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("vit") / "tiny-vit"
    args = tiny_training_args(tiny_image_folder, output_dir)
    args[args.index("--config_overrides") + 1] = TINY_VIT
    args[args.index("--model_type") + 1] = "vit"
    assert train_main([*args, "--model_size", "tiny"]) == 0
    return output_dir


@pytest.fixture(scope="module", params=["convnext", "vit"])
def classifier(request, trained_model, trained_vit):
    return PneumoniaClassifier.from_pretrained(trained_model if request.param == "convnext" else trained_vit)


def test_one_pass_gives_the_same_logits_as_the_model(classifier):
    pixel_values = classifier.pixel_values([synthetic_xray(1, 3), synthetic_xray(0, 4)])
    with torch.inference_mode():
        logits, features = classifier.logits_and_features(pixel_values)
        reference = classifier.model(pixel_values=pixel_values).logits
    torch.testing.assert_close(logits, reference)
    assert features.shape[0] == 2 and classifier.ood_reference.mean.shape[0] == features.shape[1]


def test_grad_cam_covers_the_image_and_overlays_at_its_size(classifier):
    image = synthetic_xray(1, 8, size=96).resize((120, 90))
    heatmap = grad_cam(classifier, image)
    assert heatmap.shape == (classifier.image_size, classifier.image_size)
    assert heatmap.min() >= 0 and heatmap.max() <= 1
    picture = overlay(image, heatmap)
    assert picture.shape == (90, 120, 3) and picture.dtype == np.uint8


def test_model_type_is_recorded_in_the_card(trained_vit):
    assert "ViT-tiny" in (trained_vit / "README.md").read_text()


def test_cli_predicts_folders_and_files_and_writes_csv(trained_model, tmp_path, capsys):
    folder = tmp_path / "scans"
    (folder / "nested").mkdir(parents=True)
    synthetic_xray(0, 1).save(folder / "a.png")
    synthetic_xray(1, 2).save(folder / "nested" / "b.jpeg")
    xray_as_dicom(folder / "nested" / "IMG0003")
    code = cli_main(["predict", str(folder), "--model", str(trained_model), "--csv", str(tmp_path / "out.csv")])
    assert code == 0
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert sorted(r["file"].rsplit("/", 1)[-1] for r in rows) == ["IMG0003", "a.png", "b.jpeg"]
    assert all(r["decision"] in ("NORMAL", "PNEUMONIA") and r["error"] == "" for r in rows)
    assert "P(pneumonia)" in capsys.readouterr().out


def test_cli_reports_unreadable_files_and_exits_1(trained_model, tmp_path, capsys):
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    synthetic_xray(0, 1).save(good)
    bad.write_bytes(b"nope")
    assert cli_main(["predict", str(good), str(bad), "--model", str(trained_model)]) == 1
    captured = capsys.readouterr()
    assert "is not an image" in captured.out and "1 of 2 files could not be read" in captured.err


def test_cli_with_a_missing_model_is_one_line(tmp_path, capsys):
    synthetic_xray(0, 1).save(tmp_path / "a.png")
    assert cli_main(["predict", str(tmp_path / "a.png"), "--model", str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err.startswith("error: ")


def test_a_folder_without_safetensors_is_refused(trained_model, tmp_path):
    import shutil
    from chestxray import ModelLoadError

    copy = tmp_path / "pickled"
    shutil.copytree(trained_model, copy, ignore=shutil.ignore_patterns("checkpoint-*", "model.safetensors"))
    (copy / "pytorch_model.bin").write_bytes(b"a pickle would be here")
    with pytest.raises(ModelLoadError, match="only safetensors"):
        PneumoniaClassifier.from_pretrained(copy)


def test_large_uploads_are_shrunk_first_without_changing_the_answer(trained_model):
    classifier = PneumoniaClassifier.from_pretrained(trained_model)
    large = synthetic_xray(1, 31, size=96).resize((2000, 1600), Image.Resampling.BICUBIC)
    target = 2 * classifier.image_size
    assert all(target <= side < 2 * target for side in classifier.shrink(large).size)
    direct = classifier.processor(images=[large.convert("RGB")], return_tensors="pt")["pixel_values"]
    shrunk = classifier.pixel_values([large])
    assert shrunk.shape == direct.shape
    assert (shrunk - direct).abs().mean().item() < 0.05  # normalised units; the pictures are the same
    with torch.inference_mode():
        p_direct = classifier.calibrated_probabilities(classifier.model(pixel_values=direct).logits)
        p_shrunk = classifier.calibrated_probabilities(classifier.model(pixel_values=shrunk).logits)
    assert abs(float(p_direct[0]) - float(p_shrunk[0])) < 0.02
