"""Inference core for chest X-ray pneumonia classification.

Shared by training, evaluation, the CLI and the Gradio app. It depends on torch, transformers,
Pillow, pydicom and (for speed, optional) onnxruntime: never on training code or on Gradio.
"""

from chestxray.classifier import ModelLoadError, PneumoniaClassifier, Prediction
from chestxray.imaging import ImageReadError, read_image

__all__ = ["ImageReadError", "ModelLoadError", "PneumoniaClassifier", "Prediction", "read_image"]
