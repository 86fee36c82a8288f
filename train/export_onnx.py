"""Export a model folder's network to `onnx/model.onnx`, the fast CPU runtime the app prefers.

    python -m train.export_onnx --model_dir model

The graph is the one the app runs (`LogitsAndFeatures`: logits and the OOD features) with a dynamic batch
size. It is checked against the PyTorch weights before it is kept, and records the SHA-256 of the
`model.safetensors` it came from and which features it gives, so that the app never runs it against other
weights or reads other features.
"""

from __future__ import annotations

import logging
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

from chestxray.classifier import FEATURES_LAYOUT, LogitsAndFeatures, ModelLoadError, PneumoniaClassifier
from chestxray.runtime import (FEATURES_KEY, MATCH_TOLERANCE, ONNX_FILE, WEIGHTS_FILE, WEIGHTS_HASH_KEY, OnnxRuntimeNetwork,
                               file_sha256, largest_difference)

logger = logging.getLogger(__name__)


def export_onnx(classifier: PneumoniaClassifier, folder: str | Path, destination: str | Path | None = None) -> Path:
    """Write `folder/onnx/model.onnx` (or under `destination`) for `classifier`'s weights (as saved in
    `folder/model.safetensors`); raises if it does not reproduce them."""
    import onnx

    path = Path(destination or folder) / ONNX_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    network = LogitsAndFeatures(classifier.model).eval()
    size = classifier.image_size
    example = torch.zeros(2, 3, size, size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on transformers internals are not actionable here
        program = torch.onnx.export(
            network, (example,), input_names=["pixel_values"], output_names=["logits", "features"],
            dynamic_shapes={"pixel_values": {0: torch.export.Dim.DYNAMIC}}, dynamo=True, verbose=False)
    graph = program.model_proto
    onnx.helper.set_model_props(graph, {WEIGHTS_HASH_KEY: file_sha256(Path(folder) / WEIGHTS_FILE), FEATURES_KEY: FEATURES_LAYOUT})
    onnx.save(graph, str(path))
    gap = largest_difference(OnnxRuntimeNetwork(path, torch.get_num_threads()), network, size)
    if not gap <= MATCH_TOLERANCE:
        path.unlink()
        raise RuntimeError(f"The ONNX export of {folder} differs from its PyTorch weights by {gap:.3g}; not kept.")
    return path


@dataclass
class ExportArguments:
    model_dir: str = field(metadata={"help": "Local model folder; onnx/model.onnx is written inside it."})


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    (args,) = HfArgumentParser(ExportArguments, prog="python -m train.export_onnx").parse_args_into_dataclasses(args=argv)
    try:
        classifier = PneumoniaClassifier.from_pretrained(args.model_dir, runtime="pytorch")
        path = export_onnx(classifier, args.model_dir)
    except (ModelLoadError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
