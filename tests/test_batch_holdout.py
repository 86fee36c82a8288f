"""The new-batch check: `python -m train --holdout_normal_batch NORMAL2` keeps one NORMAL batch (and a matched
share of PNEUMONIA patients) out of training and validation, and reports the stored threshold's specificity on it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import tiny_training_args, write_image_folder
from train.calibration import choose_threshold, sensitivity_specificity
from train.data import hold_out_normal_batch, image_name, load_raw_dataset, normal_batch, patient_id
from train.card import POLICIES_FILE
from train.policies import POLICIES, compare, main as policies_main


@pytest.mark.parametrize("name, batch", [("NORMAL2-IM-0123-0001.jpeg", "NORMAL2"), ("IM-0115-0001.jpeg", "IM"),
                                         ("person1_virus_6.jpeg", None), ("normal2-im-1-1.jpeg", "NORMAL2")])
def test_normal_batch_from_the_file_name(name, batch):
    assert normal_batch(name) == batch


def test_the_whole_batch_and_a_matched_share_of_pneumonia_patients_are_held_out(tmp_path):
    train = load_raw_dataset(None, str(write_image_folder(tmp_path / "data", {"train": 20}, images_per_patient=2)))["train"]
    rest, held = hold_out_normal_batch(train, "NORMAL2", None, seed=3)
    names = lambda ds, label: [image_name(c) for c, l in zip(ds["image"], ds["label"]) if l == label]  # noqa: E731
    assert names(held, 0) and all(normal_batch(n) == "NORMAL2" for n in names(held, 0))
    assert all(normal_batch(n) == "IM" for n in names(rest, 0))
    normal_share = len(names(held, 0)) / (len(names(held, 0)) + len(names(rest, 0)))
    pneumonia_share = len(names(held, 1)) / (len(names(held, 1)) + len(names(rest, 1)))
    assert pneumonia_share == pytest.approx(normal_share, abs=0.1)
    assert not {patient_id(n) for n in names(held, 1)} & {patient_id(n) for n in names(rest, 1)}
    again_rest, again_held = hold_out_normal_batch(train, "NORMAL2", None, seed=3)
    assert [image_name(c) for c in again_held["image"]] == [image_name(c) for c in held["image"]]
    _, smaller = hold_out_normal_batch(train, "IM", 0.2, seed=3)
    assert len(names(smaller, 1)) == pytest.approx(0.2 * np.sum(np.asarray(train["label"]) == 1), abs=2)


def test_a_batch_absent_from_the_data_is_a_clear_error(tmp_path, capsys):
    from train.pipeline import main as train_main

    root = tmp_path / "data"
    write_image_folder(root, {"train": 6})
    for path in (root / "train" / "NORMAL").glob("NORMAL2-*"):
        path.unlink()
    assert train_main(["--data_dir", str(root), "--output_dir", str(tmp_path / "o"), "--holdout_normal_batch", "normal2",
                       "--use_cpu"]) == 1
    assert "no NORMAL image is named like that batch (NORMAL2-IM-" in capsys.readouterr().err


def test_training_reports_specificity_on_the_held_out_batch(tiny_image_folder, tmp_path, capsys):
    from train.pipeline import main as train_main

    output_dir = tmp_path / "new-batch-check"
    args = tiny_training_args(tiny_image_folder, output_dir, "--holdout_normal_batch", "NORMAL2", "--margin_augmentation", "0.5",
                              "--export_onnx", "false")
    assert train_main(args) == 0
    listed = {split: (output_dir / "splits" / f"{split}.csv").read_text().splitlines()[1:]
              for split in ("train", "validation", "batch_holdout")}
    assert not any(row.startswith("NORMAL2-") for split in ("train", "validation") for row in listed[split])
    assert any(row.startswith("NORMAL2-") for row in listed["batch_holdout"])
    patients = {split: {patient_id(row.split(",")[0]) for row in rows} for split, rows in listed.items()}
    assert not patients["batch_holdout"] & (patients["train"] | patients["validation"])

    summary = json.loads((output_dir / "training_summary.json").read_text())
    entry = summary["batch_holdout"]
    metrics = json.loads((output_dir / "metrics_batch_holdout.json").read_text())["metrics"]
    stored = json.loads((output_dir / "config.json").read_text())["decision_threshold"]
    assert entry["normal_batch"] == "NORMAL2" and entry["threshold"] == pytest.approx(stored)
    assert (entry["specificity"], entry["sensitivity"]) == (metrics["specificity"], metrics["sensitivity"])
    assert entry["normal"] == sum(row.split(",")[1] == "NORMAL" for row in listed["batch_holdout"]) > 0
    assert summary["hyperparameters"]["margin augmentation (probability, largest share of a side)"].startswith("0.5")
    assert "### batch_holdout" in (output_dir / "README.md").read_text()

    # train.policies on the same folder: each threshold policy, chosen on validation, judged on the batch hold-out
    recorded_in = tmp_path / "full-data-model"
    shutil.copytree(output_dir, recorded_in)
    assert policies_main(["--model_dir", str(output_dir), "--data_dir", str(tiny_image_folder), "--record_in", str(recorded_in)]) == 0
    result = json.loads((output_dir / POLICIES_FILE).read_text())
    assert json.loads((recorded_in / POLICIES_FILE).read_text()) == result
    card = (recorded_in / "README.md").read_text()
    assert "**Why this policy.**" in card and "`NORMAL2` NORMAL batch held out entirely" in card
    assert f"| `youden_at_min_sensitivity 0.97` | {result['policies'][1]['threshold']:.4f} |" in card
    chosen = next(row for row in result["policies"] if row["policy"] == "youden_at_min_sensitivity 0.95")  # the run's own policy
    assert (chosen["strategy"], chosen["min_sensitivity"]) == ("youden_at_min_sensitivity", 0.95)
    assert f"This model's policy, `youden_at_min_sensitivity 0.95`, kept sensitivity\n{chosen['holdout_sensitivity']:.3f}" in card
    assert result["holdout_images"] == len(listed["batch_holdout"])
    assert result["holdout_normal"] == entry["normal"]
    assert [row["policy"] for row in result["policies"]][:2] == ["youden_at_min_sensitivity 0.99", "youden_at_min_sensitivity 0.97"]
    assert len(result["policies"]) == len(POLICIES)
    assert "| youden |" in capsys.readouterr().out


def test_policies_compare_thresholds_chosen_on_validation_only():
    rng = np.random.default_rng(0)
    validation = (np.array([0] * 50 + [1] * 50), np.concatenate([rng.uniform(0, 0.6, 50), rng.uniform(0.4, 1, 50)]))
    holdout = (np.array([0] * 40 + [1] * 10), np.concatenate([rng.uniform(0.2, 0.8, 40), rng.uniform(0.5, 1, 10)]))
    for (strategy, floor), row in zip(POLICIES, compare(validation, holdout)):
        threshold = choose_threshold(*validation, strategy, floor or 0.0)[0]
        sensitivity, specificity = sensitivity_specificity(*holdout, threshold)
        assert row["threshold"] == pytest.approx(threshold, abs=1e-4)
        assert (row["holdout_sensitivity"], row["holdout_specificity"]) == (round(sensitivity, 4), round(specificity, 4))
        assert row["holdout_accuracy"] == pytest.approx((10 * sensitivity + 40 * specificity) / 50, abs=1e-4)


def test_policies_need_a_batch_holdout(trained_model, tiny_image_folder, capsys):
    assert policies_main(["--model_dir", str(trained_model), "--data_dir", str(tiny_image_folder)]) == 1
    assert "train the model with --holdout_normal_batch first" in capsys.readouterr().err


def test_several_draws_keep_the_best_on_validation_and_report_each_on_the_held_out_batch(tiny_image_folder, tmp_path):
    from train.pipeline import DRAWS_DIR, main as train_main

    output_dir = tmp_path / "three-draws"
    args = tiny_training_args(tiny_image_folder, output_dir, "--holdout_normal_batch", "NORMAL2", "--draws", "3",
                              "--export_onnx", "false", "--num_train_epochs", "2")
    assert train_main(args) == 0
    summary = json.loads((output_dir / "training_summary.json").read_text())
    draws = summary["draws"]
    assert [draw["seed"] for draw in draws] == [1, 2, 3]  # --seed 1, then 2 and 3, on one split
    scores = [draw["validation_roc_auc"] for draw in draws]
    kept = draws[scores.index(max(scores))]  # the first of equals
    assert summary["hyperparameters"]["seed"] == kept["seed"]
    validation = json.loads((output_dir / "metrics_validation.json").read_text())["metrics"]
    assert validation["roc_auc"] == pytest.approx(kept["validation_roc_auc"], abs=1e-3)  # the folder holds the kept draw
    holdout = json.loads((output_dir / "metrics_batch_holdout.json").read_text())["metrics"]
    assert (kept["batch_holdout_specificity"], kept["batch_holdout_sensitivity"]) == pytest.approx(
        (holdout["specificity"], holdout["sensitivity"]), abs=1e-4)
    assert all({"batch_holdout_roc_auc", "minutes"} <= set(draw) for draw in draws)
    assert json.loads((output_dir / "training_args.json").read_text())["training"]["seed"] == 1  # the run's own --seed
    assert not (output_dir / DRAWS_DIR).exists()  # the draws' checkpoints go once one is kept
    card = (output_dir / "README.md").read_text()
    assert "Best of 3 draws" in card and f"| {kept['seed']} | {kept['validation_roc_auc']} |" in card


def test_the_better_draw_is_the_one_with_the_better_validation_score():
    from types import SimpleNamespace

    from train.pipeline import better_draw

    def draw(seed, score):
        return SimpleNamespace(seed=seed, trainer=SimpleNamespace(state=SimpleNamespace(best_metric=score)))

    first, second, tied, unscored = draw(1, 0.90), draw(2, 0.95), draw(3, 0.95), draw(4, None)
    assert better_draw(None, first, True) is first
    assert better_draw(first, second, True) is second and better_draw(second, first, True) is second
    assert better_draw(second, tied, True) is second  # the earlier on a tie
    assert better_draw(first, second, False) is first  # a loss: lower is better
    assert better_draw(first, unscored, True) is first and better_draw(unscored, first, True) is first


@pytest.mark.parametrize("flags, message", [
    (["--draws", "0"], "--draws must be 1 or more"),
    (["--draws", "2", "--load_best_model_at_end", "false"], "needs evaluation and --load_best_model_at_end true"),
    (["--draws", "2", "--resume_from_checkpoint", "some/checkpoint-9"], "would start every draw from it"),
])
def test_draws_refuse_what_they_cannot_honour(tiny_image_folder, tmp_path, capsys, flags, message):
    from train.pipeline import main as train_main

    assert train_main(tiny_training_args(tiny_image_folder, tmp_path / "o", *flags)) == 1
    assert message in capsys.readouterr().err
