"""ONNX Runtime for predictions: the same network as the PyTorch weights, about 1.5x as fast on 2 cores.

The export (`onnx/model.onnx`, written by the training pipeline or `python -m train.export_onnx`) records
the SHA-256 of the `model.safetensors` it was made from, and was checked against those weights when it was
written. It is used only while that file is unchanged: a stale or damaged export falls back to PyTorch
with a warning rather than giving different answers.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

ONNX_FILE = "onnx/model.onnx"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_HASH_KEY = "source_safetensors_sha256"
FEATURES_KEY = "ood_features"  # which features the `features` output holds (an older export held fewer)
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
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.weights_hash, self.features_layout = metadata.get(WEIGHTS_HASH_KEY), metadata.get(FEATURES_KEY)

    def __call__(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, features = self.session.run(["logits", "features"], {"pixel_values": pixel_values.numpy()})
        return torch.from_numpy(logits), torch.from_numpy(features)


def first_line(error: BaseException) -> str:
    """An error's message cut to its first line (its type's name if it has none): one readable log or UI line."""
    message = str(error).strip()
    return message.splitlines()[0] if message else type(error).__name__


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_onnx_runtime(folder: Path, runtime: str = "auto", features_layout: str | None = None) -> OnnxRuntimeNetwork | None:
    """The ONNX network of `folder` if there is one, onnxruntime is installed and it was made from its weights
    (and, given `features_layout`, gives those features)."""
    path = Path(folder) / ONNX_FILE
    if runtime == "pytorch" or not path.is_file():
        return None
    try:
        network = OnnxRuntimeNetwork(path, torch.get_num_threads())
    except ImportError:
        logger.info("onnxruntime is not installed: predictions run on PyTorch.")
        return None
    except Exception as error:  # a damaged file must not stop the app: the safetensors weights still work
        logger.warning("Ignoring %s (%s): predictions run on PyTorch.", path, first_line(error))
        return None
    if network.weights_hash != file_sha256(Path(folder) / WEIGHTS_FILE):
        logger.warning("Ignoring %s: it was not exported from this %s (a stale export?); predictions run on PyTorch.",
                       path, WEIGHTS_FILE)
        return None
    if features_layout is not None and network.features_layout != features_layout:
        logger.warning("Ignoring %s: it gives other out-of-distribution features (%s) than this version reads (%s); "
                       "re-export it with `python -m train.export_onnx --model_dir %s`.", path,
                       network.features_layout or "the pooled features only", features_layout, folder)
        return None
    return network


def largest_difference(network, reference: torch.nn.Module, image_size: int) -> float:
    """Largest gap between two networks' logits and features on a fixed random batch."""
    probe = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = reference(probe)
    actual = network(probe)
    return max(float(np.abs(a.numpy() - e.numpy()).max()) for a, e in zip(actual, expected))
