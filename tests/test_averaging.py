"""The weight average: what the Trainer evaluates, checkpoints and keeps, and the training weights it leaves alone."""

import json

import pytest
import torch
from transformers import TrainerControl, TrainerState, TrainingArguments

from conftest import tiny_training_args
from train.averaging import WeightAverageCallback


def weights(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def backbone(model: torch.nn.Module) -> torch.Tensor:
    """All but the head, which the pipeline calibrates after training."""
    return torch.cat([p.detach().flatten() for name, p in model.named_parameters() if not name.startswith("classifier")])


def step_to(model: torch.nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)


def test_the_average_is_swapped_in_to_check_and_out_to_train(tmp_path):
    model = torch.nn.Linear(3, 2)
    step_to(model, 1.0)
    args = TrainingArguments(output_dir=str(tmp_path), load_best_model_at_end=False, report_to=[])
    state, control = TrainerState(), TrainerControl()
    callback = WeightAverageCallback(decay=0.75)
    callback.on_train_begin(args, state, control, model=model)
    step_to(model, 5.0)  # an optimizer step
    callback.on_optimizer_step(args, state, control, model=model)
    assert torch.allclose(callback.average[0], torch.full((2, 3), 0.75 * 1 + 0.25 * 5))

    callback.on_step_end(args, state, control, model=model)  # nothing to check: the training weights stay
    assert torch.equal(weights(model), torch.full((8,), 5.0))
    control.should_evaluate = True
    callback.on_epoch_end(args, state, control, model=model)
    assert torch.allclose(weights(model), torch.full((8,), 2.0))
    callback.on_step_end(args, state, control, model=model)  # a second check before training goes on: no double swap
    assert torch.allclose(weights(model), torch.full((8,), 2.0))
    callback.on_step_begin(args, state, control, model=model)
    assert torch.equal(weights(model), torch.full((8,), 5.0))

    callback.on_train_end(args, state, control, model=model)  # no best checkpoint loaded: the average is kept
    assert torch.allclose(weights(model), torch.full((8,), 2.0))


def test_a_decay_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError):
        WeightAverageCallback(decay=1.0)


def test_training_with_a_weight_average_evaluates_and_saves_the_average(tiny_image_folder, tmp_path, monkeypatch):
    import train.averaging
    from train.pipeline import main as train_main

    evaluated = []

    class Recording(train.averaging.WeightAverageCallback):
        def on_evaluate(self, args, state, control, model=None, **kwargs):
            assert self.swapped  # validation saw the average
            evaluated.append(backbone(model))

    monkeypatch.setattr("train.pipeline.WeightAverageCallback", Recording)
    output_dir = tmp_path / "averaged"
    assert train_main(tiny_training_args(tiny_image_folder, output_dir, "--weight_average_decay", "0.9",
                                         "--post_training_checks", "false")) == 0
    summary = json.loads((output_dir / "training_summary.json").read_text())
    assert summary["hyperparameters"]["weight average (EMA decay per step; 0: off)"] == 0.9
    from transformers import AutoModelForImageClassification

    saved = backbone(AutoModelForImageClassification.from_pretrained(output_dir))
    assert len(evaluated) == 3 and torch.allclose(saved, evaluated[int(summary["best_epoch"]) - 1])
