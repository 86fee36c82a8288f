"""Every command's `--help` prints its options: argparse formats help texts with %, so one bare % broke one."""

from __future__ import annotations

import importlib

import pytest

ENTRY_POINTS = ["train.pipeline", "train.distill", "train.evaluate", "train.push", "train.explore", "train.ood",
                "train.calibrate", "train.policies", "train.shifts", "train.export_onnx", "train.convert_efficientnet_lite"]


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_help_lists_the_options(module, capsys):
    with pytest.raises(SystemExit) as leaving:
        importlib.import_module(module).main(["--help"])
    assert leaving.value.code == 0
    assert "--" in capsys.readouterr().out


def test_the_prediction_cli_help_lists_its_options(capsys):
    from chestxray.__main__ import main

    with pytest.raises(SystemExit) as leaving:
        main(["predict", "--help"])
    assert leaving.value.code == 0
    assert "--model" in capsys.readouterr().out
