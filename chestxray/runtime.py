"""ONNX Runtime for predictions: the same network as the PyTorch weights, about twice as fast on 2 cores.

The export (`onnx/model.onnx`, written by the training pipeline or `python -m train.export_onnx`) is only
used after it has reproduced the safetensors weights' logits and features on a probe batch: a stale or
damaged export falls back to PyTorch with a warning rather than giving different answers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

ONNX_FILE = "onnx/model.onnx"
RUNTIMES = ("auto", "onnx", "pytorch")
MATCH_TOLERANCE = 1e-3  # logits and features; float32 kernels differ by ~1e-6


class OnnxRuntimeNetwork:
    """Callable like `LogitsAndFeatures`: pixel values in, (logits, features) out."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, features = self.session.run(["logits", "features"], {"pixel_values": pixel_values.numpy()})
        return torch.from_numpy(logits), torch.from_numpy(features)


def load_onnx_runtime(folder: Path, reference: torch.nn.Module, image_size: int, runtime: str = "auto") -> OnnxRuntimeNetwork | None:
    """The ONNX network of `folder` if there is one, onnxruntime is installed and it matches `reference`."""
    path = Path(folder) / ONNX_FILE
    if runtime == "pytorch" or not path.is_file():
        return None
    try:
        network = OnnxRuntimeNetwork(path, torch.get_num_threads())
    except ImportError:
        logger.info("onnxruntime is not installed: predictions run on PyTorch.")
        return None
    except Exception as error:  # a damaged file must not stop the app: the safetensors weights still work
        logger.warning("Ignoring %s (%s): predictions run on PyTorch.", path, str(error).splitlines()[0] if str(error) else error)
        return None
    probe = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = reference(probe)
    try:
        actual = network(probe)
    except Exception as error:
        logger.warning("Ignoring %s, it fails on a probe batch (%s): predictions run on PyTorch.", path, error)
        return None
    gap = max(float(np.abs(a.numpy() - e.numpy()).max()) for a, e in zip(actual, expected))
    if not gap <= MATCH_TOLERANCE:
        logger.warning("Ignoring %s: it differs from model.safetensors by %.3g (a stale export?); predictions run on PyTorch.", path, gap)
        return None
    return network
