"""Data-parallel training on CPU (DDP over gloo): the same command, two processes, one model folder.

`accelerate launch --multi_gpu --num_processes 2 -m train ... --use_cpu` starts two processes (torchrun does the
same); `accelerate launch --num_processes 2 --cpu -m train ...` must run unchanged too (accelerate 1.15 starts one
process for it: its multi-CPU launcher needs mpirun). Either way only the main process writes the folder.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import free_port, tiny_training_args

ACCELERATE = Path(sys.executable).parent / "accelerate"


@pytest.mark.parametrize("launcher, processes, draws", [(["--multi_gpu", "--num_processes", "2"], 2, 2),
                                                        (["--num_processes", "2", "--cpu"], None, 1)])
def test_accelerate_launch_trains_and_only_the_main_process_writes_the_folder(tiny_image_folder, tmp_path, launcher, processes,
                                                                               draws):
    output_dir = tmp_path / "ddp-model"
    command = [str(ACCELERATE), "launch", *launcher, "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), "-m", "train",
               *tiny_training_args(tiny_image_folder, output_dir, "--num_train_epochs", "2", "--per_device_train_batch_size", "4",
                                   "--export_onnx", "false", "--draws", str(draws))]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment, cwd=Path(__file__).parents[1])
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    started = len(re.findall(r"INFO train: train: \d+ images", log))  # each process logs its data once
    assert started == (processes or started) and started >= 1
    if started > 1:
        assert log.count(f"Training on {started} processes") == started
    else:  # accelerate's CPU launcher asked for 2 and started 1: whoever launched it is told, with the command that works
        assert "One training process, although the launcher was asked for several" in log
    assert log.count("Model folder written to") == 1
    summary = json.loads((output_dir / "training_summary.json").read_text())
    assert summary["hyperparameters"]["batch size"] == 4 * started  # per device x processes
    assert summary["hardware"].endswith(f"x {started} processes") == (started > 1)
    assert len(summary.get("draws", [None])) == draws  # one draw writes no table of draws
    assert not (output_dir / "draws").exists()
    for name in ("config.json", "model.safetensors", "metrics_validation.json", "robustness_validation.json", "README.md"):
        assert (output_dir / name).is_file(), name
