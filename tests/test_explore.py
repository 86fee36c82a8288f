from __future__ import annotations

import json

from train.explore import main as explore_main


def test_explore_counts_sizes_and_draws_a_grid(tiny_image_folder, tmp_path, capsys):
    assert explore_main(["--data_dir", str(tiny_image_folder), "--output_dir", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["train"]["per_class"] == {"NORMAL": 29, "PNEUMONIA": 28}  # includes the corrupt file
    assert summary["train"]["unreadable_headers"] == 1
    assert summary["test"]["per_class"] == {"NORMAL": 8, "PNEUMONIA": 8}
    assert summary["train"]["patients_from_file_names"] == 29
    assert summary["train"]["most_common_sizes"][0][0] == "48x48"
    assert (tmp_path / "train_samples.png").stat().st_size > 1000
    assert "train" in capsys.readouterr().out
