"""Faults: a training run that dies mid-epoch resumes to the same model; a damaged model folder fails clearly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from conftest import tiny_training_args
from train.pipeline import parse_arguments, run

REPO = Path(__file__).resolve().parents[1]


class PowerCut(TrainerCallback):
    """Dies in the middle of the second epoch, like a killed job."""

    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            raise KeyboardInterrupt("power cut")


def arguments(data_dir: Path, output_dir: Path, *extra: str):
    return parse_arguments(tiny_training_args(data_dir, output_dir, "--early_stopping_patience", "0",
                                              "--dataloader_num_workers", "0", "--save_total_limit", "5", *extra))


def test_killed_run_resumes_from_its_last_checkpoint_and_reaches_the_same_model(tiny_image_folder, tmp_path):
    reference_dir, interrupted_dir = tmp_path / "uninterrupted", tmp_path / "interrupted"
    run(*arguments(tiny_image_folder, reference_dir))
    first_checkpoint = sorted(reference_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[0]
    steps_per_epoch = int(first_checkpoint.name.split("-")[1])

    with pytest.raises(KeyboardInterrupt):
        run(*arguments(tiny_image_folder, interrupted_dir), extra_callbacks=(PowerCut(steps_per_epoch + 2),))
    assert Path(get_last_checkpoint(interrupted_dir)).name == f"checkpoint-{steps_per_epoch}"
    assert not (interrupted_dir / "model.safetensors").exists()

    run(*arguments(tiny_image_folder, interrupted_dir, "--resume_from_checkpoint", "last"))
    reference, resumed = load_file(reference_dir / "model.safetensors"), load_file(interrupted_dir / "model.safetensors")
    assert reference.keys() == resumed.keys()
    for name in reference:
        assert (reference[name] - resumed[name]).abs().max().item() < 1e-5, name
    metrics = lambda folder: json.loads((folder / "metrics_validation.json").read_text())["metrics"]
    assert metrics(resumed_dir := interrupted_dir)["roc_auc"] == pytest.approx(metrics(reference_dir)["roc_auc"], abs=1e-6)
    assert json.loads((resumed_dir / "config.json").read_text())["decision_threshold"] == pytest.approx(
        json.loads((reference_dir / "config.json").read_text())["decision_threshold"], abs=1e-6)


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage"])
def test_damaged_weights_give_one_clear_line_at_app_start(trained_model, tmp_path, damage):
    model = tmp_path / "model"
    shutil.copytree(trained_model, model, ignore=shutil.ignore_patterns("checkpoint-*"))
    weights = model / "model.safetensors"
    if damage == "missing":
        weights.unlink()
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:2000])
    else:
        weights.write_bytes(b"not a tensor file")
    env = {**os.environ, "MODEL_ID": str(model), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "app.py"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in result.stderr
    assert str(model) in lines[-1]
