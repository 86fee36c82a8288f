"""Train -> model folder -> pipeline() -> evaluate CLI -> card, as an ML engineer would use them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForImageClassification, pipeline
from transformers.trainer_utils import get_last_checkpoint

from conftest import CORRUPT_FILE, synthetic_xray, tiny_training_args
from train.card import render_card
from train.data import patient_id
from train.pipeline import main as train_main
from train.evaluate import main as evaluate_main

HUB_FILES = ["config.json", "model.safetensors", "preprocessor_config.json", "README.md", "training_args.json",
             "training_summary.json", "metrics_validation.json", "metrics_test.json", "splits/train.csv",
             "splits/validation.csv", "splits/test.csv", "training_curves.png", "validation_confusion_matrix.png",
             "validation_roc.png", "validation_reliability.png", "robustness_validation.json"]


def card_metadata(model_dir: Path) -> dict:
    text = (model_dir / "README.md").read_text()
    return yaml.safe_load(text.split("---")[1])


def model_index_values(model_dir: Path) -> dict[tuple[str, str], float]:
    results = card_metadata(model_dir)["model-index"][0]["results"]
    return {(r["dataset"]["split"], m["type"]): m["value"] for r in results for m in r["metrics"]}


def test_output_folder_is_a_complete_hub_repo(trained_model):
    for name in HUB_FILES:
        assert (trained_model / name).is_file(), name
    top_level_pickles = [p.name for p in trained_model.iterdir() if p.suffix in (".bin", ".pt", ".pkl", ".pth")]
    assert top_level_pickles == []
    config = json.loads((trained_model / "config.json").read_text())
    assert config["id2label"] == {"0": "NORMAL", "1": "PNEUMONIA"}
    assert 0.0 <= config["decision_threshold"] <= 1.0
    assert config["calibration_temperature"] > 0


def test_pipeline_loads_the_folder_unchanged_and_predicts(trained_model):
    model = AutoModelForImageClassification.from_pretrained(trained_model)
    assert model.config.label2id == {"NORMAL": 0, "PNEUMONIA": 1}
    classifier = pipeline("image-classification", model=str(trained_model))
    results = classifier([synthetic_xray(0, 12345), synthetic_xray(1, 12346)])
    for scores in results:
        assert {r["label"] for r in scores} == {"NORMAL", "PNEUMONIA"}
        assert sum(r["score"] for r in scores) == pytest.approx(1.0, abs=1e-5)


def test_model_learns_the_synthetic_task(trained_model):
    report = json.loads((trained_model / "metrics_validation.json").read_text())
    assert report["metrics"]["roc_auc"] >= 0.9  # bright opacities vs clear lungs is easy


def test_corrupt_image_is_skipped_and_counted(trained_model):
    summary = json.loads((trained_model / "training_summary.json").read_text())
    assert summary["skipped_files"] == {"train": [CORRUPT_FILE]}
    train_row = next(row for row in summary["split_counts"] if row["split"] == "train")
    assert train_row["skipped"] == 1
    card = (trained_model / "README.md").read_text()
    assert "| train |" in card and "| 1 |" in card
    listed = (trained_model / "splits" / "train.csv").read_text() + (trained_model / "splits" / "validation.csv").read_text()
    assert CORRUPT_FILE not in listed


def test_splits_keep_each_patient_on_one_side_and_never_touch_test(trained_model):
    def patients(split: str) -> set[str]:
        rows = (trained_model / "splits" / f"{split}.csv").read_text().splitlines()[1:]
        return {patient_id(row.split(",")[0]) for row in rows}

    train, validation, test = patients("train"), patients("validation"), patients("test")
    assert train and validation and test
    assert not train & validation
    assert not (train | validation) & test


def test_the_written_weights_are_readable_by_whoever_serves_them(trained_model):
    """safetensors writes 0600; a folder served from a container as another user must be readable (umask 022 here)."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    weights = sorted(trained_model.glob("*.safetensors"))
    assert weights and all(path.stat().st_mode & 0o777 == 0o644 & ~umask for path in weights)


def test_card_carries_the_measured_numbers(trained_model, tiny_image_folder):
    values = model_index_values(trained_model)
    for split in ("validation", "test"):
        measured = json.loads((trained_model / f"metrics_{split}.json").read_text())["metrics"]
        for metric in ("roc_auc", "accuracy", "sensitivity", "specificity", "f1"):
            assert values[(split, metric)] == pytest.approx(measured[metric], abs=1e-4)
    metadata = card_metadata(trained_model)
    assert metadata["pipeline_tag"] == "image-classification"
    assert "datasets" not in metadata  # trained from a local folder not declared a copy of a Hub dataset
    assert {entry["dataset"]["type"] for entry in metadata["model-index"][0]["results"]} == {"imagefolder"}
    assert all("`" not in entry["dataset"]["name"] and "/" not in entry["dataset"]["name"]
               for entry in metadata["model-index"][0]["results"])  # Hub metadata: no local paths, no Markdown
    text = (trained_model / "README.md").read_text()
    assert str(tiny_image_folder) not in text and str(tiny_image_folder.parent) not in text  # no local path either
    assert "not a medical device" in text
    assert "Trained from random initialisation (no pretrained weights)." in text
    assert "patient-level hold-out" in text
    assert "it was not available where this model was trained" not in text  # this one has a test split


def test_a_card_for_someone_elses_xrays_names_neither_kermany_nor_guangzhou(tmp_path):
    """Plain file names, no Hub id: the card must not claim the Kermany films' source, hospital or citation."""
    from conftest import synthetic_xray, tiny_training_args
    from train.pipeline import main as train_main

    for split, count in (("train", 40), ("test", 8)):
        for i in range(count):
            folder = tmp_path / "my_xrays" / split / ("PNEUMONIA" if i % 2 else "NORMAL")
            folder.mkdir(parents=True, exist_ok=True)
            synthetic_xray(i % 2, 7000 + i + (100 if split == "test" else 0)).save(folder / f"scan{i:03d}.png")
    output_dir = tmp_path / "their-model"
    arguments = tiny_training_args(tmp_path / "my_xrays", output_dir, "--num_train_epochs", "1", "--export_onnx", "false")
    assert train_main(arguments) == 0
    card = (output_dir / "README.md").read_text()
    assert json.loads((output_dir / "training_summary.json").read_text())["data_is_kermany"] is False
    for claim in ("Kermany", "Guangzhou", "kermany2018"):
        assert claim not in card, claim
    assert "Chest X-rays from a local image folder (`my_xrays`)" in card and "not a medical device" in card


def test_the_bundled_card_says_the_official_test_split_was_not_available():
    model = Path(__file__).resolve().parent.parent / "model"
    if (model / "metrics_test.json").is_file():
        pytest.skip("the bundled model has been evaluated on a test split")
    assert "**it was not available where this model was trained**: no figure in this card comes from it" in (model / "README.md").read_text()


def test_evaluate_cli_uses_stored_threshold_and_updates_the_card(trained_model, tiny_image_folder, tmp_path, capsys):
    import shutil

    model_copy = tmp_path / "model"
    shutil.copytree(trained_model, model_copy, ignore=shutil.ignore_patterns("checkpoint-*"))
    (model_copy / "metrics_test.json").unlink()
    render_card(model_copy)
    assert ("test", "roc_auc") not in model_index_values(model_copy)

    code = evaluate_main(["--model", str(model_copy), "--data_dir", str(tiny_image_folder), "--split", "test", "--update_card"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out.split("\nskipped")[0])
    stored_threshold = json.loads((model_copy / "config.json").read_text())["decision_threshold"]
    assert printed["threshold"] == pytest.approx(stored_threshold)
    assert printed["support"] == 16
    assert model_index_values(model_copy)[("test", "roc_auc")] == pytest.approx(printed["roc_auc"], abs=1e-4)
    assert (model_copy / "test_confusion_matrix.png").is_file()
    # Same model, same data, same stored operating point: the training-time test report is reproduced.
    original = json.loads((trained_model / "metrics_test.json").read_text())["metrics"]
    assert printed["confusion_matrix"] == original["confusion_matrix"]


def test_evaluate_cli_reports_a_missing_split_clearly(trained_model, tiny_image_folder, tmp_path, capsys):
    code = evaluate_main(["--model", str(trained_model), "--data_dir", str(tiny_image_folder), "--split", "holdout",
                          "--output_dir", str(tmp_path)])
    assert code == 1
    assert "No `holdout` split in the data; available: train, test" in capsys.readouterr().err


def test_evaluate_cli_with_a_hub_dataset_out_of_reach_is_one_line(trained_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    code = evaluate_main(["--model", str(trained_model), "--dataset_name", "someone/chest-xrays", "--split", "test",
                          "--output_dir", str(tmp_path)])
    error = capsys.readouterr().err
    assert code == 1 and error.startswith("error: ") and "someone/chest-xrays" in error and "Traceback" not in error


def test_evaluate_cli_scores_the_models_own_carved_validation_with_intervals(trained_model, tiny_image_folder, tmp_path, capsys):
    """The data has no validation folder; the model's `splits/validation.csv` names its carved films in train."""
    import shutil

    model_copy = tmp_path / "model"
    shutil.copytree(trained_model, model_copy, ignore=shutil.ignore_patterns("checkpoint-*"))
    trained = json.loads((trained_model / "metrics_validation.json").read_text())
    code = evaluate_main(["--model", str(model_copy), "--data_dir", str(tiny_image_folder), "--split", "validation",
                          "--update_card"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out.split("\nskipped")[0])
    assert printed["confusion_matrix"] == trained["metrics"]["confusion_matrix"]  # the same films, the same calls
    assert printed["support"] == trained["metrics"]["support"]
    rewritten = json.loads((model_copy / "metrics_validation.json").read_text())
    assert rewritten["dataset"] == trained["dataset"]  # training's description of these films is kept
    intervals = printed["intervals"]
    for metric in ("accuracy", "sensitivity", "specificity"):
        low, high = intervals[metric]
        assert 0.0 <= low <= printed[metric] <= high <= 1.0
    text = (model_copy / "README.md").read_text()
    low, high = intervals["specificity"]
    assert f"{low:.3f}–{high:.3f}" in text and "95 % interval" in text


def test_training_accepts_one_json_file(tiny_image_folder, tmp_path):
    from train.pipeline import parse_arguments

    config = {"data_dir": str(tiny_image_folder), "output_dir": str(tmp_path / "out"), "model_size": "femto",
              "image_size": 64, "learning_rate": 0.002, "horizontal_flip": True}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    model_args, data_args, training_args = parse_arguments([str(path)])
    assert (model_args.model_size, model_args.image_size, data_args.horizontal_flip) == ("femto", 64, True)
    assert training_args.learning_rate == 0.002
    assert training_args.metric_for_best_model == "roc_auc" and training_args.load_best_model_at_end


def test_retraining_into_a_folder_drops_what_the_previous_model_left(trained_model, tiny_image_folder, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(trained_model, folder)
    (folder / "operating_points.json").write_text(json.dumps({"made_on": "another model's sibling"}))
    holdout = json.loads((folder / "metrics_validation.json").read_text()) | {"split": "batch_holdout"}
    (folder / "metrics_batch_holdout.json").write_text(json.dumps(holdout))  # as a hold-out run would have left
    stale = {"operating_points.json", "metrics_batch_holdout.json", "ood_reference.safetensors", "robustness_validation.json",
             "onnx/model.onnx"}
    assert all((folder / name).exists() for name in stale)
    # Without checks or a hold-out this run rewrites none of them; no earlier model's result may stay in its folder.
    assert train_main(tiny_training_args(tiny_image_folder, folder, "--post_training_checks", "false")) == 0
    assert not [name for name in stale if (folder / name).exists()]
    card = (folder / "README.md").read_text()
    assert "python -m train.policies" not in card and "batch_holdout" not in card
    assert json.loads((folder / "metrics_validation.json").read_text())["split"] == "validation"


def test_both_data_sources_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="exactly one of --dataset_name"):
        from train.pipeline import parse_arguments

        parse_arguments(["--data_dir", str(tmp_path), "--dataset_name", "a/b"])


def test_resume_continues_from_the_last_checkpoint(tiny_image_folder, tmp_path):
    output_dir = tmp_path / "resumable"
    first = tiny_training_args(tiny_image_folder, output_dir, "--early_stopping_patience", "0", "--save_total_limit", "5")
    assert train_main([*first[:first.index("--num_train_epochs")], "--num_train_epochs", "2",
                       *first[first.index("--num_train_epochs") + 2:]]) == 0
    state_after_two = json.loads((Path(get_last_checkpoint(output_dir)) / "trainer_state.json").read_text())
    assert state_after_two["epoch"] == 2
    assert train_main([*first, "--resume_from_checkpoint", "last"]) == 0
    final_state = json.loads((Path(get_last_checkpoint(output_dir)) / "trainer_state.json").read_text())
    assert final_state["epoch"] == 3
    evals = lambda state: [row["eval_loss"] for row in state["log_history"] if "eval_loss" in row]
    # the first two epochs were not redone: their history is carried over as it was
    assert evals(final_state)[:2] == evals(state_after_two)


def test_calibrate_refits_the_operating_point_and_the_card_follows(trained_model, tiny_image_folder, tmp_path):
    import shutil

    from train.calibrate import main as calibrate_main

    model = tmp_path / "model"
    shutil.copytree(trained_model, model, ignore=shutil.ignore_patterns("checkpoint-*"))
    assert calibrate_main(["--model_dir", str(model), "--data_dir", str(tiny_image_folder),
                           "--threshold_strategy", "fixed", "--fixed_threshold", "0.9"]) == 0
    config = json.loads((model / "config.json").read_text())
    assert config["decision_threshold"] == 0.9
    report = json.loads((model / "metrics_validation.json").read_text())
    assert report["metrics"]["threshold"] == 0.9
    assert report["metrics"]["support"] == len((model / "splits" / "validation.csv").read_text().splitlines()) - 1
    assert "≥ **0.9000**" in (model / "README.md").read_text()
    # the summary (and so the card) keeps the whole calibration folded into the head, not the refit's step (~1, ~0)
    summary = json.loads((model / "training_summary.json").read_text())["operating_point"]
    folded = config["calibration_folded_into_head"]
    assert (summary["temperature"], summary["bias"]) == (folded["temperature"], folded["bias"])


def test_ood_reference_can_be_added_to_an_existing_folder(trained_model, tiny_image_folder, tmp_path):
    import shutil

    from chestxray import PneumoniaClassifier
    from train.ood import main as ood_main

    model = tmp_path / "model"
    shutil.copytree(trained_model, model, ignore=shutil.ignore_patterns("checkpoint-*", "ood_reference.*"))
    assert PneumoniaClassifier.from_pretrained(model).ood_reference is None
    assert ood_main(["--model_dir", str(model), "--data_dir", str(tiny_image_folder)]) == 0
    stats = json.loads((model / "ood_reference.json").read_text())
    assert stats["held_out_flag_rate"] == 0.0
    assert PneumoniaClassifier.from_pretrained(model).ood_reference.threshold == pytest.approx(stats["threshold"])


def test_card_shows_the_threshold_under_acquisition_shifts(trained_model, tiny_image_folder, tmp_path, capsys):
    import shutil

    from train.shifts import ROBUSTNESS_FILE, SHIFTS
    from train.shifts import main as shifts_main

    stored = json.loads((trained_model / ROBUSTNESS_FILE).read_text())
    assert [row["shift"] for row in stored["shifts"]] == list(SHIFTS)
    assert stored["images"] == len((trained_model / "splits" / "validation.csv").read_text().splitlines()) - 1
    unchanged = stored["shifts"][0]
    validation = json.loads((trained_model / "metrics_validation.json").read_text())["metrics"]
    assert (unchanged["sensitivity"], unchanged["specificity"]) == (validation["sensitivity"], validation["specificity"])
    card = (trained_model / "README.md").read_text()
    assert "Robustness to acquisition shifts" in card and "| crop to central 85 % |" in card

    # The CLI measures the same table for a folder that lacks it, and stores it with --write.
    model = tmp_path / "model"
    shutil.copytree(trained_model, model, ignore=shutil.ignore_patterns("checkpoint-*", ROBUSTNESS_FILE))
    assert "Robustness to acquisition shifts" not in render_card(model).content
    assert shifts_main(["--model_dir", str(model), "--data_dir", str(tiny_image_folder), "--write"]) == 0
    measured = json.loads((model / ROBUSTNESS_FILE).read_text())  # ONNX Runtime now, PyTorch in training: same to ~1e-6
    assert [row["shift"] for row in measured["shifts"]] == list(SHIFTS)
    for again, before in zip(measured["shifts"], stored["shifts"]):
        assert again == pytest.approx(before, abs=0.01)
    assert "| gamma 0.7 |" in capsys.readouterr().out
    assert "Robustness to acquisition shifts" in (model / "README.md").read_text()


def test_evaluating_on_training_images_warns_that_they_were_trained_on(trained_model, tiny_image_folder, tmp_path, capsys):
    code = evaluate_main(["--model", str(trained_model), "--data_dir", str(tiny_image_folder), "--split", "train",
                          "--output_dir", str(tmp_path / "evaluation")])
    assert code == 0
    warning = capsys.readouterr().err
    assert "were in this model's training set" in warning
    report = json.loads((tmp_path / "evaluation" / "metrics_train.json").read_text())
    assert 0.5 < report["trained_on_fraction"] < 1.0  # validation was carved from the same split
