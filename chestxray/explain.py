"""Grad-CAM heatmaps: where in the image the evidence for PNEUMONIA came from.

For ConvNeXt the map comes from the last stage's feature maps; for ViT from the last layer's patch
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


def _colormap(values: np.ndarray) -> np.ndarray:
    """A 'turbo'-like blue -> green -> yellow -> red ramp, without a plotting dependency."""
    anchors = np.array([[48, 18, 59], [40, 140, 230], [30, 220, 130], [245, 220, 40], [220, 50, 20]], dtype=float)
    positions = np.linspace(0, 1, len(anchors))
    return np.stack([np.interp(values, positions, anchors[:, c]) for c in range(3)], axis=-1)


def overlay(image: Image.Image, heatmap: np.ndarray, opacity: float = 0.45) -> np.ndarray:
    """The heatmap over the grey image, at the image's own size, as RGB uint8.

    Colours and blending weights are computed at the heatmap's small size and enlarged by PIL, so a
    2000x1600 radiograph costs a few milliseconds rather than a full-resolution float pass.
    """
    colours = Image.fromarray(_colormap(heatmap).astype(np.uint8), mode="RGB").resize(image.size, Image.Resampling.BILINEAR)
    weights = Image.fromarray((heatmap * opacity * 255).astype(np.uint8), mode="L").resize(image.size, Image.Resampling.BILINEAR)
    return np.asarray(Image.composite(colours, image.convert("RGB"), weights))  # cold areas stay the plain radiograph
