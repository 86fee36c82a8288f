"""Starting points an ML engineer brings: a pretrained checkpoint folder to fine-tune, a Hub repo id to serve."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from transformers import ConvNextConfig, ConvNextForImageClassification, ConvNextImageProcessorPil

from chestxray import PneumoniaClassifier
from chestxray.classifier import HUB_ALLOW_PATTERNS
from conftest import synthetic_xray, tiny_training_args
from train.pipeline import main as train_main


@pytest.fixture(scope="module")
def imagenet_style_checkpoint(tmp_path_factory) -> Path:
    """A ConvNeXt checkpoint with a 1000-class head and its own (cropping) processor, as on the Hub."""
    folder = tmp_path_factory.mktemp("pretrained") / "convnext-imagenet"
    config = ConvNextConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64], num_labels=1000, image_size=32)
    ConvNextForImageClassification(config).save_pretrained(folder)
    ConvNextImageProcessorPil(size={"shortest_edge": 32}, crop_pct=0.875).save_pretrained(folder)
    return folder


def test_fine_tuning_replaces_the_head_and_keeps_the_checkpoint_normalisation(imagenet_style_checkpoint, tiny_image_folder, tmp_path):
    args = tiny_training_args(tiny_image_folder, tmp_path / "fine-tuned")
    overrides = args.index("--config_overrides")
    del args[overrides : overrides + 2]
    assert train_main([*args, "--model_name_or_path", str(imagenet_style_checkpoint), "--num_train_epochs", "1"]) == 0
    output = tmp_path / "fine-tuned"
    config = json.loads((output / "config.json").read_text())
    assert config["id2label"] == {"0": "NORMAL", "1": "PNEUMONIA"}
    processor = json.loads((output / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 32, "width": 32}  # squash, not the checkpoint's crop
    assert "Fine-tuned from" in (output / "README.md").read_text()
    classifier = PneumoniaClassifier.from_pretrained(output)
    assert classifier.model.classifier.out_features == 2


def test_a_hub_model_id_is_downloaded_safetensors_only_with_its_revision(trained_model, tmp_path, monkeypatch):
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, **kwargs):
        calls.append((repo_id, revision, allow_patterns))
        cache = tmp_path / "hub-cache" / repo_id.replace("/", "--")
        shutil.copytree(trained_model, cache, ignore=shutil.ignore_patterns("checkpoint-*"), dirs_exist_ok=True)
        return str(cache)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    classifier = PneumoniaClassifier.from_pretrained("someone/pneumonia-model", revision="v1.0")
    assert calls == [("someone/pneumonia-model", "v1.0", HUB_ALLOW_PATTERNS)]
    assert not any(pattern.endswith((".bin", ".pt", ".pkl", ".py")) for pattern in HUB_ALLOW_PATTERNS)
    assert classifier.predict([synthetic_xray(1, 5)])[0].decision in ("NORMAL", "PNEUMONIA")
    assert classifier.ood_reference is not None  # the reference travels with the weights
