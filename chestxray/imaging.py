"""Turn any real upload (JPEG, PNG 8/16-bit, TIFF, BMP, WebP, DICOM) into the grey image the model sees.

Every failure, whatever raised it, becomes an `ImageReadError` whose message a person can act on, and every
limit (`ReadLimits`) is checked from the header before pixels are decoded. Nothing here logs or returns
DICOM header data except the few coded facts of `chestxray.dicom`, so patient details never leave the reader.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageChops, ImageMode, UnidentifiedImageError

from chestxray.upload import (
    FRAMES_COUNTED,
    SUPPORTED_FORMATS,
    ImageReadError,
    ReadLimits,
    check_container,
    check_decoded_bytes,
    check_geometry,
    check_tiff_structure,
    colour_thumbnail,
    colourfulness,
    display_name,
    stretch_to_grey,
)

__all__ = ["DEFAULT_MAX_PIXELS", "ImageReadError", "ImageSource", "is_dicom", "read_image", "to_model_input"]

ImageSource = Union[bytes, str, os.PathLike, BinaryIO]

DEFAULT_MAX_PIXELS = ReadLimits().max_pixels
# Pillow opens only these: EPS (Ghostscript), ICO, PGM, JPEG 2000 and its other plugins are never reached.
# GIF is not advertised but still read, so that an animated one is refused for what it is.
PILLOW_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "WEBP", "GIF")
_DICOM_MAGIC_OFFSET = 128
_DICOM_FIRST_GROUPS = (b"\x02\x00", b"\x08\x00")  # file meta, or identifying data of a bare dataset
ORIENTATION_TAG = 0x0112
NEW_SUBFILE_TYPE = 254  # TIFF: what a page is; bit 0 a reduced-resolution copy of another, bit 2 a transparency mask
_PREVIEW_SUBFILE = 0b101
_ORIENTATION_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
                          5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                          8: Image.Transpose.ROTATE_90}  # as ImageOps.exif_transpose
_NUMERIC_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # 16-bit, 32-bit and float grey
_GREY_MODES = ("1", "L") + _NUMERIC_MODES
_TEXT_CHUNK_ERRORS = ("too large", "too much memory")  # Pillow's PNG text-chunk limits


def read_image(
    source: ImageSource, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None
) -> Image.Image:
    """Read `source` as an 8-bit grey ("L") image, upright, whatever its format.

    With `min_side`, a JPEG is decoded at 1/2, 1/4 or 1/8 scale (DCT scaling, in the decoder) as long as
    both sides keep at least `min_side` pixels: a model that sees 160 px needs no 2000x1600 decode.
    A DICOM file's coded facts (modality, view, body part, age, ...) are in `image.info["dicom"]`.
    """
    limits = ReadLimits(max_pixels=max_pixels)
    name = display_name(name or _source_name(source))
    try:
        data = _read_bytes(source, name, limits)
        if not data:
            raise ImageReadError(f"`{name}` is empty (0 bytes).")
        if is_dicom(data, name):
            from chestxray.dicom import read_dicom  # pydicom is imported only when a DICOM file arrives

            return read_dicom(data, name, limits)
        return _read_raster(data, name, limits, min_side)
    except ImageReadError:
        raise
    except MemoryError:
        message = f"`{name}` is too large to decode in the memory available."
    except Exception:  # noqa: BLE001 - a reader's own bug must still be one file's clear error, never a traceback
        message = f"`{name}` cannot be read (damaged or unsupported file)."
    raise ImageReadError(message)  # raised outside `except`: no chained exception carries file contents along


def is_dicom(data: bytes, name: str = "") -> bool:
    """DICOM is recognised by content: the `DICM` tag after the preamble or, without a preamble, a first element
    of group 0002 or 0008 in explicit or implicit VR; or by a `.dcm` name."""
    if data[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return True
    if data[:2] in _DICOM_FIRST_GROUPS and len(data) >= 8:
        vr, implicit_length = data[4:6], int.from_bytes(data[4:8], "little")
        if vr.isalpha() and vr.isupper() or implicit_length <= len(data) - 8:
            return True
    return name.lower().endswith((".dcm", ".dicom"))


def to_model_input(image: Image.Image) -> Image.Image:
    """The model was trained on grey images replicated into 3 channels."""
    return image.convert("RGB") if image.mode != "RGB" else image


def _source_name(source: ImageSource) -> str:
    if isinstance(source, (bytes, bytearray)):
        return "upload"
    if isinstance(source, (str, os.PathLike)):
        return Path(source).name
    return str(getattr(source, "name", "") or "upload")


def _read_bytes(source: ImageSource, name: str, limits: ReadLimits) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageReadError(f"`{name}` does not exist or is not a file.")
        if path.stat().st_size > limits.max_file_bytes:  # refused unread
            raise ImageReadError(_file_too_big(name, limits))
        data = path.read_bytes()
    else:
        data = source.read(limits.max_file_bytes + 1)
    if len(data) > limits.max_file_bytes:
        raise ImageReadError(_file_too_big(name, limits))
    return data


def _file_too_big(name: str, limits: ReadLimits) -> str:
    return f"`{name}` is larger than {limits.max_file_bytes // 2**20} MB, more than the limit for one X-ray file."


def _read_raster(data: bytes, name: str, limits: ReadLimits, min_side: int | None) -> Image.Image:
    check_container(data, name, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes on damaged metadata are no business of the sender
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=PILLOW_FORMATS)
            check_geometry(image.width, image.height, name, limits)
            check_decoded_bytes(image.width, image.height, _bytes_per_pixel(image.mode), name, limits)
            _refuse_multi_frame(image, name)
            _refuse_slow_rle_bmp(image, len(data), name, limits)
            if min_side and image.format in ("JPEG", "MPO"):
                image.draft(None, (min_side, min_side))
            image.load()
            _check_exif(image, name, limits)  # after the pixels: a PNG may carry its EXIF after them
    except ImageReadError:
        raise
    except Exception as error:  # noqa: BLE001 - each decoder failure gets the message that fits it
        message = _decode_failure(error, name, limits)
    else:
        return _upright_grey(image)
    raise ImageReadError(message)


def _decode_failure(error: Exception, name: str, limits: ReadLimits) -> str:
    if isinstance(error, UnidentifiedImageError):
        return f"`{name}` is not an image (expected {SUPPORTED_FORMATS})."
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return f"`{name}` has too many pixels to be a radiograph, more than the limit of {limits.max_pixels:,}."
    if isinstance(error, ValueError) and any(text in str(error).lower() for text in _TEXT_CHUNK_ERRORS):
        return f"`{name}` carries text metadata too large to read; save the image again without it."
    if isinstance(error, MemoryError):
        return f"`{name}` is too large to decode in the memory available."
    return f"`{name}` is truncated or corrupt and cannot be decoded."


def _bytes_per_pixel(mode: str) -> float:
    """Decoded bytes of one pixel in `mode` (RGB counts 3, as decoded; "1" counts 1, as Pillow stores it)."""
    info = ImageMode.getmode(mode)
    return max(1, np.dtype(info.typestr).itemsize) * len(info.bands)


def _refuse_slow_rle_bmp(image: Image.Image, size: int, name: str, limits: ReadLimits) -> None:
    """Pillow decodes run-length BMP in Python: a large one would hold the CPU for seconds."""
    if image.format != "BMP" or image.info.get("compression") not in (1, 2):
        return
    if size > limits.max_rle_bmp_bytes:
        what = f"larger than {limits.max_rle_bmp_bytes // 2**20} MB"
    elif image.info["compression"] == 2 and image.width * image.height > limits.max_rle4_bmp_pixels:
        what = f"of 4-bit pixels and more than {limits.max_rle4_bmp_pixels:,} of them"
    else:
        return
    raise ImageReadError(f"`{name}` is a run-length-compressed BMP {what}, slower to decode than this app allows; "
                         "save it as PNG or JPEG and upload that.")


def _check_exif(image: Image.Image, name: str, limits: ReadLimits) -> None:
    """A PNG's or WebP's EXIF block is a TIFF structure that `getexif` parses in Python: walked first. (A TIFF's
    own tags were walked with the file; a JPEG's EXIF fits in one 64 kB segment.)"""
    exif = image.info.get("exif")
    if isinstance(exif, bytes) and image.format in ("PNG", "WEBP"):
        check_tiff_structure(exif.removeprefix(b"Exif\0\0"), name, limits, directories=2)


def _refuse_multi_frame(image: Image.Image, name: str) -> None:
    """An animation or a stack is refused; frames are counted only up to a few (Pillow's `n_frames` walks them all,
    but an animated PNG or WebP says its count in its header, and seeking there decodes every frame on the way)."""
    if image.format == "MPO" or not getattr(image, "is_animated", False):
        return  # a camera's JPEG with a preview or an HDR gain map after it: the first image is the photograph
    if image.format in ("PNG", "WEBP"):
        raise ImageReadError(f"`{name}` has {image.n_frames} frames (an animation); upload a single still radiograph.")
    frames, previews_only = 1, image.format == "TIFF"
    try:
        while frames <= FRAMES_COUNTED:
            image.seek(frames)
            frames += 1
            previews_only = previews_only and bool(image.tag_v2.get(NEW_SUBFILE_TYPE, 0) & _PREVIEW_SUBFILE)
    except EOFError:
        if previews_only:  # a TIFF whose later pages are only smaller copies (a thumbnail, a pyramid) or a mask
            image.seek(0)
            return
    count = f"{frames}" if frames <= FRAMES_COUNTED else f"more than {FRAMES_COUNTED}"
    raise ImageReadError(f"`{name}` has {count} frames (animation or stack); upload a single still radiograph.")


def _upright_grey(image: Image.Image) -> Image.Image:
    image = _upright(image)
    colour = 0.0 if image.mode in _GREY_MODES else colourfulness(colour_thumbnail(image))
    grey = _to_grey(image)
    grey.info = {"colourfulness": colour}  # read by the out-of-distribution check; nothing from the file is kept
    return grey


def _upright(image: Image.Image) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            method = _ORIENTATION_TRANSPOSE.get(image.getexif().get(ORIENTATION_TAG, 1))
            if method is not None:
                return image.transpose(method)  # the pixels only: ImageOps.exif_transpose also rewrites the EXIF
        except Exception:  # noqa: BLE001 - a damaged EXIF block costs only the orientation
            pass
    return image


def _to_grey(image: Image.Image) -> Image.Image:
    if image.mode == "PA" or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
    if "A" in image.getbands():
        # Transparent areas become black, like the unexposed border of a film (compositing over black).
        return ImageChops.multiply(image.convert("L"), image.getchannel("A"))
    if image.mode in _NUMERIC_MODES:
        return stretch_to_grey(np.asarray(image))
    return image if image.mode == "L" else image.convert("L")
