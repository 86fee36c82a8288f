"""DICOM pixels, once `chestxray.dicom` has checked the header: decoded within what the header declared, then
turned into the 8-bit grey image the model sees.

RLE is decoded by Pillow's C PackBits decoder (pydicom's Python loop takes ~1 s per 12 MB of 2-byte runs); a
JPEG or JPEG 2000 frame's own size is compared with the header before it is decoded; anything else is pydicom's,
run on a dataset that holds only the checked numbers and the pixels, never patient data.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, get_frame
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder
from pydicom.uid import UID, RLELossless

from chestxray.upload import (ImageReadError, ReadLimits, apply_lut, check_container, colour_thumbnail, colourfulness,
                              stretch_to_grey)

# Compressed frames whose own header Pillow reads without decoding, to compare their size with the DICOM header.
_FRAME_HEADER_FORMATS = {
    "1.2.840.10008.1.2.4.50": "JPEG", "1.2.840.10008.1.2.4.51": "JPEG", "1.2.840.10008.1.2.4.57": "JPEG",
    "1.2.840.10008.1.2.4.70": "JPEG", "1.2.840.10008.1.2.4.90": "JPEG2000", "1.2.840.10008.1.2.4.91": "JPEG2000",
}
_RLE_HEADER_BYTES = 64  # the number of segments, then 15 offsets
# JPEG 2000 decoding costs ~0.1-0.2 s of CPU per compressed MB of the worst content (noise; measured with Pillow's
# OpenJPEG on 2000^2 and 3000^2 16-bit frames): 10 MB keeps one file under ~2 s. A lossless 3000^2 chest film is ~5-7 MB.
MAX_JPEG2000_FRAME_BYTES = 10 * 2**20
_ITEM_TAG = b"\xfe\xff\x00\xe0"  # (FFFE,E000), little endian: an item of encapsulated pixel data
_JPEG2000_SYNTAXES = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"}


@dataclass(frozen=True)
class PixelModule:
    """What the header declares about the pixels, checked and converted to plain numbers."""

    rows: int
    columns: int
    samples: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric: str
    planar_configuration: int
    transfer_syntax: UID


def decode_pixels(pixel_data: bytes, module: PixelModule, name: str, limits: ReadLimits) -> np.ndarray:
    """The pixels as a (rows, columns) or (rows, columns, 3) array of the declared size, or a refusal."""
    syntax = module.transfer_syntax
    if syntax.is_encapsulated:
        if syntax != RLELossless and not _decodable(syntax):
            raise ImageReadError(f"`{name}` is compressed in a way this tool cannot decode (such as JPEG Lossless or "
                                 "JPEG-LS); export it uncompressed, or as JPEG or JPEG 2000.")
        frame = get_frame(_without_later_offsets(pixel_data), 0, number_of_frames=1)
        if syntax in _JPEG2000_SYNTAXES and len(frame) > MAX_JPEG2000_FRAME_BYTES:
            raise ImageReadError(f"`{name}`: its JPEG 2000 frame is {len(frame) / 2**20:.0f} MB compressed, more than the "
                                 f"{MAX_JPEG2000_FRAME_BYTES // 2**20} MB this tool decodes; export it uncompressed or as JPEG.")
        if syntax == RLELossless:
            return _decode_rle(frame, module, name)
        if syntax in _FRAME_HEADER_FORMATS:
            check_container(frame, name, limits)  # a JPEG's segments and scans, a JP2's boxes
            size = Image.open(io.BytesIO(frame), formats=[_FRAME_HEADER_FORMATS[syntax]]).size
            if size != (module.columns, module.rows):
                raise ImageReadError(f"`{name}`: the DICOM image is damaged (its compressed frame is not the size "
                                     "its header says).")
        # The first frame alone: pydicom decodes every further frame an offset table lists, unchecked.
        pixel_data = encapsulate([frame])
    dataset = _pixel_dataset(pixel_data, module)
    if _kept_as_ybr(module):
        dataset.pixel_array_options(raw=True)  # pydicom's YBR -> RGB runs in float64: ~1 GB for a 30 MP film
    pixels = dataset.pixel_array
    if pixels.shape[:2] != (module.rows, module.columns):
        raise ImageReadError(f"`{name}`: the DICOM pixel data cannot be decoded (it does not match its header).")
    return pixels


def _without_later_offsets(pixel_data: bytes) -> bytes:
    """The encapsulated pixel data with its Basic Offset Table cut to the first two offsets, all the first frame
    needs: pydicom reads the whole table into Python integers (25 M offsets: 585 MB). Offsets count from the end of
    the table, so the rest stays where they point."""
    table = int.from_bytes(pixel_data[4:8], "little") if pixel_data[:4] == _ITEM_TAG else 0
    if table <= 8 or table % 4:
        return pixel_data  # one frame's table, none, or a damaged one: pydicom's own checks answer it
    return pixel_data[:4] + (8).to_bytes(4, "little") + pixel_data[8:16] + pixel_data[8 + table :]


def grey_image(pixels: np.ndarray, levels: Dataset, module: PixelModule) -> tuple[Image.Image, float]:
    """The 8-bit grey image and its colourfulness. `levels` holds the rescale, window and LUT elements that parsed."""
    if module.samples == 3 and _kept_as_ybr(module):
        # Y is the luma Pillow's convert("L") computes from RGB; the colour is judged on a strided thumbnail
        step = max(1, min(module.rows, module.columns) // 256)
        small = Image.fromarray(np.ascontiguousarray(pixels[::step, ::step], dtype=np.uint8), mode="YCbCr").convert("RGB")
        return Image.fromarray(np.ascontiguousarray(pixels[..., 0], dtype=np.uint8)), colourfulness(small)
    if module.samples == 3:
        rgb = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))
        return rgb.convert("L"), colourfulness(colour_thumbnail(rgb))
    if pixels.dtype.itemsize > 2:
        grey = stretch_to_grey(pixels)  # 32-bit pixels: too many values for a lookup table; no window
    else:
        unsigned = pixels.view(f"u{pixels.dtype.itemsize}")
        domain = np.arange(2 ** (8 * pixels.dtype.itemsize), dtype=unsigned.dtype).view(pixels.dtype)
        grey = apply_lut(unsigned, _grey_lut(domain, levels, pixels.min(), pixels.max()))
    return (ImageOps.invert(grey) if module.photometric == "MONOCHROME1" else grey), 0.0


def _kept_as_ybr(module: PixelModule) -> bool:
    """Native (uncompressed, deflated or RLE) YBR_FULL pixels, decoded without pydicom's conversion to RGB: their
    first sample is the grey the model reads. A compressed frame's decoder chooses its own colour space: left to it."""
    return module.samples == 3 and module.photometric in ("YBR_FULL", "YBR_FULL_422") and (
        not module.transfer_syntax.is_encapsulated or module.transfer_syntax == RLELossless)


def _decodable(syntax: UID) -> bool:
    try:
        return get_decoder(syntax).is_available
    except Exception:  # noqa: BLE001 - no decoder at all for this syntax
        return False


def _decode_rle(frame: bytes, module: PixelModule, name: str) -> np.ndarray:
    """DICOM RLE is PackBits, one segment per byte of each sample (most significant first). Each segment is decoded
    as one long row, so runs may cross row ends, into exactly rows x columns bytes: extra data is never decoded."""
    size, segment_bytes = module.rows * module.columns, module.bits_allocated // 8
    count, *offsets = np.frombuffer(frame[:_RLE_HEADER_BYTES], dtype="<u4").tolist() if len(frame) >= _RLE_HEADER_BYTES else [0]
    if segment_bytes < 1 or count != module.samples * segment_bytes:
        raise ImageReadError(f"`{name}`: the DICOM pixel data cannot be decoded (damaged RLE frame).")
    bounds = offsets[:count] + [len(frame)]
    planes = [np.frombuffer(Image.frombytes("L", (size, 1), frame[start:end], "packbits", "L").tobytes(), np.uint8)
              for start, end in zip(bounds, bounds[1:])]
    samples = []
    for sample in range(module.samples):
        value = np.zeros(size, dtype=f"u{segment_bytes}")
        for plane in planes[sample * segment_bytes : (sample + 1) * segment_bytes]:
            value = (value << 8) | plane
        samples.append(value)
    pixels = np.stack(samples, axis=-1) if module.samples > 1 else samples[0]
    if module.signed:
        pixels = pixels.view(f"i{segment_bytes}")
    return pixels.reshape((module.rows, module.columns) + ((module.samples,) if module.samples > 1 else ()))


def _pixel_dataset(pixel_data: bytes, module: PixelModule) -> Dataset:
    """Only the checked pixel module and the pixels: pydicom decodes from validated numbers, with no patient data
    at hand for any of its messages."""
    clean = Dataset()
    clean.file_meta = FileMetaDataset()
    clean.file_meta.TransferSyntaxUID = module.transfer_syntax
    clean.Rows, clean.Columns, clean.SamplesPerPixel = module.rows, module.columns, module.samples
    clean.BitsAllocated, clean.BitsStored, clean.HighBit = module.bits_allocated, module.bits_stored, module.bits_stored - 1
    clean.PixelRepresentation, clean.PhotometricInterpretation = int(module.signed), module.photometric
    clean.NumberOfFrames = 1
    if module.samples > 1:
        clean.PlanarConfiguration = module.planar_configuration
    clean.PixelData = pixel_data
    return clean


def _grey_lut(domain: np.ndarray, levels: Dataset, low: int, high: int) -> np.ndarray:
    """Rescale, then window (or VOI LUT), every possible stored value once, and stretch what the image uses to 0-255.
    A rescale or window that fails, or that flattens the image, is ignored: the image is min/max stretched instead."""
    present = (domain >= low) & (domain <= high)
    values = np.asarray(domain, dtype=np.float64)
    try:
        values = np.asarray(apply_modality_lut(domain, levels), dtype=np.float64)
    except Exception:  # noqa: BLE001 - a damaged rescale or modality LUT is ignored
        pass
    try:
        windowed = np.asarray(apply_voi_lut(values, levels), dtype=np.float64)
        if np.ptp(windowed[present]) > 0:
            values = windowed
    except Exception:  # noqa: BLE001 - a damaged window (WindowWidth 0, text) or VOI LUT is ignored
        pass
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    used = values[present]
    bottom, top = float(used.min()), float(used.max())
    scale = 255.0 / (top - bottom) if top > bottom else 0.0
    return np.clip(np.rint((values - bottom) * scale), 0, 255).astype(np.uint8)
