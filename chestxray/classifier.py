"""Load a pneumonia classifier (Hub id or folder) and turn images into calibrated decisions.

The decision threshold and calibration temperature travel inside the model's `config.json`,
so the app, the CLI and the evaluation script all make exactly the same call on an image.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from chestxray.imaging import ImageSource, read_image
from chestxray.ood import (ANSWER, FRONTAL_CHEST, GATE_FILE, NOT_FRONTAL_CHEST, GateOutcome, OodGate, OodReference, gate_matches,
                           image_descriptor, judge_images, probe_pixels)
from chestxray.preprocess import Preprocessing
from chestxray.runtime import ONNX_FILE, RUNTIMES, OnnxRuntimeNetwork, first_line, load_onnx_runtime

logger = logging.getLogger(__name__)

POSITIVE_LABEL = "PNEUMONIA"
NEGATIVE_LABEL = "NORMAL"
SUPPORTED_MODEL_TYPES = ("convnext", "vit", "efficientnet")
# Only these files are fetched from the Hub: weights as safetensors, never pickles or code.
# ONNX is a graph and tensors in protobuf: no code runs when it is loaded.
HUB_ALLOW_PATTERNS = ["*.json", "*.safetensors", "README.md", ONNX_FILE]
# Set in config.json when the fitted temperature and bias were folded into the classifier head (for the record:
# the head already outputs calibrated logits, and the config's own temperature and bias are then 1 and 0).
FOLDED_CALIBRATION_KEY = "calibration_folded_into_head"


def calibrated_logits(logits: np.ndarray, temperature: float, bias: float = 0.0, positive_index: int = 1) -> np.ndarray:
    """logits / T, plus `bias` on the positive class: the calibration that `train.calibration` fits and every
    caller here applies. In float64, so that a sharp calibration does not saturate to exact 0 or 1."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled[:, positive_index] += bias
    return scaled


class ModelLoadError(RuntimeError):
    """The model cannot be loaded; the message says which model and what to do."""


@dataclass(frozen=True)
class Prediction:
    """One image's outcome, in the terms a reader of the app or the CSV needs.

    `gate` (chestxray.ood): "frontal_chest" (the decision as usual), "not_frontal_chest" (no decision: `decision`
    and `pneumonia_probability` are None) or "outside_population" (the decision, with a warning). `gate_reason` is
    a machine-readable code ("lateral_view", "other_body_part", "adult", ...) and `message` one plain sentence
    for a person; both are None for a frontal chest X-ray like the training films.
    """

    pneumonia_probability: float | None
    decision: str | None
    threshold: float
    gate: str = FRONTAL_CHEST
    gate_reason: str | None = None
    message: str | None = None

    @property
    def warning(self) -> str | None:
        """The gate's sentence whenever it did not simply answer (the name older callers use)."""
        return self.message

    @property
    def probabilities(self) -> dict[str, float]:
        """Empty when the gate refused the image."""
        if self.pneumonia_probability is None:
            return {}
        return {POSITIVE_LABEL: self.pneumonia_probability, NEGATIVE_LABEL: 1.0 - self.pneumonia_probability}


# Where, as a share of the network's depth, the OOD features also summarise the hidden states. The pooled features
# say what the head needs to call pneumonia; earlier states keep what the head never needed (texture, anatomy), and
# with them the gate refused more of a kind it never saw (docs/experiments.md, "features from several stages").
STAGE_DEPTHS = (0.25, 0.5, 0.75)
FEATURES_LAYOUT = f"pooled+stage_statistics{STAGE_DEPTHS}+population_std"  # recorded in the ONNX export (chestxray.runtime)


def stage_indices(last: int) -> list[int]:
    """Which of hidden states 1..`last` sit at `STAGE_DEPTHS` of the network (hidden state 0 is the embedding;
    EfficientNet: the stem): ConvNeXt stages 1-3 of 4; ViT layers 3, 6 and 9 of 12; EfficientNet-Lite0 blocks 4, 8
    and 12 of 16 (rounded half to even)."""
    return sorted({max(1, round(last * depth)) for depth in STAGE_DEPTHS})


def position_statistics(state: torch.Tensor) -> list[torch.Tensor]:
    """Mean and standard deviation over the positions of maps (N, C, H, W) or tokens (N, L, C). The population
    deviation: a 1x1 map (a small input) gives 0, not NaN, which would silence every check."""
    positions = (2, 3) if state.ndim == 4 else (1,)
    return [state.mean(positions), state.std(positions, correction=0)]


def stage_statistics(hidden_states: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """`position_statistics` of the hidden states at `stage_indices`."""
    return [s for index in stage_indices(len(hidden_states) - 1) for s in position_statistics(hidden_states[index])]


def pooled_width(config) -> int:
    """How many of the OOD features are the pooled ones: all that checks fitted before `stage_statistics` read."""
    if config.model_type == "convnext":
        return int(config.hidden_sizes[-1])
    if config.model_type == "efficientnet":
        return int(config.hidden_dim)
    return int(config.hidden_size)


class LogitsAndFeatures(torch.nn.Module):
    """The network as the app runs it, in one pass (also the graph exported to ONNX): the logits, and the features
    the OOD check measures (the pooled features, then `stage_statistics`)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.model.base_model(pixel_values=pixel_values, output_hidden_states=True)
        pooled = getattr(outputs, "pooler_output", None)
        pooled = pooled if pooled is not None else outputs.last_hidden_state[:, 0]  # ViT: the CLS token
        features = torch.cat([pooled, *stage_statistics(outputs.hidden_states)], dim=1)
        return self.model.classifier(pooled), features


class PneumoniaClassifier:
    """A model with its preprocessing and operating point.

    Predictions run on ONNX Runtime when the model folder ships an `onnx/model.onnx` exported from exactly
    its safetensors weights (the network about 1.5x as fast on 2 cores); otherwise on PyTorch. The PyTorch
    model, needed for Grad-CAM, is then loaded on first use (or by `load_model()` in the background): importing
    transformers takes seconds that a fresh app should not spend before it can answer.
    """

    def __init__(self, model, processor, source: str = "", onnx_network: OnnxRuntimeNetwork | None = None,
                 config=None) -> None:
        """`model`: a transformers model, or a function that loads one (then `config` is required)."""
        self._model = model.eval().requires_grad_(False) if isinstance(model, torch.nn.Module) else None
        self._load: Callable | None = None if self._model is not None else model
        self._lock = threading.Lock()
        self.config = config if config is not None else self._model.config
        self.processor = processor if isinstance(processor, Preprocessing) else Preprocessing.from_processor(processor)
        self.source = source
        labels = {name.upper(): int(index) for name, index in self.config.label2id.items()}
        if set(labels) != {POSITIVE_LABEL, NEGATIVE_LABEL}:
            raise ModelLoadError(f"{source}: expected labels NORMAL and PNEUMONIA, found {sorted(self.config.label2id)}.")
        self.positive_index = labels[POSITIVE_LABEL]
        self.threshold = float(getattr(self.config, "decision_threshold", 0.5))
        self.temperature = float(getattr(self.config, "calibration_temperature", 1.0))
        self.bias = float(getattr(self.config, "calibration_bias", 0.0))
        folder = Path(source) if source and Path(source).is_dir() else None
        self.onnx_network = onnx_network
        self.ood_reference, self.gate = self._matching_checks(folder) if folder else (None, None)

    def _matching_checks(self, folder: Path) -> tuple[OodReference | None, OodGate | None]:
        """The folder's feature reference and learned gate, each only if it was fitted on this network's features:
        all of them, or the pooled ones that lead them (a folder fitted before `stage_statistics`; each check reads
        the features of its own width). A check fitted on another network would judge nonsense."""
        reference, gate = OodReference.load(folder), OodGate.load(folder)
        if reference is None and gate is None:
            return None, None
        probe = self.logits_and_features(probe_pixels(self.image_size))[1].double().numpy()
        widths = {probe.shape[1], pooled_width(self.config)}
        refit = f"refit it with `python -m train.ood --model_dir {folder} --data_dir ... --ood_dir ...`"
        if reference is not None and reference.feature_width not in widths:
            logger.warning("Ignoring the out-of-distribution reference of %s: it was fitted on %d features, the network "
                           "gives %d (%s).", folder, reference.feature_width, probe.shape[1], refit)
            reference = None
        if gate is not None and not (gate.feature_width in widths and gate_matches(gate, probe[:, : gate.feature_width])):
            logger.warning("Ignoring the out-of-distribution gate of %s: it was fitted on another network's features "
                           "(%s).", folder, refit)
            gate = None
        return reference, gate

    def missing_gate_warning(self) -> str | None:
        """What whoever serves this model must know when it has no learned gate (a folder trained without
        `--ood_dir`, or one whose gate belongs to another network): it will answer images it should refuse."""
        if self.gate is not None:
            return None
        return (f"{self.source or 'This model'} has no usable learned out-of-distribution gate ({GATE_FILE}): only the "
                "image rules and the feature distance judge what may be answered, so lateral views, other body parts "
                "and adults' films can get a decision. Fit one with `python -m train.ood --model_dir MODEL --data_dir "
                "TRAINING_DATA --ood_dir DEVELOPMENT_IMAGES`.")

    @classmethod
    def from_pretrained(
        cls, model_id_or_path: str | Path, revision: str | None = None, runtime: str = "auto"
    ) -> "PneumoniaClassifier":
        """`runtime`: `auto` (ONNX Runtime when the folder has a matching export), `onnx` or `pytorch`."""
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, not {runtime!r}")
        folder = resolve_model_folder(model_id_or_path, revision)
        try:
            config = SimpleNamespace(**json.loads((folder / "config.json").read_text()))
            processor = Preprocessing.from_folder(folder)
            model_type = config.model_type
        except (OSError, ValueError, TypeError, AttributeError) as error:
            raise ModelLoadError(f"Cannot load the model from `{model_id_or_path}` (damaged or incomplete model folder?): {error}") from None
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ModelLoadError(f"`{model_id_or_path}` is a {model_type} model; supported: {', '.join(SUPPORTED_MODEL_TYPES)}.")
        onnx_network = load_onnx_runtime(folder, runtime, FEATURES_LAYOUT)
        if runtime == "onnx" and onnx_network is None:
            raise ModelLoadError(f"{folder}: no usable {ONNX_FILE} (see the log), and the ONNX runtime was required.")
        if onnx_network is None:  # PyTorch runs the predictions: load it now, so a damaged model fails at start
            return cls(load_pytorch_model(folder, model_id_or_path), processor, source=str(folder))
        return cls(lambda: load_pytorch_model(folder, model_id_or_path), processor, str(folder), onnx_network, config)

    @property
    def model(self):
        """The PyTorch model (Grad-CAM, training tools), loaded on first use."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._load().eval().requires_grad_(False)
        return self._model

    def load_model(self) -> None:
        """Load the PyTorch model now (for instance in a background thread once the app is serving)."""
        _ = self.model

    @property
    def runtime(self) -> str:
        return "onnxruntime" if self.onnx_network is not None else "pytorch"

    @property
    def image_size(self) -> int:
        return self.processor.height

    def read(self, source: ImageSource, name: str | None = None) -> Image.Image:
        """Read an upload, decoding no more pixels than `shrink` keeps (JPEG DCT scaling)."""
        return read_image(source, name=name, min_side=2 * self.image_size)

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.processor([self.shrink(image) for image in images])

    def shrink(self, image: Image.Image) -> Image.Image:
        """Box-reduce big uploads by an integer factor to >= 2x the model size before the processor's
        bilinear squash: same picture, a fraction of the resize cost on a 2000x1600 radiograph."""
        target = 2 * self.image_size
        factors = (max(1, image.width // target), max(1, image.height // target))
        return image.reduce(factors) if factors != (1, 1) else image

    def calibrated_probabilities(self, logits: torch.Tensor) -> np.ndarray:
        """P(PNEUMONIA) = softmax of the calibrated logits, as fitted on validation."""
        scaled = calibrated_logits(logits.detach().double().cpu().numpy(), self.temperature, self.bias, self.positive_index)
        return torch.softmax(torch.from_numpy(scaled), dim=-1)[:, self.positive_index].numpy()

    def logits_and_features(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass gives both the logits and the features the OOD check measures (`LogitsAndFeatures`)."""
        return (self.onnx_network or LogitsAndFeatures(self.model))(pixel_values)

    @torch.inference_mode()
    def logits(self, images: Sequence[Image.Image], batch_size: int = 16, with_features: bool = False):
        chunks = [
            self.logits_and_features(self.pixel_values(images[start : start + batch_size]))
            for start in range(0, len(images), batch_size)
        ]
        logits = torch.cat([c[0] for c in chunks]) if chunks else torch.zeros(0, 2)
        if not with_features:
            return logits
        return logits, torch.cat([c[1] for c in chunks]) if chunks else torch.zeros(0, 0)

    def decide(self, pneumonia_probability: float, outcome: GateOutcome = ANSWER) -> Prediction:
        """The decision at the stored threshold, unless the gate refused the image (then none, and no probability)."""
        if outcome.gate == NOT_FRONTAL_CHEST:
            return Prediction(None, None, self.threshold, outcome.gate, outcome.reason, outcome.message)
        decision = POSITIVE_LABEL if pneumonia_probability >= self.threshold else NEGATIVE_LABEL
        return Prediction(float(pneumonia_probability), decision, self.threshold, outcome.gate, outcome.reason, outcome.message)

    def predict(self, images: Sequence[Image.Image], batch_size: int = 16) -> list[Prediction]:
        """Calibrated decisions behind the gate (chestxray.ood), from one forward pass per batch. Every image is first
        reduced as the network would reduce it, so a batch (which shrinks its images as it reads them, to hold 16
        uploads in memory) and a single upload are judged on the same pixels."""
        if not images:
            return []
        images = [self.shrink(image) for image in images]
        logits, features = self.logits(images, batch_size, with_features=True)
        probabilities = self.calibrated_probabilities(logits)
        descriptors = np.vstack([image_descriptor(image) for image in images])
        outcomes = judge_images(images, descriptors, features.double().numpy(), self.gate, self.ood_reference)
        return [self.decide(p, outcome) for p, outcome in zip(probabilities, outcomes)]


def load_pytorch_model(folder: Path, name: str | Path):
    from transformers import AutoModelForImageClassification  # seconds of imports: only when needed

    try:
        return AutoModelForImageClassification.from_pretrained(folder, use_safetensors=True)
    except Exception as error:  # safetensors, JSON and config errors alike: one clear line, no traceback
        raise ModelLoadError(f"Cannot load the model from `{name}` (damaged or incomplete model folder?): {first_line(error)}") from None


def resolve_model_folder(model_id_or_path: str | Path, revision: str | None = None) -> Path:
    """A local folder as is; otherwise a Hub repo id, downloaded (safetensors and JSON only) and cached."""
    path = Path(model_id_or_path).expanduser()
    if path.is_dir():
        if not (path / "model.safetensors").is_file():
            raise ModelLoadError(f"`{path}` has no model.safetensors (only safetensors weights are loaded).")
        return path
    if path.exists() or str(model_id_or_path).count("/") != 1:
        raise ModelLoadError(f"`{model_id_or_path}` is neither a model folder nor a Hub repo id (user/name).")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(str(model_id_or_path), revision=revision, allow_patterns=HUB_ALLOW_PATTERNS))
    except LocalEntryNotFoundError:
        raise ModelLoadError(
            f"`{model_id_or_path}` is not a folder here, and as a Hub repo id it cannot be downloaded from the Hugging "
            "Face Hub (offline, and not in the local cache)."
        ) from None
    except (HfHubHTTPError, OSError) as error:
        raise ModelLoadError(f"Cannot download `{model_id_or_path}` from the Hugging Face Hub: {error}") from None
    if not (folder / "model.safetensors").is_file():
        raise ModelLoadError(f"Hub repo `{model_id_or_path}` has no model.safetensors (only safetensors weights are loaded).")
    return folder
