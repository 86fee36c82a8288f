"""An exponential moving average (EMA) of the weights, evaluated, checkpointed and kept in place of the last step's.

The average of the recent weights usually sits in a flatter part of the loss than any one step's, which is what a
new batch of films asks for. After every optimizer step: `average = decay * average + (1 - decay) * weights`
(floating-point parameters and buffers, BatchNorm statistics included), starting from the weights training
starts from. Whenever the Trainer is about to evaluate or save, the averaged weights are swapped into the model,
so validation, the best-checkpoint choice and the saved folder all see the average; the training weights are
swapped back before the next step. A resumed run restarts the average from the checkpoint's (averaged) weights.
"""

from __future__ import annotations

import torch
from transformers import TrainerCallback


class WeightAverageCallback(TrainerCallback):
    def __init__(self, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError("The weight-average decay must be between 0 and 1 (exclusive).")
        self.decay = decay
        self.average: list[torch.Tensor] | None = None
        self.swapped = False  # True while the model holds the average (and `average` the training weights)

    @staticmethod
    def _tensors(model: torch.nn.Module) -> list[torch.Tensor]:
        return [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.average = [t.detach().clone() for t in self._tensors(model)]
        self.swapped = False

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        with torch.no_grad():
            torch._foreach_lerp_(self.average, [t.detach() for t in self._tensors(model)], 1.0 - self.decay)

    def _swap(self, model: torch.nn.Module) -> None:
        with torch.no_grad():
            for tensor, other in zip(self._tensors(model), self.average):
                held = tensor.detach().clone()
                tensor.copy_(other)
                other.copy_(held)
        self.swapped = not self.swapped

    def _average_in_if_checking(self, control, model) -> None:
        if (control.should_evaluate or control.should_save) and not self.swapped:
            self._swap(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._average_in_if_checking(control, model)

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        self._average_in_if_checking(control, model)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.swapped:
            self._swap(model)  # the training weights back

    def on_train_end(self, args, state, control, model=None, **kwargs):
        # The best checkpoint, when one was loaded, already holds averaged weights; otherwise keep the average.
        if not (args.load_best_model_at_end and state.best_model_checkpoint) and not self.swapped:
            self._swap(model)
        self.average, self.swapped = None, False
