"""The gate: may this image be answered at all, and for whom?

Three outcomes (`GateOutcome.gate`):

- `frontal_chest`: a frontal chest X-ray like the training films -> the decision as usual.
- `not_frontal_chest`: another body part, a lateral view, CT/MR/ultrasound, a photo, a document, a blank or
  degenerate image -> no decision at all, only a sentence saying what it looks like and what to upload instead.
- `outside_population`: a frontal chest X-ray of someone the model was not validated on (an adult) -> the
  decision, with a prominent warning.

Signals, strongest first: the DICOM coded facts the reader put in `image.info["dicom"]` (modality, view, body
part, age: used, never shown or logged); plain image rules (blank, colour, paper-white, noise); and the learned
gate stored with the model (`ood_gate.safetensors`, fitted by `train.gate`). The learned gate sees a descriptor
of the image (the grey-level layout of a squashed 64-px thumbnail on an 8x8 grid, plus 17 grey-level statistics)
and the network's features (pooled, and summaries of earlier stages: `chestxray.classifier.LogitsAndFeatures`), and
combines a Gaussian density of the training films' descriptors ("unlike the training X-rays") with two logistic
heads fitted with outlier exposure: "not a frontal chest X-ray" and "an adult's film". A model folder without a gate
falls back to the Mahalanobis feature reference (`ood_reference.safetensors`) and the rules.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import load_file as load_numpy, save_file as save_numpy
from safetensors.torch import load_file, save_file

from chestxray.dicom_codes import READ_MODALITIES

logger = logging.getLogger(__name__)

REFERENCE_FILE = "ood_reference.safetensors"
GATE_FILE = "ood_gate.safetensors"
GATE_CONFIG_FILE = "ood_gate.json"
GATE_FORMAT_VERSION = 1

FRONTAL_CHEST, NOT_FRONTAL_CHEST, OUTSIDE_POPULATION = "frontal_chest", "not_frontal_chest", "outside_population"

# One plain sentence per reason: what the image looks like and what to upload instead (or the population warning).
UPLOAD_INSTEAD = "please upload a frontal (PA or AP) chest X-ray instead"
MESSAGES = {
    "not_radiograph": f"This looks like a CT, MRI or ultrasound image, not an X-ray: {UPLOAD_INSTEAD}.",
    "lateral_view": "This looks like a side (lateral) view, and the model reads only frontal views: "
                    "please upload the frontal (PA or AP) chest X-ray instead.",
    "other_body_part": f"This looks like an X-ray of another part of the body, not of the chest: {UPLOAD_INSTEAD}.",
    "blank": f"This image is blank (almost uniform), with nothing to read: {UPLOAD_INSTEAD}.",
    "colour_photo": "This looks like a colour photograph, not an X-ray: please upload the X-ray image file itself "
                    "(PNG, JPEG or DICOM), not a photo of it.",
    "document": "This looks like a document or a screenshot, not an X-ray: please upload the X-ray image file itself.",
    "noise": f"This image looks like noise, without the smooth structure of an X-ray: {UPLOAD_INSTEAD}.",
    "unlike_training_xrays": f"This does not look like the frontal chest X-rays the model was trained on: {UPLOAD_INSTEAD}.",
    "adult": "This looks like an adult's chest X-ray. The model was validated on children aged 1 to 5 only and is "
             "not reliable for adults: do not rely on this result.",
    "outside_validated_age": "The model was validated on children aged 1 to 5 only and this patient is outside that "
                             "range: the result may be wrong, do not rely on it.",
}

# DICOM coded facts (chestxray.dicom.dicom_facts). The reader already refuses non-radiograph modalities; the gate
# says the same, by the reader's codes, for any caller that builds images itself.
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "XTABLE LATERAL"})
CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG", "TORAX")  # a body part naming any of these (but not a spine) is the chest
ADULT_AGE_YEARS = 18.0
VALIDATED_AGE_YEARS = (1.0, 6.0)  # "aged 1-5": from the first birthday up to the sixth

# Image rules, on a 128-px thumbnail (aspect kept): none fires on any of the 5,216 Kermany training films.
RULE_THUMBNAIL_SIDE = 128
MIN_GREY_STD = 4.0  # grey levels: below this the image is practically uniform
MAX_COLOURFULNESS = 12.0  # Hasler & Süsstrunk (2003); grey-scale renders score ~0, photos 30+
MAX_WHITE_FRACTION = 0.55  # radiographs are mostly mid-grey and dark; documents mostly paper-white
MAX_ROUGHNESS = 0.5  # mean neighbour difference / contrast: radiographs are smooth (max 0.25), noise is not (~1.0)

THUMBNAIL_SIDE = 64
BLACK_LEVEL, WHITE_LEVEL = 20 / 255, 235 / 255  # the descriptor's near-black and near-white; mid-grey lies between
LAYOUT_SIDE = 8
QUANTILES = (0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98)
DESCRIPTOR_NAMES = ([f"layout_{i}" for i in range(LAYOUT_SIDE * LAYOUT_SIDE)] + [f"grey_q{q:g}" for q in QUANTILES]
                    + ["grey_std", "roughness_x", "roughness_y", "left_right_symmetry", "white_fraction",
                       "black_fraction", "log_colourfulness", "mid_grey_peak_share", "mid_grey_entropy",
                       "mid_grey_flat_fraction"])
# A reason guessed by the reason head only counts when it is this sure; otherwise "unlike the training X-rays",
# whichever check refused the image.
MIN_REASON_PROBABILITY = 0.5


@dataclass(frozen=True)
class GateOutcome:
    gate: str = FRONTAL_CHEST
    reason: str | None = None  # machine-readable code, a key of MESSAGES

    @property
    def message(self) -> str | None:
        return MESSAGES.get(self.reason) if self.reason else None

    @property
    def answers(self) -> bool:
        """Whether the model may give its decision at all."""
        return self.gate != NOT_FRONTAL_CHEST


ANSWER = GateOutcome()


def refusal(reason: str) -> GateOutcome:
    return GateOutcome(NOT_FRONTAL_CHEST, reason)


def caution(reason: str) -> GateOutcome:
    return GateOutcome(OUTSIDE_POPULATION, reason)


# --- DICOM coded facts ---------------------------------------------------------------------------------------

def dicom_refusal(facts: dict | None) -> GateOutcome | None:
    """Not a frontal chest radiograph, by its own DICOM header; None when the header does not say so."""
    if not facts:
        return None
    modality = facts.get("modality")
    if modality and modality not in READ_MODALITIES:
        return refusal("not_radiograph")
    if facts.get("view_position") in LATERAL_VIEWS:
        return refusal("lateral_view")
    body_part = facts.get("body_part")
    if body_part and ("SPINE" in body_part or not any(part in body_part for part in CHEST_BODY_PARTS)):
        return refusal("other_body_part")
    return None


def age_outcome(facts: dict | None) -> GateOutcome | None:
    """The population by the patient's age when the header gives one (000Y, a common 'unknown', gives none)."""
    age = (facts or {}).get("patient_age_years")
    if age is None or age <= 0:
        return None
    if age >= ADULT_AGE_YEARS:
        return caution("adult")
    low, high = VALIDATED_AGE_YEARS
    return ANSWER if low <= age < high else caution("outside_validated_age")


# --- the image's own statistics ------------------------------------------------------------------------------

def thumbnail(image: Image.Image) -> np.ndarray:
    """The image squashed to 64x64 grey levels in [0, 1], as the model squashes it to its square."""
    grey = image if image.mode == "L" else image.convert("L")
    small = grey.resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BOX, reducing_gap=2.0)
    return np.asarray(small, dtype=np.float32) / 255.0


def _roughness(pixels: np.ndarray, axis: int) -> float:
    return float(np.abs(np.diff(pixels, axis=axis)).mean() / max(float(pixels.std()), 1e-3))


def _mid_grey_texture(pixels: np.ndarray) -> list[float]:
    """How flat the mid-grey tissue is: a CT or MR window saturates soft tissue to one even grey (a histogram
    spike, low entropy, flat neighbourhoods), which a radiograph's superimposed tissue never does. Coronal CT
    reconstructions that look like frontal films otherwise passed the gate."""
    mid = (pixels > BLACK_LEVEL) & (pixels < WHITE_LEVEL)
    counts, _ = np.histogram(pixels[mid], bins=64, range=(BLACK_LEVEL, WHITE_LEVEL))
    shares = counts / max(int(counts.sum()), 1)
    present = shares[shares > 0]
    flat = (np.abs(np.diff(pixels, axis=1))[:-1, :] <= 1.5 / 255) & (np.abs(np.diff(pixels, axis=0))[:, :-1] <= 1.5 / 255)
    inner = mid[:-1, :-1]
    return [float(shares.max()), float(-(present * np.log(present)).sum()), float((flat & inner).sum() / max(int(inner.sum()), 1))]


def image_descriptor(image: Image.Image) -> np.ndarray:
    """The 81 numbers the learned gate reads from the image itself (see DESCRIPTOR_NAMES)."""
    pixels = thumbnail(image)
    step = THUMBNAIL_SIDE // LAYOUT_SIDE
    layout = pixels.reshape(LAYOUT_SIDE, step, LAYOUT_SIDE, step).mean(axis=(1, 3)).ravel()
    layout = (layout - layout.mean()) / (layout.std() + 0.01)
    step = THUMBNAIL_SIDE // 16
    coarse = pixels.reshape(16, step, 16, step).mean(axis=(1, 3))
    left, right = coarse[:, :8].ravel(), coarse[:, ::-1][:, :8].ravel()
    left, right = left - left.mean(), right - right.mean()
    symmetry = float((left * right).sum() / (np.sqrt((left * left).sum() * (right * right).sum()) + 1e-6))
    statistics = [*np.quantile(pixels, QUANTILES), float(pixels.std()), _roughness(pixels, 1), _roughness(pixels, 0),
                  symmetry, float((pixels > WHITE_LEVEL).mean()), float((pixels < BLACK_LEVEL).mean()),
                  float(np.log1p(image.info.get("colourfulness", 0.0))), *_mid_grey_texture(pixels)]
    return np.concatenate([layout, np.asarray(statistics)]).astype(np.float64)


def rule_refusal(image: Image.Image) -> GateOutcome | None:
    """Blank, colour, paper-white or noise: plain facts of the image (and of the colour it was read with)."""
    small = image.convert("L")
    small.thumbnail((RULE_THUMBNAIL_SIDE, RULE_THUMBNAIL_SIDE))
    pixels = np.asarray(small, dtype=float)
    if pixels.std() < MIN_GREY_STD:
        return refusal("blank")
    if image.info.get("colourfulness", 0.0) > MAX_COLOURFULNESS:
        return refusal("colour_photo")
    if (pixels > 235).mean() > MAX_WHITE_FRACTION:
        return refusal("document")
    if np.abs(np.diff(pixels, axis=1)).mean() / pixels.std() > MAX_ROUGHNESS:
        return refusal("noise")
    return None


def image_reasons(image: Image.Image) -> list[str]:
    """The rule codes that fire on `image` (empty for a plausible radiograph)."""
    outcome = rule_refusal(image)
    return [outcome.reason] if outcome else []


# --- learned parts -------------------------------------------------------------------------------------------

@dataclass
class Gaussian:
    """A Gaussian density: the Mahalanobis distance of a point from the mean."""

    mean: np.ndarray
    precision: np.ndarray

    def distances(self, points: np.ndarray) -> np.ndarray:
        centred = np.atleast_2d(points) - self.mean
        return np.sqrt(np.einsum("nd,de,ne->n", centred, self.precision, centred).clip(min=0))


@dataclass
class LinearHead:
    """Logistic regression on standardised inputs: `weight` (outputs x inputs), `bias` (outputs)."""

    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    bias: np.ndarray

    def logits(self, inputs: np.ndarray) -> np.ndarray:
        return ((np.atleast_2d(inputs) - self.mean) / self.scale) @ self.weight.T + self.bias


@dataclass
class OodReference:
    """The fallback for model folders without a gate: distance of the network's features from the training films'."""

    mean: torch.Tensor
    precision: torch.Tensor
    threshold: float

    @property
    def feature_width(self) -> int:
        """How many of the network's leading features it reads."""
        return self.mean.shape[0]

    def distances(self, features: torch.Tensor) -> np.ndarray:
        centred = features.double() - self.mean
        return torch.sqrt(torch.einsum("nd,de,ne->n", centred, self.precision, centred).clamp_min(0)).numpy()

    def save(self, folder: Path) -> None:
        save_file({"mean": self.mean.contiguous(), "precision": self.precision.contiguous(),
                   "threshold": torch.tensor([self.threshold], dtype=torch.float64)}, str(Path(folder) / REFERENCE_FILE))

    @classmethod
    def load(cls, folder: Path) -> "OodReference | None":
        path = Path(folder) / REFERENCE_FILE
        if not path.is_file():
            return None
        tensors = load_file(str(path))
        return cls(tensors["mean"].double(), tensors["precision"].double(), float(tensors["threshold"][0]))


@dataclass
class OodGate:
    """The learned gate of one model (see the module docstring); thresholds were set on training-side films only."""

    density: Gaussian  # descriptors of the paediatric training films (and their augmentations)
    adult_density: Gaussian  # descriptors of the adult development films
    not_frontal: LinearHead  # one output: > threshold means not a frontal chest X-ray
    adult: LinearHead  # one output: > threshold means an adult's film
    reasons: LinearHead  # one output per code in `reason_codes`: why an image is not a frontal chest X-ray
    reason_codes: list[str]
    thresholds: dict[str, float]  # density, adult_density, not_frontal, adult, adult_not_frontal
    probe_features: np.ndarray  # the network's features on a fixed probe: the gate belongs to this backbone
    config: dict  # everything else in ood_gate.json (provenance, measured rates)

    @property
    def feature_width(self) -> int:
        """How many of the network's leading features it reads."""
        return self.probe_features.shape[-1]

    def judge(self, descriptors: np.ndarray, features: np.ndarray) -> list[GateOutcome]:
        inputs = np.hstack([descriptors, features])
        unlike = self.density.distances(descriptors) > self.thresholds["density"]
        adult_like = self.adult_density.distances(descriptors) <= self.thresholds["adult_density"]
        not_frontal_scores = self.not_frontal.logits(inputs)[:, 0]
        not_frontal = not_frontal_scores > self.thresholds["not_frontal"]
        # Adults' lateral views and other adult-looking X-rays look adult before they look like another view: among
        # adult-looking images a lower not-frontal score already refuses (a gate fitted before this part had none).
        adult_view = not_frontal_scores > self.thresholds.get("adult_not_frontal", np.inf)
        adult = self.adult.logits(inputs)[:, 0] > self.thresholds["adult"]
        reason_logits = self.reasons.logits(inputs)
        outcomes = []
        for i in range(len(inputs)):
            if not_frontal[i]:
                outcomes.append(refusal(self._reason(reason_logits[i])))
            elif adult[i] and adult_like[i]:  # an adult's film, even where it is unlike the children's
                outcomes.append(refusal(self._reason(reason_logits[i])) if adult_view[i] else caution("adult"))
            elif adult[i] or unlike[i]:  # unlike the children's films, and unlike the adults' too
                outcomes.append(refusal(self._reason(reason_logits[i])))
            else:
                outcomes.append(ANSWER)
        return outcomes

    def _reason(self, logits: np.ndarray) -> str:
        """The kind the reason head names, where it is sure of it: a refusal that names the wrong kind (a CT slice
        called a side view) misleads more than the plain sentence does."""
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        best = int(probabilities.argmax())
        if probabilities[best] < MIN_REASON_PROBABILITY:
            return "unlike_training_xrays"
        return self.reason_codes[best]

    def save(self, folder: Path) -> None:
        tensors = {"probe_features": self.probe_features}
        for name in ("density", "adult_density"):
            part = getattr(self, name)
            tensors.update({f"{name}.mean": part.mean, f"{name}.precision": part.precision})
        for name in ("not_frontal", "adult", "reasons"):
            part = getattr(self, name)
            tensors.update({f"{name}.{key}": getattr(part, key) for key in ("mean", "scale", "weight", "bias")})
        save_numpy({k: np.ascontiguousarray(v, dtype=np.float64) for k, v in tensors.items()}, str(Path(folder) / GATE_FILE))
        config = {**self.config, "format_version": GATE_FORMAT_VERSION, "thresholds": self.thresholds,
                  "reason_codes": self.reason_codes, "descriptor": DESCRIPTOR_NAMES}
        (Path(folder) / GATE_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> "OodGate | None":
        path, config_path = Path(folder) / GATE_FILE, Path(folder) / GATE_CONFIG_FILE
        if not (path.is_file() and config_path.is_file()):
            return None
        try:
            config = json.loads(config_path.read_text())
            if config.get("format_version") != GATE_FORMAT_VERSION or config.get("descriptor") != DESCRIPTOR_NAMES:
                raise ValueError("made by another version of the gate")
            t = load_numpy(str(path))
            return cls(
                *(Gaussian(t[f"{n}.mean"], t[f"{n}.precision"]) for n in ("density", "adult_density")),
                *(LinearHead(*(t[f"{n}.{k}"] for k in ("mean", "scale", "weight", "bias"))) for n in ("not_frontal", "adult", "reasons")),
                reason_codes=list(config["reason_codes"]), thresholds={k: float(v) for k, v in config["thresholds"].items()},
                probe_features=t["probe_features"], config=config,
            )
        except Exception as error:  # noqa: BLE001 - a damaged gate must not stop the app: the fallback still works
            logger.warning("Ignoring %s (%s): the out-of-distribution check falls back to %s.", path, error, REFERENCE_FILE)
            return None


# --- the whole check -----------------------------------------------------------------------------------------

PROBE_SEED = 0
PROBE_TOLERANCE = 1e-3  # features; ONNX Runtime and PyTorch kernels differ by ~1e-6


def probe_pixels(image_size: int) -> torch.Tensor:
    """A fixed batch of random pixel values: the features a backbone gives on it identify that backbone."""
    return torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(PROBE_SEED))


def gate_matches(gate: OodGate, probe_features: np.ndarray) -> bool:
    return gate.probe_features.shape == probe_features.shape and float(np.abs(gate.probe_features - probe_features).max()) < PROBE_TOLERANCE


def judge_images(images: Sequence[Image.Image], descriptors: np.ndarray, features: np.ndarray,
                 gate: OodGate | None, reference: OodReference | None) -> list[GateOutcome]:
    """The gate's outcome for each image: DICOM facts, then image rules, then the learned gate (or the reference);
    the patient's age, when the header gives it, settles the population of a frontal chest film."""
    # Each check reads the leading features of its own width: a check fitted before the network's features gained
    # their stage statistics reads the pooled features alone (chestxray.classifier.PneumoniaClassifier._matching_checks).
    if gate is not None:
        learned = gate.judge(descriptors, features[:, : gate.feature_width])
    elif reference is not None:
        far = reference.distances(torch.as_tensor(features[:, : reference.feature_width])) > reference.threshold
        learned = [refusal("unlike_training_xrays") if f else ANSWER for f in far]
    else:
        learned = [ANSWER] * len(images)
    outcomes = []
    for image, outcome in zip(images, learned):
        facts = image.info.get("dicom")
        outcome = dicom_refusal(facts) or rule_refusal(image) or outcome
        if outcome.answers:
            outcome = age_outcome(facts) or outcome
        outcomes.append(outcome)
    return outcomes
