"""Shared fixtures: a tiny generated Kermany-style image folder and a tiny model trained on it.

Nothing here touches the network: the Hub is switched off before any Hugging Face import.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "chest_xray"
TINY_MODEL_OVERRIDES = json.dumps({"depths": [1, 1, 1, 1], "hidden_sizes": [8, 16, 32, 64]})
CORRUPT_FILE = "IM-9999-0001.jpeg"

requires_real_data = pytest.mark.skipif(not REAL_DATA.is_dir(), reason="real X-rays in ../shared/data are absent")


def synthetic_xray(label: int, seed: int, size: int = 48) -> Image.Image:
    """A grey 'chest' whose PNEUMONIA version has bright opacities in the lung fields: learnable in seconds."""
    rng = np.random.default_rng(seed)
    image = Image.new("L", (size, size), 20)
    draw = ImageDraw.Draw(image)
    for left in (0.12, 0.56):  # two dark lung fields inside a brighter body
        draw.ellipse([size * left, size * 0.15, size * (left + 0.32), size * 0.85], fill=70)
    if label == 1:
        for _ in range(3):
            x, y = rng.uniform(0.15, 0.8) * size, rng.uniform(0.25, 0.75) * size
            r = rng.uniform(0.06, 0.12) * size
            draw.ellipse([x - r, y - r, x + r, y + r], fill=200)
    pixels = np.asarray(image, dtype=float) + rng.normal(0, 8, (size, size))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def kermany_names(label: int, patient: int, images_per_patient: int, variant: int) -> list[str]:
    if label == 1:
        kind = "bacteria" if variant % 2 == 0 else "virus"
        return [f"person{patient}_{kind}_{patient * 10 + k}.jpeg" for k in range(images_per_patient)]
    prefix = "NORMAL2-IM" if variant % 2 else "IM"
    return [f"{prefix}-{patient:04d}-{k + 1:04d}.jpeg" for k in range(images_per_patient)]


def write_image_folder(root: Path, patients: dict[str, int], images_per_patient: int = 2, seed: int = 0) -> Path:
    """root/<split>/{NORMAL,PNEUMONIA}/<Kermany-style names>.jpeg"""
    counter = seed * 100_000
    for split, count in patients.items():
        for label, name in enumerate(("NORMAL", "PNEUMONIA")):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for patient in range(1, count + 1):
                patient_number = patient + (500 if split == "test" else 0)
                for file_name in kermany_names(label, patient_number, images_per_patient, patient):
                    counter += 1
                    synthetic_xray(label, counter).save(folder / file_name, quality=95)
    return root


@pytest.fixture(scope="session")
def tiny_image_folder(tmp_path_factory) -> Path:
    """Train: 14 patients per class (2 images each) + one corrupt file; test: 4 patients per class."""
    root = write_image_folder(tmp_path_factory.mktemp("data") / "chest_xray", {"train": 14, "test": 4})
    (root / "train" / "NORMAL" / CORRUPT_FILE).write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    return root


def tiny_training_args(data_dir: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--data_dir", str(data_dir), "--output_dir", str(output_dir),
        "--model_type", "convnext", "--image_size", "32", "--config_overrides", TINY_MODEL_OVERRIDES,
        "--num_train_epochs", "3", "--learning_rate", "3e-3", "--per_device_train_batch_size", "8",
        "--validation_fraction", "0.25", "--use_cpu", "--seed", "1", "--disable_tqdm", "true", *extra,
    ]


@pytest.fixture(scope="session")
def trained_model(tiny_image_folder, tmp_path_factory) -> Path:
    from train.pipeline import main

    output_dir = tmp_path_factory.mktemp("runs") / "tiny-model"
    assert main(tiny_training_args(tiny_image_folder, output_dir)) == 0
    return output_dir


PATIENT_NAME = "DOE^JANE^SECRET"
PATIENT_ID = "PID-778899"


def write_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME1", with_pixels: bool = True,
                preamble: bool = True, **elements) -> Path:
    """A real DICOM file (CR, 12-bit) carrying patient data that must never surface anywhere."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.PatientName, dataset.PatientID, dataset.Modality = PATIENT_NAME, PATIENT_ID, "CR"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, photometric
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 16, 12, 11, 0
    for keyword, value in elements.items():
        setattr(dataset, keyword, value)
    if with_pixels:
        dataset.PixelData = pixels.astype(np.uint16).tobytes()
    dataset.save_as(path, enforce_file_format=preamble)
    return path


def xray_as_dicom(path: Path, label: int = 1, seed: int = 3, **kwargs) -> Path:
    """The synthetic X-ray stored inverted (MONOCHROME1) in 12 bits, as some CR systems do."""
    grey = np.asarray(synthetic_xray(label, seed, size=64), dtype=float)
    return write_dicom(path, np.round((255 - grey) * 16).astype(np.uint16), **kwargs)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def app_server(trained_model):
    """The real app (app.build_demo) on the tiny model, launched in-process on a free loopback port."""
    import app
    from chestxray import PneumoniaClassifier

    classifier = PneumoniaClassifier.from_pretrained(trained_model)
    demo = app.build_demo(classifier, "tiny-test-model")
    port = free_port()
    app.serve(demo, "127.0.0.1", port, quiet=True)  # the app's own launch settings and limits
    yield f"http://127.0.0.1:{port}/", classifier
    demo.close()


@pytest.fixture(scope="session")
def examples_app_url(trained_model, tmp_path_factory):
    """The app with examples, copied where the app copies them (on a Space: a few of the Hub dataset's test films)."""
    import app
    from chestxray import PneumoniaClassifier

    folder = tmp_path_factory.mktemp("examples")
    for label, name in ((0, "NORMAL"), (1, "PNEUMONIA")):
        (folder / name).mkdir()
        synthetic_xray(label, 40 + label, size=128).save(folder / name / f"film{label}.png")
    demo = app.build_demo(PneumoniaClassifier.from_pretrained(trained_model), "tiny-test-model",
                          examples=app.local_examples(str(folder)))
    port = free_port()
    app.serve(demo, "127.0.0.1", port, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="session")
def app_client(app_server):
    from gradio_client import Client

    return Client(app_server[0], verbose=False)
