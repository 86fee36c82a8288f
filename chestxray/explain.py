"""Grad-CAM heatmaps: where in the image the evidence for PNEUMONIA came from.

For ConvNeXt and EfficientNet the map comes from the last feature maps; for ViT from the last layer's patch
tokens laid back on their grid. A heatmap shows attention, not proof: it can expose a shortcut (a
side marker, a text label) as easily as a real opacity.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from chestxray.classifier import PneumoniaClassifier


def _target_module(model) -> torch.nn.Module:
    if model.config.model_type == "convnext":
        return model.convnext.encoder.stages[-1]
    if model.config.model_type == "efficientnet":
        return model.efficientnet.encoder.top_activation  # the last feature maps, after the 1x1 head convolution
    layers = getattr(model.vit, "layers", None)  # transformers v5; v4 kept them in vit.encoder.layer
    return (layers if layers is not None else model.vit.encoder.layer)[-1]


def _as_grid(activations: torch.Tensor, model) -> torch.Tensor:
    """(B, C, h, w) maps, whether they came as maps (ConvNeXt) or as tokens (ViT, CLS dropped)."""
    if activations.dim() == 4:
        return activations
    tokens = activations[:, 1:, :]
    side = int(round(tokens.shape[1] ** 0.5))
    return tokens.reshape(tokens.shape[0], side, side, -1).permute(0, 3, 1, 2)


def grad_cam(classifier: PneumoniaClassifier, image: Image.Image) -> np.ndarray:
    """A [0, 1] map at the model's input resolution; higher = pushed the PNEUMONIA logit up.

    The target layer's output is made a fresh leaf that needs a gradient, while the weights need none:
    the backward pass then runs through the head alone, and the map costs about one forward pass.
    """
    model = classifier.model
    captured: dict[str, torch.Tensor] = {}

    def keep(_module, _inputs, output):
        first = output[0] if isinstance(output, tuple) else output
        leaf = first.detach().requires_grad_(True)
        captured["activations"] = leaf
        return (leaf, *output[1:]) if isinstance(output, tuple) else leaf

    handle = _target_module(model).register_forward_hook(keep)
    try:
        with torch.enable_grad():
            pixel_values = classifier.pixel_values([image])
            logits = model(pixel_values=pixel_values).logits
            (gradients,) = torch.autograd.grad(logits[0, classifier.positive_index], captured["activations"])
    finally:
        handle.remove()
    grid, gradients = _as_grid(captured["activations"].detach(), model), _as_grid(gradients, model)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * grid).sum(dim=1, keepdim=True))
    size = pixel_values.shape[-2:]
    cam = torch.nn.functional.interpolate(cam, size=size, mode="bilinear", align_corners=False)[0, 0]
    cam = cam.numpy()
    spread = cam.max() - cam.min()
    return (cam - cam.min()) / spread if spread > 1e-12 else np.zeros_like(cam)  # flat map: no localised evidence


# A 'turbo'-like ramp (blue -> green -> yellow -> red), without a plotting dependency; the app's legend uses it too.
COLORMAP_ANCHORS = ((48, 18, 59), (40, 140, 230), (30, 220, 130), (245, 220, 40), (220, 50, 20))
# Evidence below this (relative map x probability) is left uncoloured: faint attributions are noise, and a
# confidently NORMAL film should look like the plain radiograph.
EVIDENCE_FLOOR = 0.15
MAX_OPACITY = 0.6
DISPLAY_SIDE = 512  # the overlay fits in this square, whatever the upload's size


def _colormap(values: np.ndarray) -> np.ndarray:
    anchors = np.array(COLORMAP_ANCHORS, dtype=float)
    positions = np.linspace(0, 1, len(anchors))
    return np.stack([np.interp(values, positions, anchors[:, c]) for c in range(3)], axis=-1)


def evidence(heatmap: np.ndarray, pneumonia_probability: float) -> np.ndarray:
    """The map on a scale shared by all images: Grad-CAM's relative map times P(PNEUMONIA).

    Grad-CAM alone is normalised to each image's own maximum, so a film at 5 % would glow as red as one at
    99 %. Scaled by the probability, colour means the same everywhere: 1 = the strongest evidence on a film
    the model is sure of."""
    return np.clip(heatmap * float(pneumonia_probability), 0.0, 1.0)


def display_image(image: Image.Image, side: int = DISPLAY_SIDE) -> Image.Image:
    """The upload reduced to fit a `side` square, as shown on the page (a 2000 px film needs no more)."""
    shown = image.convert("L")
    shown.thumbnail((side, side), Image.Resampling.BILINEAR)
    return shown


def overlay(image: Image.Image, heatmap: np.ndarray, opacity: float = MAX_OPACITY) -> np.ndarray:
    """`heatmap` (values in [0, 1] on the shared scale of `evidence`) over the grey image, as RGB uint8 at the
    image's size. Below `EVIDENCE_FLOOR` the radiograph shows through untouched.

    Colours and weights are computed at the heatmap's small size and enlarged by PIL, so a big image costs
    a few milliseconds rather than a full-resolution float pass.
    """
    weight = np.clip((heatmap - EVIDENCE_FLOOR) / (1 - EVIDENCE_FLOOR), 0.0, 1.0) * opacity
    colours = Image.fromarray(_colormap(heatmap).astype(np.uint8), mode="RGB").resize(image.size, Image.Resampling.BILINEAR)
    weights = Image.fromarray((weight * 255).astype(np.uint8), mode="L").resize(image.size, Image.Resampling.BILINEAR)
    return np.asarray(Image.composite(colours, image.convert("RGB"), weights))
