"""Knowledge distillation: a small, fast student learns from one or more bigger teachers' soft labels.

The teachers are model folders this same pipeline wrote (say EfficientNet-Lite0 fine-tuned from ImageNet); the
student is what gets bundled (ConvNeXt or ViT, small and fast). Each teacher sees the student's augmented
image through its **own** preprocessing (size, normalisation), computed in the data transform exactly as it
would be served, and its logits are averaged over teachers. The loss (Hinton et al. 2015):

    (1 - w) * CE(labels; class weights, label smoothing) + w * T^2 * KL(softmax(teacher / T) || softmax(student / T))

Teachers stay in eval mode without gradients; evaluation uses the plain CE (the validation data carry no
teacher inputs), so eval_loss stays comparable with runs without a teacher. On the CPU the teachers run on ONNX
Runtime (their folder's export, or one made for this run in a temporary folder): the same logits to ~1e-6, and an
EfficientNet-Lite0 teacher's forward pass costs a third of PyTorch's there, which most of a student step was.

The recipe that trains teachers and student in one command is `train.distill`.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import Trainer

from chestxray.classifier import ModelLoadError, PneumoniaClassifier
from chestxray.imaging import to_model_input
from chestxray.preprocess import Preprocessing
from chestxray.runtime import OnnxRuntimeNetwork, first_line
from train.card import published_path
from train.data import LABEL2ID

TEACHER_INPUT_PREFIX = "teacher_pixel_values_"

logger = logging.getLogger(__name__)


def teacher_paths(values: str | Sequence[str] | None) -> list[str]:
    """`a,b`, `["a", "b"]` or `["a,b"]` (CLI, JSON config) -> ["a", "b"]."""
    if not values:
        return []
    values = [values] if isinstance(values, str) else values
    return [path.strip() for value in values for path in str(value).split(",") if path.strip()]


def teacher_pixel_values(processors: Sequence[Preprocessing], images: Sequence[Image.Image]) -> dict[str, list[torch.Tensor]]:
    """Per-example pixel values for every distinct teacher preprocessing (the training transform's extra keys;
    it needs only the processors, so data-loader workers never carry the teacher networks)."""
    rgb = [to_model_input(image) for image in images]
    return {f"{TEACHER_INPUT_PREFIX}{g}": list(processor(rgb)) for g, processor in enumerate(processors)}


@dataclass
class Teachers:
    """Frozen teacher networks, their distinct preprocessings, and which preprocessing feeds which teacher."""

    classifiers: list[PneumoniaClassifier]
    processors: list[Preprocessing]
    processor_of: list[int]
    sources: list[str]
    exports: tempfile.TemporaryDirectory | None = None  # ONNX exports made for this run (kept while it lasts)

    @property
    def largest_side(self) -> int:
        return max(max(p.height, p.width) for p in self.processors)

    def inputs(self, images: Sequence[Image.Image]) -> dict[str, list[torch.Tensor]]:
        return teacher_pixel_values(self.processors, images)

    @torch.no_grad()
    def logits(self, pixels: dict[str, torch.Tensor], device: torch.device, bf16: bool = False) -> torch.Tensor:
        """The teachers' mean calibrated logits (what their decisions use), in float32."""
        total = None
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        for classifier, g in zip(self.classifiers, self.processor_of):
            inputs = pixels[f"{TEACHER_INPUT_PREFIX}{g}"]
            if device.type == "cpu" and classifier.onnx_network is not None:
                logits = classifier.onnx_network(inputs.float().contiguous())[0]
            else:
                model = classifier.model
                if next(model.parameters()).device != device:
                    model.to(device)
                with autocast:
                    logits = model(pixel_values=inputs.to(device)).logits.float()
            logits = logits.to(device)
            logits = logits / classifier.temperature  # 1 and 0 when the calibration is folded into the head
            logits[:, classifier.positive_index] += classifier.bias
            total = logits if total is None else total + logits
        return total / len(self.classifiers)


def load_teachers(paths: Sequence[str], onnx: bool = True) -> Teachers:
    """Each teacher folder as the app would load it; its labels must be the student's. With `onnx`, a teacher
    whose folder has no matching ONNX export gets one in a temporary folder (CPU training runs on it)."""
    classifiers, processors, processor_of = [], [], []
    exports = None
    for path in paths:
        try:
            classifier = PneumoniaClassifier.from_pretrained(path, runtime="auto" if onnx else "pytorch")
        except ModelLoadError as error:
            raise ValueError(f"Teacher: {error}") from None
        labels = {name.upper(): int(index) for name, index in classifier.config.label2id.items()}
        if labels != LABEL2ID:
            raise ValueError(f"Teacher `{path}` has the labels {classifier.config.label2id}; the student's are {LABEL2ID}.")
        if classifier.processor not in processors:
            processors.append(classifier.processor)
        processor_of.append(processors.index(classifier.processor))
        if onnx and classifier.onnx_network is None:
            exports = exports or tempfile.TemporaryDirectory(prefix="teacher-onnx-")
            classifier.onnx_network = export_teacher(classifier, path, Path(exports.name) / str(len(classifiers)))
        classifiers.append(classifier)
    return Teachers(classifiers, processors, processor_of, list(paths), exports)


def export_teacher(classifier: PneumoniaClassifier, source: str, folder: Path) -> OnnxRuntimeNetwork | None:
    """An ONNX Runtime copy of a teacher, checked against its PyTorch weights; None (PyTorch then) if that fails."""
    from train.export_onnx import export_onnx  # imports the exporter only when a teacher needs it

    try:
        return OnnxRuntimeNetwork(export_onnx(classifier, Path(classifier.source), destination=folder),
                                  torch.get_num_threads())
    except Exception as error:  # noqa: BLE001 - a missing exporter or a failed check only costs speed
        logger.warning("Teacher %s runs on PyTorch (no ONNX export: %s).", source, first_line(error))
        return None


def distillation_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                      num_items: int | torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * KL(teacher || student) at temperature T, summed over the batch and divided like the CE term."""
    kl = F.kl_div(F.log_softmax(student_logits.float() / temperature, dim=-1),
                  F.log_softmax(teacher_logits.float() / temperature, dim=-1), log_target=True, reduction="sum")
    return temperature**2 * kl / (num_items if num_items is not None else student_logits.shape[0])


def tighter_framings(pixels: torch.Tensor, max_zoom: float, generator: torch.Generator) -> torch.Tensor:
    """Each image cropped to a random box (1 - `max_zoom` to 1 of its width, and independently of its height,
    anywhere inside it) and squashed back to its size: the same film framed tighter and with another shape, as
    another site's collimation frames it (the processor squashes every film to a square, so a film's shape
    becomes its anatomy's proportions)."""
    count = pixels.shape[0]
    scale = 1 - max_zoom * torch.rand(count, 2, generator=generator)  # (x, y)
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = scale[:, 0], scale[:, 1]
    theta[:, :, 2] = (1 - scale) * (2 * torch.rand(count, 2, generator=generator) - 1)
    grid = F.affine_grid(theta.to(pixels), list(pixels.shape), align_corners=False)
    return F.grid_sample(pixels, grid, mode="bilinear", padding_mode="border", align_corners=False)


class DistillationLoss:
    """The Trainer's `compute_loss_func`: the hard-label loss, blended with the teachers' soft labels when the
    trainer has put them in `teacher_logits` for this batch, plus the framing-consistency term when it has put
    the student's logits on tighter framings in `tighter_logits` (training steps only)."""

    def __init__(self, hard_loss, temperature: float, weight: float, consistency_weight: float = 0.0) -> None:
        self.hard_loss, self.temperature, self.weight = hard_loss, temperature, weight
        self.consistency_weight = consistency_weight
        self.teacher_logits: torch.Tensor | None = None
        self.tighter_logits: torch.Tensor | None = None

    def __call__(self, outputs, labels, num_items_in_batch=None):
        loss = self.hard_loss(outputs, labels, num_items_in_batch=num_items_in_batch)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        if self.teacher_logits is not None:
            soft = distillation_term(logits, self.teacher_logits.to(logits.device), self.temperature, num_items_in_batch)
            loss = (1 - self.weight) * loss + self.weight * soft
        if self.tighter_logits is not None:  # the image's own answer is the target: the tighter copy moves to it
            loss = loss + self.consistency_weight * distillation_term(self.tighter_logits, logits.detach(), self.temperature,
                                                                      num_items_in_batch)
        return loss


class DistillationTrainer(Trainer):
    """A Trainer whose training batches carry teacher inputs (it turns them into teacher logits for the loss) and,
    with a framing-consistency weight, a second forward pass on tighter framings of the same images."""

    def __init__(self, *args, teachers: Teachers | None, consistency_zoom: float = 0.25, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.teachers, self.consistency_zoom = teachers, consistency_zoom
        self.framing_generator = torch.Generator().manual_seed(self.args.seed)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        teacher_pixels = {key: inputs.pop(key) for key in list(inputs) if key.startswith(TEACHER_INPUT_PREFIX)}
        loss_function = self.compute_loss_func
        if teacher_pixels and model.training:
            loss_function.teacher_logits = self.teachers.logits(teacher_pixels, self.args.device, bool(self.args.bf16))
        if loss_function.consistency_weight > 0 and model.training:
            tighter = tighter_framings(inputs["pixel_values"], self.consistency_zoom, self.framing_generator)
            loss_function.tighter_logits = model(pixel_values=tighter).logits
        try:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        finally:
            loss_function.teacher_logits = loss_function.tighter_logits = None


def build_trainer(teachers: Teachers | None, temperature: float, weight: float, consistency_weight: float = 0.0,
                  consistency_zoom: float = 0.25, **trainer_kwargs) -> Trainer:
    """A plain Trainer without teachers or framing consistency; with either, the same Trainer plus their terms."""
    if teachers is None and consistency_weight <= 0:
        return Trainer(**trainer_kwargs)
    trainer_kwargs["compute_loss_func"] = DistillationLoss(trainer_kwargs["compute_loss_func"], temperature, weight,
                                                           consistency_weight)
    return DistillationTrainer(teachers=teachers, consistency_zoom=consistency_zoom, **trainer_kwargs)


def describe(paths: Sequence[str] | str | None, temperature: float, weight: float, view: str = "augmented") -> str:
    """One line for the training summary and the card's hyperparameters (published: absolute paths cut to names)."""
    folders = [published_path(path) for path in teacher_paths(paths)]
    if not folders:
        return "none"
    seen = "; teachers judge the unaugmented film" if view == "filmed" else ""
    return f"from {', '.join(folders)} (logits averaged); temperature {temperature}, weight {weight}{seen}"
