"""Many files at once, for the CLI and the app's batch tab: one bad file never spoils the rest."""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from chestxray.classifier import PneumoniaClassifier
from chestxray.imaging import ImageReadError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".dcm", ".dicom", ""}
CSV_COLUMNS = ["file", "pneumonia_probability", "decision", "threshold", "warning", "error"]


@dataclass
class FileResult:
    file: str
    pneumonia_probability: float | None = None
    decision: str | None = None
    threshold: float | None = None
    warning: str | None = None
    error: str | None = None


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
                  progress: Callable[[int], None] | None = None) -> list[FileResult]:
    """`files` are (display name, path) pairs; results come back in the same order."""
    results: list[FileResult] = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        images, readable = [], []
        for name, path in chunk:
            result = FileResult(file=name)
            try:
                images.append(classifier.read(path, name=name))
                readable.append(result)
            except ImageReadError as error:
                result.error = str(error)
            results.append(result)
        for result, prediction in zip(readable, classifier.predict(images, batch_size) if images else []):
            result.pneumonia_probability = round(prediction.pneumonia_probability, 4)
            result.decision, result.threshold, result.warning = prediction.decision, round(prediction.threshold, 4), prediction.warning
        if progress:
            progress(len(chunk))
    return results


def write_csv(results: Sequence[FileResult], path: str | Path) -> Path:
    path = Path(path)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(asdict(result) for result in results)
    return path
