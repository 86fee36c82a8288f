"""Publishing: only the Hub's HTTP boundary (HfApi) is replaced."""

from __future__ import annotations

import shutil

import pytest
from huggingface_hub import HfApi

from train.push import IGNORE_PATTERNS, main as push_main


@pytest.fixture
def hub_calls(monkeypatch):
    calls = []
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create_repo", repo_id, kw)) or f"https://huggingface.co/{repo_id}")
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload_folder", kw["repo_id"], kw)))
    return calls


def test_push_creates_the_repo_and_uploads_the_folder(trained_model, tmp_path, hub_calls, capsys):
    model_dir = tmp_path / "model"
    shutil.copytree(trained_model, model_dir)
    assert push_main(["--model_dir", str(model_dir), "--repo_id", "alice/pneumonia-test", "--private"]) == 0
    (create, repo_id, create_kwargs), (upload, upload_repo, upload_kwargs) = hub_calls
    assert (create, repo_id, create_kwargs["private"], create_kwargs["exist_ok"]) == ("create_repo", "alice/pneumonia-test", True, True)
    assert (upload, upload_repo, upload_kwargs["folder_path"]) == ("upload_folder", "alice/pneumonia-test", str(model_dir))
    assert "checkpoint-*" in upload_kwargs["ignore_patterns"] and "*.bin" in upload_kwargs["ignore_patterns"]
    assert 'pipeline("image-classification", model="alice/pneumonia-test")' in (model_dir / "README.md").read_text()
    assert "alice/pneumonia-test" in capsys.readouterr().out


def test_push_without_a_token_says_so_in_one_line(trained_model, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("train.push.get_token", lambda: None)
    monkeypatch.setattr(HfApi, "create_repo", lambda *a, **k: pytest.fail("no network call without a token"))
    assert push_main(["--model_dir", str(trained_model), "--repo_id", "alice/x"]) == 1
    error = capsys.readouterr().err.strip()
    assert error == "error: No Hugging Face token: set HF_TOKEN or run `hf auth login`, then push again."


def test_push_offline_says_so(trained_model, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert push_main(["--model_dir", str(trained_model), "--repo_id", "alice/x"]) == 1
    assert "offline" in capsys.readouterr().err


def test_push_of_a_folder_that_is_not_a_model(tmp_path, hub_calls, capsys):
    assert push_main(["--model_dir", str(tmp_path), "--repo_id", "alice/x"]) == 1
    assert "missing config.json, model.safetensors" in capsys.readouterr().err
    assert hub_calls == []


def test_network_failure_is_one_clear_line(trained_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")

    def unreachable(*args, **kwargs):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(HfApi, "create_repo", unreachable)
    model_dir = tmp_path / "model"
    shutil.copytree(trained_model, model_dir)
    card_before = (model_dir / "README.md").read_bytes()
    assert push_main(["--model_dir", str(model_dir), "--repo_id", "alice/x"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Cannot reach the Hugging Face Hub" in error
    assert (model_dir / "README.md").read_bytes() == card_before  # nothing was pushed, so the card names no repo


def test_training_with_push_to_hub_fails_fast_without_a_token(tiny_image_folder, tmp_path, monkeypatch, capsys):
    from conftest import tiny_training_args
    from train.pipeline import main as train_main

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("train.push.get_token", lambda: None)
    code = train_main(tiny_training_args(tiny_image_folder, tmp_path / "m", "--push_to_hub", "--hub_model_id", "alice/x"))
    assert code == 1
    assert "No Hugging Face token" in capsys.readouterr().err
    assert not (tmp_path / "m" / "model.safetensors").exists()  # failed before training, not after


def test_ignore_patterns_cover_pickles():
    assert {"*.bin", "*.pt", "*.pkl", "checkpoint-*"} <= set(IGNORE_PATTERNS)
