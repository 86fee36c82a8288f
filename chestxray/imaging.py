"""Turn any real upload (JPEG, PNG 8/16-bit, TIFF, BMP, WebP, DICOM) into the grey image the model sees.

Every failure becomes an `ImageReadError` whose message a person can act on; nothing here logs
or returns DICOM header data, so patient details never leave this module.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from chestxray.ood import colourfulness

ImageSource = Union[bytes, str, os.PathLike, BinaryIO]

# 50 megapixels is well above any radiograph (a 43x43 cm detector at 100 µm is ~18.5 MP) and
# far below what would exhaust a 2-core Space's memory.
DEFAULT_MAX_PIXELS = 50_000_000
SUPPORTED_FORMATS = "PNG, JPEG, TIFF, BMP, WebP or DICOM"
_DICOM_MAGIC_OFFSET = 128
ORIENTATION_TAG = 0x0112


class ImageReadError(ValueError):
    """An upload that cannot be used as a chest X-ray, with a message meant for the person who sent it."""


def read_image(
    source: ImageSource, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None
) -> Image.Image:
    """Read `source` as an 8-bit grey ("L") image, upright, whatever its format.

    With `min_side`, a JPEG is decoded at 1/2, 1/4 or 1/8 scale (DCT scaling, in the decoder) as long as
    both sides keep at least `min_side` pixels: a model that sees 160 px needs no 2000x1600 decode.
    """
    data, name = _read_bytes(source, name)
    if not data:
        raise ImageReadError(f"`{name}` is empty (0 bytes).")
    if is_dicom(data, name):
        return _read_dicom(data, name, max_pixels)
    return _read_raster(data, name, max_pixels, min_side)


def is_dicom(data: bytes, name: str = "") -> bool:
    """DICOM is recognised by content (the `DICM` tag), or by a `.dcm` name for files without a preamble."""
    if data[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return True
    return name.lower().endswith((".dcm", ".dicom"))


def to_model_input(image: Image.Image) -> Image.Image:
    """The model was trained on grey images replicated into 3 channels."""
    return image.convert("RGB") if image.mode != "RGB" else image


def _read_bytes(source: ImageSource, name: str | None) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source), name or "upload"
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageReadError(f"`{name or path.name}` does not exist or is not a file.")
        return path.read_bytes(), name or path.name
    return source.read(), name or getattr(source, "name", "upload")


def _read_raster(data: bytes, name: str, max_pixels: int, min_side: int | None = None) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            _check_pixel_count(image.width, image.height, name, max_pixels)
            _refuse_multi_frame(getattr(image, "n_frames", 1), name)
            if min_side and image.format == "JPEG":
                image.draft(None, (min_side, min_side))
            image.load()
    except ImageReadError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        if isinstance(error, UnidentifiedImageError):
            raise ImageReadError(f"`{name}` is not an image (expected {SUPPORTED_FORMATS}).") from None
        raise ImageReadError(f"`{name}` has too many pixels to be a radiograph, more than the limit of {max_pixels:,}.") from None
    except (OSError, SyntaxError, ValueError, EOFError):
        raise ImageReadError(f"`{name}` is truncated or corrupt and cannot be decoded.") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a damaged EXIF block costs only the orientation
        if image.getexif().get(ORIENTATION_TAG, 1) != 1:
            image = ImageOps.exif_transpose(image)
    colour = colourfulness(image) if image.mode not in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F") else 0.0
    grey = _to_grey(image)
    grey.info["colourfulness"] = colour  # read by the out-of-distribution check
    return grey


def _check_pixel_count(width: int, height: int, name: str, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageReadError(
            f"`{name}` is {width}x{height} = {width * height:,} pixels, more than the limit of {max_pixels:,}."
        )
    if width < 1 or height < 1:
        raise ImageReadError(f"`{name}` has no pixels.")


def _refuse_multi_frame(frame_count: int, name: str) -> None:
    if frame_count > 1:
        raise ImageReadError(
            f"`{name}` has {frame_count} frames (animation or stack); upload a single still radiograph."
        )


def _to_grey(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent areas become black, like the unexposed border of a film.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return _array_to_grey(np.asarray(image, dtype=np.float64))
    return image if image.mode == "L" else image.convert("L")


def _array_to_grey(pixels: np.ndarray) -> Image.Image:
    """Stretch any numeric range (16-bit PNG, DICOM) to 0-255."""
    pixels = np.nan_to_num(pixels.astype(np.float64))
    low, high = float(pixels.min()), float(pixels.max())
    scaled = np.zeros_like(pixels) if high <= low else (pixels - low) * (255.0 / (high - low))
    return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")


def _read_dicom(data: bytes, name: str, max_pixels: int) -> Image.Image:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception:
        raise ImageReadError(f"`{name}` is not a readable DICOM file.") from None
    if "PixelData" not in dataset:
        raise ImageReadError(f"`{name}` is a DICOM file without an image (no pixel data).")
    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    _check_pixel_count(columns, rows, name, max_pixels)
    _refuse_multi_frame(int(dataset.get("NumberOfFrames", 1) or 1), name)
    try:
        pixels = dataset.pixel_array
        photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
        if photometric.startswith("MONOCHROME"):
            pixels = apply_voi_lut(apply_modality_lut(pixels, dataset), dataset)
        elif pixels.ndim == 3:
            pixels = pixels.astype(np.float64).mean(axis=-1)
    except Exception:
        raise ImageReadError(
            f"`{name}`: the DICOM pixel data cannot be decoded (unsupported compression or damaged file)."
        ) from None
    grey = _array_to_grey(np.asarray(pixels))
    return ImageOps.invert(grey) if photometric == "MONOCHROME1" else grey
