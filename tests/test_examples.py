"""Example X-rays: from EXAMPLES_DIR locally, from the Hub dataset on a Space (only the Hub boundary mocked)."""

from __future__ import annotations

from pathlib import Path

import datasets

import app
from conftest import synthetic_xray


def test_examples_dir_gives_a_few_per_class_copied_to_the_temporary_area(tiny_image_folder, monkeypatch):
    monkeypatch.setenv("EXAMPLES_DIR", str(tiny_image_folder / "train"))
    examples = app.find_examples()
    names = [Path(p).name for p in examples]
    assert len(examples) == 4
    assert sum(n.startswith("normal_") for n in names) == 2 and sum(n.startswith("pneumonia_") for n in names) == 2
    assert all(Path(p).is_relative_to(app.UPLOAD_DIR) for p in examples)


def test_examples_prefer_images_the_model_was_not_trained_on(tiny_image_folder, trained_model, monkeypatch):
    from chestxray import PneumoniaClassifier

    monkeypatch.setenv("EXAMPLES_DIR", str(tiny_image_folder / "train"))
    held_out = {line.split(",")[0] for line in (trained_model / "splits" / "validation.csv").read_text().splitlines()[1:]}
    examples = app.find_examples(PneumoniaClassifier.from_pretrained(trained_model))
    assert examples and all(Path(p).name.split("_", 1)[1] in held_out for p in examples)


def test_no_examples_without_a_source(monkeypatch):
    monkeypatch.delenv("EXAMPLES_DIR", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert app.find_examples() == []


class FakeHubStream:
    """What `load_dataset(..., streaming=True)` yields for hf-vision/chest-xray-pneumonia."""

    features = {"label": datasets.ClassLabel(names=["NORMAL", "PNEUMONIA"])}

    def __iter__(self):
        for i in range(10):
            yield {"image": synthetic_xray(i % 2, i).convert("RGB"), "label": i % 2}


def test_on_a_space_examples_are_fetched_once_and_cached(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setenv("SPACE_ID", "someone/pneumonia")
    monkeypatch.delenv("EXAMPLES_DIR", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or FakeHubStream())
    first = app.find_examples()
    second = app.find_examples()
    assert len(first) == len(second) == 4
    assert calls == [(("hf-vision/chest-xray-pneumonia",), {"split": "test", "streaming": True})]


def test_on_a_space_the_app_starts_without_examples_when_the_hub_is_unreachable(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setenv("SPACE_ID", "someone/pneumonia")
    monkeypatch.delenv("EXAMPLES_DIR", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(datasets, "load_dataset", offline)
    assert app.find_examples() == []
