"""Export a model folder's network to `onnx/model.onnx`, the fast CPU runtime the app prefers.

    python -m train.export_onnx --model_dir model

The graph is the one the app runs (`LogitsAndFeatures`: logits and the pooled OOD features) with a
dynamic batch size. The export is checked against the PyTorch weights before it is kept.
"""

from __future__ import annotations

import logging
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

from chestxray.classifier import LogitsAndFeatures, ModelLoadError, PneumoniaClassifier
from chestxray.runtime import ONNX_FILE, load_onnx_runtime

logger = logging.getLogger(__name__)


def export_onnx(classifier: PneumoniaClassifier, folder: str | Path) -> Path:
    """Write `folder/onnx/model.onnx` for `classifier`'s weights; raises if it does not reproduce them."""
    path = Path(folder) / ONNX_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    network = LogitsAndFeatures(classifier.model).eval()
    size = classifier.image_size
    example = torch.zeros(2, 3, size, size)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on transformers internals are not actionable here
        program = torch.onnx.export(
            network, (example,), input_names=["pixel_values"], output_names=["logits", "features"],
            dynamic_shapes={"pixel_values": {0: torch.export.Dim.DYNAMIC}}, dynamo=True, verbose=False)
    program.save(str(path))
    if load_onnx_runtime(Path(folder), network, size, runtime="onnx") is None:
        path.unlink()
        raise RuntimeError(f"The ONNX export of {folder} does not reproduce its PyTorch weights; not kept.")
    return path


@dataclass
class ExportArguments:
    model_dir: str = field(metadata={"help": "Local model folder; onnx/model.onnx is written inside it."})


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    (args,) = HfArgumentParser(ExportArguments).parse_args_into_dataclasses(args=argv)
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
