"""DICOM uploads: a bounded read of the header, every refusal the header alone can justify, then the pixels
(`chestxray.dicom_pixels`).

Nothing is decoded before the header has said the file is a single grey (or RGB) radiograph of a sane size, and
the parse itself is bounded: a deflated dataset is inflated up to a budget, and pydicom's header read is cut off
after a fixed number of reads. Every failure becomes one `ImageReadError` whose message never quotes the header;
pydicom's warnings and log records, which can, are silenced. The only header values that leave this module are
the coded facts in `image.info["dicom"]` (see `dicom_facts`).
"""

from __future__ import annotations

import io
import logging
import math
import re
import warnings
import zlib

from PIL import Image
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset, read_partial, read_preamble
from pydicom.multival import MultiValue
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from chestxray.dicom_codes import OTHER_MODALITIES, READ_MODALITIES
from chestxray.dicom_pixels import PixelModule, decode_pixels, grey_image
from chestxray.upload import ImageReadError, ReadLimits, check_decoded_bytes, check_geometry

logging.getLogger("pydicom").addFilter(lambda record: False)  # its records can quote header values (patient data)

GREY_PHOTOMETRIC = frozenset({"MONOCHROME1", "MONOCHROME2"})
COLOUR_PHOTOMETRIC = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420"})
READABLE_LAYOUTS = {True: {(1, 1), (1, 8), (1, 16), (1, 32)}, False: {(3, 8)}}  # grey?: (samples, bits allocated)
PIXEL_DATA, FLOAT_PIXEL_DATA, DOUBLE_FLOAT_PIXEL_DATA = 0x7FE00010, 0x7FE00008, 0x7FE00009
_DEFER_BYTES = 4096  # larger values (pixels, private blobs) stay in the buffer until asked for
_DEFERRED_READS = 1000  # reads left, after the header, for the deferred values this module asks for
_CODE = re.compile(r"[A-Z0-9_ ]{1,16}")  # a DICOM code string, as read: upper case, at most 16 characters
_MAX_VALUE_BYTES = 1024  # a header value used here longer than this is treated as absent
_MAX_LUT_BYTES = 256 * 1024  # a 16-bit LUT of 65,536 entries is 128 kB
_GREY_LEVEL_ELEMENTS = ("RescaleSlope", "RescaleIntercept", "RescaleType", "WindowCenter", "WindowWidth", "VOILUTFunction")
_LUT_SEQUENCES = ("ModalityLUTSequence", "VOILUTSequence")
_AGE_UNITS_PER_YEAR = {"D": 365.25, "W": 365.25 / 7, "M": 12.0, "Y": 1.0}


def read_dicom(data: bytes, name: str, limits: ReadLimits) -> Image.Image:
    """The 8-bit grey image of a DICOM radiograph, with its coded facts in `image.info["dicom"]`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's warnings can quote header values
        try:
            dataset = _parse(data, name, limits)
            module = _checked_pixel_module(dataset, name, limits)
            pixels = decode_pixels(dataset.PixelData, module, name, limits)
            grey, colour = grey_image(pixels, _grey_level_dataset(dataset, module), module)
            grey.info = {"colourfulness": colour, "dicom": dicom_facts(dataset)}
            return grey
        except ImageReadError:
            raise
        except MemoryError:
            message = f"`{name}` is too large to decode in the memory available."
        except Exception:  # noqa: BLE001 - whatever pydicom or numpy raised, and whatever it quoted
            message = f"`{name}`: the DICOM pixel data cannot be decoded (unsupported compression or damaged file)."
    raise ImageReadError(message)  # outside `except`: the original exception, which may quote the header, is dropped


def dicom_facts(dataset: Dataset) -> dict:
    """Coded facts for the out-of-distribution gate: never shown, never logged. Each is None when absent or malformed.

    modality ("CR", "DX", ...), view_position ("PA", "AP", "LL", ...), body_part ("CHEST", ...), laterality ("R", "L",
    "B", "U"; ImageLaterality, else Laterality): upper-case code strings of at most 16 characters.
    patient_age_years: PatientAge ("004Y", "018M", "010W", "030D") in years. pixel_spacing_mm: the mean of PixelSpacing,
    else ImagerPixelSpacing, in mm.
    """
    age = re.fullmatch(r"(\d{3})([DWMY])", _code(dataset, "PatientAge") or "")
    return {
        "modality": _code(dataset, "Modality"),
        "view_position": _code(dataset, "ViewPosition"),
        "body_part": _code(dataset, "BodyPartExamined"),
        "laterality": _code(dataset, "ImageLaterality") or _code(dataset, "Laterality"),
        "patient_age_years": int(age[1]) / _AGE_UNITS_PER_YEAR[age[2]] if age else None,
        "pixel_spacing_mm": _spacing(dataset, "PixelSpacing") or _spacing(dataset, "ImagerPixelSpacing"),
    }


class _BoundedBuffer(io.BytesIO):
    """pydicom reads every element, item and delimiter through `read`: counting the calls bounds the parse."""

    def __init__(self, data: bytes, max_reads: int):
        super().__init__(data)
        self.reads, self.max_reads, self.exhausted = 0, max_reads, False

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        if self.reads > self.max_reads:
            self.exhausted = True
            raise EOFError("header read budget exhausted")
        return super().read(size)


def _parse(data: bytes, name: str, limits: ReadLimits) -> Dataset:
    meta, dataset_start = _file_meta(data, limits)
    deflated = meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
    buffer = _BoundedBuffer(_inflate(data[dataset_start:], name, limits) if deflated else data, limits.max_dicom_header_reads)
    try:
        dataset = read_partial(buffer, stop_when=_after_pixel_data, defer_size=_DEFER_BYTES, force=True)
    except Exception:  # noqa: BLE001
        dataset = None
    if buffer.exhausted:
        raise ImageReadError(f"`{name}` has a DICOM header too large or too deeply nested to read.")
    # Without a file meta group, any bytes parse as some elements (a text file named .dcm): a DICOM image has
    # identification (group 0008) or image (group 0028) elements.
    if dataset is None or len(dataset) == 0 or (not meta and not any(tag.group in (0x0008, 0x0028) for tag in dataset.keys())):
        raise ImageReadError(f"`{name}` is not a readable DICOM file.")
    buffer.max_reads = buffer.reads + _DEFERRED_READS  # the few values asked for later (the pixels among them)
    if deflated:
        dataset.file_meta = FileMetaDataset(meta)
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # what the inflated bytes are
    return dataset


def _file_meta(data: bytes, limits: ReadLimits) -> tuple[Dataset, int]:
    """The file meta group (always explicit VR little endian) and where the dataset after it starts."""
    buffer = _BoundedBuffer(data, limits.max_dicom_header_reads)
    try:
        read_preamble(buffer, force=True)
        meta = read_dataset(buffer, is_implicit_VR=False, is_little_endian=True, stop_when=lambda tag, vr, length: tag >> 16 != 2)
        return meta, buffer.tell()
    except Exception:  # noqa: BLE001 - damaged meta: pydicom's own reading decides what the file is
        return Dataset(), 0


def _inflate(deflated: bytes, name: str, limits: ReadLimits) -> bytes:
    """Inflate a Deflated Explicit VR dataset up to the largest one a radiograph needs, never further."""
    budget = limits.max_decoded_bytes + limits.dicom_header_bytes
    inflated = zlib.decompressobj(-zlib.MAX_WBITS).decompress(deflated, budget + 1)
    if len(inflated) > budget:
        raise ImageReadError(f"`{name}` inflates to more than {budget:,} bytes, more than the limit for one radiograph.")
    return inflated


def _after_pixel_data(tag: int, vr: str | None, length: int) -> bool:
    return tag > PIXEL_DATA  # trailing padding and whatever follows the pixels is never parsed


def _checked_pixel_module(dataset: Dataset, name: str, limits: ReadLimits) -> PixelModule:
    """Every refusal that the header alone can justify, before a pixel is decoded."""
    modalities = _codes(dataset, "Modality")
    if modalities is None:  # too long to be sane (a CT padded past 1 kB): not taken for an absent one
        raise ImageReadError(f"`{name}` has a DICOM modality this tool cannot read (CR or DX expected).")
    # Each value counts (a CT must not pass as "CT\\CT"); free text such as "X-RAY" is no code, as if absent.
    modality = next((code for code in modalities if code not in READ_MODALITIES), None)
    if modality:
        kind = OTHER_MODALITIES.get(modality, "an image of another kind")
        raise ImageReadError(f"`{name}` is {kind}, not a chest X-ray (DICOM modality CR or DX expected).")
    photometric = _code(dataset, "PhotometricInterpretation")
    if photometric is None and _unreadable_code(dataset, "PhotometricInterpretation"):
        raise ImageReadError(f"`{name}` has a photometric interpretation this tool cannot read (expected MONOCHROME1/2).")
    photometric = photometric or "MONOCHROME2"
    if photometric == "PALETTE COLOR":
        raise ImageReadError(f"`{name}` uses a colour palette (as ultrasound does), not the grey scale of an X-ray.")
    if photometric not in GREY_PHOTOMETRIC | COLOUR_PHOTOMETRIC:
        raise ImageReadError(f"`{name}` has a photometric interpretation this tool cannot read (expected MONOCHROME1/2).")
    if PIXEL_DATA not in dataset:
        if FLOAT_PIXEL_DATA in dataset or DOUBLE_FLOAT_PIXEL_DATA in dataset:
            raise ImageReadError(f"`{name}` holds floating-point values (a computed map), not an X-ray image.")
        raise ImageReadError(f"`{name}` is a DICOM file without an image (no pixel data).")
    rows, columns = _whole_number(dataset, "Rows", name), _whole_number(dataset, "Columns", name)
    check_geometry(columns, rows, name, limits)
    frames = _whole_number(dataset, "NumberOfFrames", name, default=1)
    if frames > 1:
        raise ImageReadError(f"`{name}` has {frames} frames (a stack or a cine loop); upload a single still radiograph.")
    samples = _whole_number(dataset, "SamplesPerPixel", name, default=1)
    bits = _whole_number(dataset, "BitsAllocated", name)
    if (samples, bits) not in READABLE_LAYOUTS[photometric in GREY_PHOTOMETRIC]:
        raise ImageReadError(f"`{name}` has a pixel layout this tool cannot read ({samples} samples of {bits} bits).")
    check_decoded_bytes(columns, rows, samples * max(1, bits // 8), name, limits)
    bits_stored = _whole_number(dataset, "BitsStored", name, default=bits)
    module = PixelModule(rows, columns, samples, bits, bits_stored if 0 < bits_stored <= bits else bits,
                         _whole_number(dataset, "PixelRepresentation", name, default=0) == 1, photometric,
                         1 if _as_number(_value(dataset, "PlanarConfiguration")) == 1 else 0, _transfer_syntax(dataset, name))
    _check_pixel_data_length(dataset, module, name)
    return module


def _transfer_syntax(dataset: Dataset, name: str) -> UID:
    syntax = dataset.file_meta.get("TransferSyntaxUID") if hasattr(dataset, "file_meta") else None
    if syntax is None:  # a bare dataset: as pydicom read it
        return ImplicitVRLittleEndian if dataset.original_encoding[0] else ExplicitVRLittleEndian
    if not UID(str(syntax)).is_transfer_syntax:
        raise ImageReadError(f"`{name}` declares an unknown DICOM transfer syntax; export it again uncompressed.")
    return UID(str(syntax))


def _check_pixel_data_length(dataset: Dataset, module: PixelModule, name: str) -> None:
    if module.transfer_syntax.is_encapsulated:
        return  # compressed frames are checked as they are decoded
    element = dataset.get_item(PIXEL_DATA, keep_deferred=True)
    length = len(element.value) if element.value is not None else element.length
    pixels = module.rows * module.columns * module.samples
    expected = math.ceil(pixels / 8) if module.bits_allocated == 1 else pixels * module.bits_allocated // 8
    if module.photometric == "YBR_FULL_422":
        expected = expected * 2 // 3
    if length < expected:
        raise ImageReadError(f"`{name}`: the DICOM pixel data cannot be decoded (truncated: shorter than its header says).")


def _grey_level_dataset(dataset: Dataset, module: PixelModule) -> Dataset:
    """The rescale, window and LUT elements that parse, beside the checked pixel module; a damaged one is left out."""
    clean = Dataset()
    clean.BitsStored, clean.PixelRepresentation = module.bits_stored, int(module.signed)
    clean.PhotometricInterpretation = module.photometric
    for keyword in _GREY_LEVEL_ELEMENTS + _LUT_SEQUENCES:
        tag = tag_for_keyword(keyword)
        element = dataset.get_item(tag, keep_deferred=True)
        if element is None or getattr(element, "length", 0) > (_MAX_LUT_BYTES if keyword in _LUT_SEQUENCES else _MAX_VALUE_BYTES):
            continue
        try:
            clean[tag] = dataset[tag]
        except Exception:  # noqa: BLE001 - a value that does not parse is ignored, like an absent one
            continue
    return clean


def _whole_number(dataset: Dataset, keyword: str, name: str, default: int | None = None) -> int:
    value = _value(dataset, keyword)
    if keyword not in dataset or value == "":
        if default is None:
            raise ImageReadError(f"`{name}` has a damaged DICOM header ({keyword} is missing).")
        return default
    number = _as_number(value)
    if number is None or number < 0 or number != int(number):
        raise ImageReadError(f"`{name}` has a damaged DICOM header ({keyword} is not a whole number).")
    return int(number)


def _as_number(value) -> float | None:
    try:
        number = float(value)
    except Exception:  # noqa: BLE001
        return None
    return number if math.isfinite(number) else None


def _value(dataset: Dataset, keyword: str):
    """An element's value, or None when it is absent, too long to be sane, or does not parse."""
    element = dataset.get_item(tag_for_keyword(keyword), keep_deferred=True)
    if element is None or getattr(element, "length", 0) > _MAX_VALUE_BYTES:
        return None
    try:
        return dataset[keyword].value
    except Exception:  # noqa: BLE001
        return None


def _code(dataset: Dataset, keyword: str) -> str | None:
    value = _value(dataset, keyword)
    text = value.strip().upper() if isinstance(value, str) else ""
    return text if _CODE.fullmatch(text) else None


def _unreadable_code(dataset: Dataset, keyword: str) -> bool:
    """A code element that holds something, but not one readable code (an empty one is as good as absent)."""
    if keyword not in dataset:
        return False
    value = _value(dataset, keyword)
    return not (isinstance(value, str) and not value.strip()) and _code(dataset, keyword) is None


def _codes(dataset: Dataset, keyword: str) -> list[str] | None:
    """Every value of a code element that reads as a code ([] when absent or empty), or None when the element is
    there but too long or malformed to read at all."""
    if keyword not in dataset:
        return []
    value = _value(dataset, keyword)
    if value is None:
        return None
    values = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple, MultiValue)) else []
    texts = [text.strip().upper() for text in values if isinstance(text, str)]
    return [text for text in texts if _CODE.fullmatch(text)]


def _spacing(dataset: Dataset, keyword: str) -> float | None:
    value = _value(dataset, keyword)
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        numbers = [_as_number(v) for v in value]
    except TypeError:
        return None
    if len(numbers) != 2 or any(n is None or n <= 0 for n in numbers):
        return None
    return float(sum(numbers) / 2)
