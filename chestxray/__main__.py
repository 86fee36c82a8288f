"""`python -m chestxray predict FILES_OR_FOLDERS... [--csv out.csv] [--model MODEL]`"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tqdm.auto import tqdm

from chestxray.batch import expand_paths, predict_files, write_csv
from chestxray.classifier import ModelLoadError, PneumoniaClassifier
from chestxray.runtime import RUNTIMES

DEFAULT_MODEL = str(Path(__file__).resolve().parent.parent / "model")


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m chestxray", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="Classify images, DICOM files or folders of them.")
    predict.add_argument("inputs", nargs="+", help="Files or folders (searched recursively).")
    predict.add_argument("--csv", help="Also write the results to this CSV file.")
    predict.add_argument("--model", default=os.environ.get("MODEL_ID", DEFAULT_MODEL), help="Model folder or Hub id (default: $MODEL_ID or the bundled model/).")
    predict.add_argument("--revision", default=os.environ.get("MODEL_REVISION"), help="Hub revision.")
    predict.add_argument("--batch_size", type=int, default=16)
    predict.add_argument("--runtime", choices=RUNTIMES, default="auto",
                         help="auto: ONNX Runtime when the model ships a matching onnx/model.onnx, else PyTorch.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    files = expand_paths(args.inputs)
    if not files:
        print("error: no image files found in the given paths.", file=sys.stderr)
        return 1
    try:
        classifier = PneumoniaClassifier.from_pretrained(args.model, revision=args.revision, runtime=args.runtime)
    except ModelLoadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if classifier.missing_gate_warning():
        print(f"warning: {classifier.missing_gate_warning()}", file=sys.stderr)
    with tqdm(total=len(files), unit="image", file=sys.stderr) as bar:
        results = predict_files(classifier, [(str(f), f) for f in files], args.batch_size, progress=bar.update)
    width = min(60, max(len(r.file) for r in results))
    print(f"{'file':<{width}}  {'P(pneumonia)':>12}  decision")
    for r in results:
        print(f"{r.file[-width:]:<{width}}  {outcome_text(r)}")
    if args.csv:
        print(f"Wrote {write_csv(results, args.csv)}", file=sys.stderr)
    refused = sum(r.error is None and r.decision is None for r in results)
    cautioned = sum(r.decision is not None and r.message is not None for r in results)
    if refused or cautioned:
        print(f"{refused} of {len(results)} files got no decision (not a frontal chest X-ray); "
              f"{cautioned} got a decision with a warning.", file=sys.stderr)
    failed = sum(r.error is not None for r in results)
    if failed:
        print(f"{failed} of {len(results)} files could not be read.", file=sys.stderr)
    return 1 if failed else 0


def outcome_text(result) -> str:
    """The probability and decision; none, with the gate's reason and sentence, when it refused the image."""
    if result.error is not None:
        return f"{'-':>12}  error: {result.error}"
    if result.decision is None:
        return f"{'-':>12}  no decision ({result.gate_reason}): {result.message}"
    warning = f"  [warning ({result.gate_reason}): {result.message}]" if result.message else ""
    return f"{result.pneumonia_probability:>12.4f}  {result.decision}{warning}"


if __name__ == "__main__":
    sys.exit(main())
