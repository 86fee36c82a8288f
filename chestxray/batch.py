"""Many files at once, for the CLI and the app's batch tab: one bad file never spoils the rest."""

from __future__ import annotations

import csv
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from chestxray.classifier import PneumoniaClassifier
from chestxray.imaging import ImageReadError
from chestxray.upload import display_name

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".dcm", ".dicom", ""}
# `decision` and `pneumonia_probability` are empty when the gate refused the image (gate "not_frontal_chest");
# `gate_reason` is its code and `message` its sentence (also the warning of "outside_population").
CSV_COLUMNS = ["file", "pneumonia_probability", "decision", "threshold", "gate", "gate_reason", "message", "error"]
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet would run such a cell as a formula


@dataclass
class FileResult:
    file: str
    pneumonia_probability: float | None = None
    decision: str | None = None
    threshold: float | None = None
    gate: str | None = None
    gate_reason: str | None = None
    message: str | None = None
    error: str | None = None

    @property
    def warning(self) -> str | None:
        """The gate's sentence (the name older callers use)."""
        return self.message


def expand_paths(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders searched recursively for images and DICOM (with or without `.dcm`)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files.extend(sorted(p for p in item.rglob("*") if p.is_file() and not p.name.startswith(".")
                                and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            files.append(item)
    return files


def predict_files(classifier: PneumoniaClassifier, files: Sequence[tuple[str, str | Path]], batch_size: int = 16,
                  progress: Callable[[int], None] | None = None, time_budget_s: float | None = None) -> list[FileResult]:
    """`files` are (display name, path) pairs; results come back in the same order, each named safely for display.

    With `time_budget_s`, files not yet started when it runs out are answered with an error row rather than read:
    a public server must not let one batch of slow-to-decode files hold its worker for minutes."""
    results: list[FileResult] = []
    started = time.monotonic()
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        images, readable = [], []
        for name, path in chunk:
            result = FileResult(file=display_name(name))
            if time_budget_s is not None and time.monotonic() - started > time_budget_s:
                result.error = (f"Not read: this batch used up its {time_budget_s:.0f} seconds of the server; "
                                "send this file again in another batch.")
                results.append(result)
                continue
            try:
                images.append(classifier.shrink(classifier.read(path, name=name)))  # one full-size image at a time
                readable.append(result)
            except ImageReadError as error:
                result.error = str(error)
            results.append(result)
        for result, prediction in zip(readable, classifier.predict(images, batch_size) if images else []):
            probability = prediction.pneumonia_probability
            result.pneumonia_probability = None if probability is None else round(probability, 4)
            result.decision, result.threshold = prediction.decision, round(prediction.threshold, 4)
            result.gate, result.gate_reason, result.message = prediction.gate, prediction.gate_reason, prediction.message
        if progress:
            progress(len(chunk))
    return results


def write_csv(results: Sequence[FileResult], path: str | Path) -> Path:
    path = Path(path)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows({key: _inert_cell(value) for key, value in asdict(result).items()} for result in results)
    return path


def _inert_cell(value):
    """A text cell that a spreadsheet would read as a formula gets a leading `'` (OWASP's CSV-injection advice)."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def read_split_list(path: str | Path) -> dict[str, str]:
    """File name -> label from a model folder's `splits/<split>.csv`, as `train.data.write_split_lists` writes it
    (a real CSV: a file name may hold a comma)."""
    with Path(path).open(newline="") as handle:
        return {row["file"]: row["label"] for row in csv.DictReader(handle)}
