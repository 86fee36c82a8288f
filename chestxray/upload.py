"""What every reader of an upload shares: the error it raises, the limits it enforces before decoding,
how a file is named in messages, and the one way numeric pixels become the 8-bit grey the model sees.

The image readers (`chestxray.imaging` for PNG, JPEG, TIFF, BMP, WebP; `chestxray.dicom`) sit on top of this.
"""

from __future__ import annotations

import re
import struct
import unicodedata
from dataclasses import dataclass

import numpy as np
from PIL import Image


class ImageReadError(ValueError):
    """An upload that cannot be used as a chest X-ray, with a message meant for the person who sent it."""


@dataclass(frozen=True)
class ReadLimits:
    """What one upload may cost before it is refused: room for any radiograph, and at most ~1 GB of memory and
    ~2 s of CPU on a 2-core Space for the worst file that passes (measured by `python tests/test_hostile_files.py`)."""

    max_pixels: int = 30_000_000  # a 43x43 cm detector at 100 µm is ~18.5 MP
    max_bytes_per_pixel: int = 3  # 30 MP of 8-bit RGB or 16-bit grey; RGBA or 32-bit pixels get 3/4 of that
    max_file_bytes: int = 128 * 2**20  # the whole file, before anything is parsed
    min_side_pixels: int = 32  # a chest film smaller than this cannot be read by anyone
    max_aspect_ratio: float = 4.0  # long side over short side; a chest film is about 1.2
    max_dicom_header_reads: int = 50_000  # pydicom reads an element in 1-3 reads (~3 µs each); real headers have 100s
    dicom_header_bytes: int = 16 * 2**20  # allowed besides the pixels in a deflated DICOM, once inflated
    # Pillow decodes run-length BMP in Python: ~0.25 s a MB of one-pixel runs, and 4-bit runs pixel by pixel
    # (~0.1 s a megapixel however long the runs).
    max_rle_bmp_bytes: int = 4 * 2**20
    max_rle4_bmp_pixels: int = 4_000_000
    # A progressive JPEG is decoded scan by scan, each over the whole image (~1.6 ms a scan at 30 MP even when a
    # scan holds nothing): encoders write about 10, and 100 cost ~0.2 s.
    max_jpeg_scans: int = 100
    # Pillow parses a JPEG's segments before its first scan, and a PNG's chunks, one by one in Python (~1 µs each):
    # a 24 MB run of FF fill bytes or 6 M empty segments took 6-10 s and up to 0.8 GB. Encoders write tens of segments
    # and no fill to speak of; libpng splits the image data into 8 KB chunks (3,200 in a 25 MB PNG).
    max_jpeg_header_markers: int = 1_000
    max_jpeg_fill_bytes: int = 65_536
    max_png_chunks: int = 100_000
    max_png_ancillary_chunks: int = 1_000
    # Pillow reads a GIF's blocks in Python too, and joins comment pieces by repeated concatenation (quadratic): a
    # 20 MB GIF of one-byte comment pieces, or of 8 M empty extensions, held a worker for more than 2 minutes. An
    # encoder writes one extension or two per frame and 255-byte data blocks (300,000 of them hold 76 MB).
    max_gif_extensions: int = 1_000
    max_gif_comment_pieces: int = 1_000
    max_gif_blocks: int = 300_000
    # A JPEG 2000 frame in the JP2 file format: Pillow walks its boxes in Python (10 MB of empty boxes: 2.7 s). A JP2
    # file holds about ten.
    max_jp2_boxes: int = 1_000
    # TIFF structures (a TIFF file, and the EXIF block of a PNG or WebP) are read by Pillow in Python: an entry at a
    # time (BigTIFF allows millions in one directory), a Python object per number, a copy of the bytes per entry
    # (100 entries pointing at one 60 MB blob: 25 s), a decoder call per strip or tile (1 M one-pixel tiles: 6 s).
    # Writers put tens of entries in a directory and hundreds of strips or tiles in an image; the longest numeric
    # tags are a 16-bit RGB image's colour map or transfer function, 3 x 65,536 numbers.
    max_tiff_entries: int = 1_000
    max_tiff_strips: int = 131_072
    max_tiff_values: int = 262_144

    @property
    def max_decoded_bytes(self) -> int:
        return self.max_pixels * self.max_bytes_per_pixel


SUPPORTED_FORMATS = "PNG, JPEG, TIFF, BMP, WebP or DICOM"
_UNSAFE_CHARACTERS = {"Cc", "Cf", "Co", "Cs", "Zl", "Zp"}  # control, format (bidi overrides), private, line breaks
_MAX_NAME_LENGTH = 120
_CHUNK_PIXELS = 1 << 20  # pixels converted at a time: temporaries stay at a few MB whatever the image size
_FILL = re.compile(rb"\xff+")  # a JPEG marker, after any number of fill bytes
_STANDALONE_MARKERS = {0x01, *range(0xD0, 0xD9)}  # markers without a length: TEM, RSTn, SOI
_MARKER_AFTER_CODED_DATA = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # not stuffing, a restart or fill
FRAMES_COUNTED = 10  # frames of an animation or stack counted for its message; it is refused whatever its length
_TIFF_SIGNATURES = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic TIFF and BigTIFF, either byte order
_TIFF_TYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
_TIFF_BYTE_TYPES = {1, 2, 6, 7}  # BYTE, ASCII, SBYTE, UNDEFINED: kept as bytes, not a Python object per value
_TIFF_STRIP_TAGS = {273, 279, 324, 325}  # strip and tile offsets and byte counts: one decoder call each
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def check_container(data: bytes, name: str, limits: ReadLimits) -> None:
    """Refuses, before any parser sees it, a file whose structure alone would hold the worker for seconds: what
    Pillow walks in Python (or a JPEG decoder scan by scan) is counted here with loops that stop at the limits."""
    if data.startswith(b"\xff\xd8"):
        _check_jpeg(data, name, limits)
    elif data.startswith(b"\x89PNG\r\n\x1a\n"):
        _check_png_chunks(data, name, limits)
    elif data.startswith((b"GIF87a", b"GIF89a")):
        _check_gif_blocks(data, name, limits)
    elif data.startswith(_JP2_SIGNATURE):
        _check_jp2_boxes(data, name, limits)
    elif data.startswith(_TIFF_SIGNATURES):
        check_tiff_structure(data, name, limits)


def check_tiff_structure(data: bytes, name: str, limits: ReadLimits, directories: int = FRAMES_COUNTED + 1) -> None:
    """Walks the first `directories` directories of a TIFF structure (a file, or an EXIF block without its "Exif"
    prefix): their entries are counted, never read. Anything damaged is left to the decoder's own words."""
    if not data.startswith(_TIFF_SIGNATURES):
        return
    order, big = ("<" if data[:2] == b"II" else ">"), data[2:4] in (b"+\0", b"\0+")
    count_format, entry_format, entry_size = (("Q", "HHQ", 20) if big else ("H", "HHI", 12))
    offset_format = "Q" if big else "I"
    offset = _unpack(data, order + offset_format, 8 if big else 4)
    referenced = 0
    for _ in range(directories):
        entries = _unpack(data, order + count_format, offset) if offset else None
        if entries is None:
            return
        if entries > limits.max_tiff_entries:
            _refuse_tiff(name, f"a directory of {entries:,} entries")
        start = offset + struct.calcsize(order + count_format)
        for position in range(start, start + entry_size * entries, entry_size):
            if position + entry_size > len(data):
                return
            tag, kind, values = struct.unpack_from(order + entry_format, data, position)
            referenced += values * _TIFF_TYPE_BYTES.get(kind, 0)
            if tag in _TIFF_STRIP_TAGS and values > limits.max_tiff_strips:
                _refuse_tiff(name, f"{values:,} strips or tiles")
            if tag not in _TIFF_STRIP_TAGS and kind not in _TIFF_BYTE_TYPES and values > limits.max_tiff_values:
                _refuse_tiff(name, f"a tag of {values:,} numbers")
        if referenced > len(data):
            _refuse_tiff(name, "tags that point at the same bytes again and again")
        offset = _unpack(data, order + offset_format, start + entry_size * entries)


def _unpack(data: bytes, form: str, offset: int) -> int | None:
    return struct.unpack_from(form, data, offset)[0] if 0 < offset <= len(data) - struct.calcsize(form) else None


def _refuse_tiff(name: str, what: str) -> None:
    raise ImageReadError(f"`{name}` holds a TIFF structure (the file, or its EXIF metadata) of {what}, far more than "
                         "any camera or scanner writes, and slower to read than this app allows; save the image again "
                         "as an ordinary PNG, JPEG or TIFF and upload that.")


def _check_jpeg(data: bytes, name: str, limits: ReadLimits) -> None:
    """Walks a JPEG's segments by their lengths, as Pillow does before the first scan (so markers inside an EXIF
    thumbnail are skipped), then scan by scan, each scan's coded data searched for the next marker at C speed (an FF
    there is followed by 00 or a restart marker), to the end of the image: a phone's Motion Photo appends a video,
    whose bytes hold FF DA by chance. A progressive JPEG is decoded scan by scan over the whole image; fill bytes
    count before the first scan, where Pillow reads them in Python. Bounded work whatever the file."""
    offset, markers, fill, scans = 2, 0, 0, 0
    while (markers <= limits.max_jpeg_header_markers and fill <= limits.max_jpeg_fill_bytes
           and scans <= limits.max_jpeg_scans):
        run = _FILL.match(data, offset)
        if run is None or run.end() >= len(data):
            return  # not a marker where one belongs: damaged, which the decoder says in its own words
        if not scans:
            fill += run.end() - offset - 1
        marker, offset = data[run.end()], run.end() + 1
        if marker == 0xD9:
            return  # the end of the image
        markers += 1
        if marker in _STANDALONE_MARKERS:
            continue
        offset += int.from_bytes(data[offset : offset + 2], "big")
        if marker == 0xDA:
            scans += 1
            following = _MARKER_AFTER_CODED_DATA.search(data, offset)
            if following is None:
                return
            offset = following.start()
    if scans > limits.max_jpeg_scans:
        raise ImageReadError(f"`{name}` is a JPEG of more than {limits.max_jpeg_scans:,} scans, slower to decode than this "
                             "app allows (encoders write about 10); save it again as an ordinary JPEG or as PNG and upload that.")
    what = (f"more than {limits.max_jpeg_header_markers:,} segments" if markers > limits.max_jpeg_header_markers
            else f"more than {limits.max_jpeg_fill_bytes:,} fill bytes in its header")
    raise ImageReadError(f"`{name}` is a JPEG of {what}, far more than any camera or scanner writes, and slower to read "
                         "than this app allows; save it again as an ordinary JPEG or as PNG and upload that.")


def _check_png_chunks(data: bytes, name: str, limits: ReadLimits) -> None:
    offset, chunks, ancillary = 8, 0, 0
    while offset + 8 <= len(data) and chunks <= limits.max_png_chunks and ancillary <= limits.max_png_ancillary_chunks:
        length, kind = int.from_bytes(data[offset : offset + 4], "big"), data[offset + 4 : offset + 8]
        if kind == b"IEND":
            return
        chunks += 1
        ancillary += kind not in (b"IDAT", b"IHDR", b"PLTE")
        offset += 12 + length
    if chunks > limits.max_png_chunks or ancillary > limits.max_png_ancillary_chunks:
        what = (f"more than {limits.max_png_chunks:,} chunks" if chunks > limits.max_png_chunks
                else f"more than {limits.max_png_ancillary_chunks:,} chunks besides its image data")
        raise ImageReadError(f"`{name}` is a PNG of {what}, far more than any encoder writes, and slower to read "
                             "than this app allows; save it again as an ordinary PNG and upload that.")


def _check_gif_blocks(data: bytes, name: str, limits: ReadLimits) -> None:
    """Walks every block of the file as Pillow does (its frame count and seeks walk them all, and it skips a stray
    byte at a time), stopping at the limits."""
    flags = data[10] if len(data) > 10 else 0
    offset = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    extensions = comment_pieces = blocks = images = 0

    def within_limits() -> bool:
        return (extensions <= limits.max_gif_extensions and comment_pieces <= limits.max_gif_comment_pieces
                and blocks <= limits.max_gif_blocks)

    while offset < len(data) and within_limits():
        introducer = data[offset]
        if introducer == 0x21:  # an extension: its label, then data blocks
            extensions += 1
            is_comment = offset + 1 < len(data) and data[offset + 1] == 0xFE
            comment_pieces += is_comment
            offset += 2
        elif introducer == 0x2C and offset + 10 < len(data):  # an image: its descriptor and colour table, then data
            flags = data[offset + 9]
            offset += 11 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
            is_comment = False
            images += 1
        elif introducer == 0x3B:
            return  # the trailer
        else:  # a stray byte, which Pillow skips one at a time
            blocks += 1
            offset += 1
            continue
        while offset < len(data) and data[offset] and blocks <= limits.max_gif_blocks:
            blocks += 1
            comment_pieces += is_comment
            offset += 1 + data[offset]
            if is_comment and comment_pieces > limits.max_gif_comment_pieces:
                break
        offset += 1
        if images > FRAMES_COUNTED + 1:
            return  # an animation, refused as one after its first frames: Pillow reads no further
    if not within_limits():
        what = (f"more than {limits.max_gif_extensions:,} extension blocks" if extensions > limits.max_gif_extensions
                else f"more than {limits.max_gif_comment_pieces:,} comment pieces"
                if comment_pieces > limits.max_gif_comment_pieces else f"more than {limits.max_gif_blocks:,} blocks")
        raise ImageReadError(f"`{name}` is a GIF of {what}, far more than any encoder writes, and slower to read than "
                             "this app allows; save it as PNG and upload that.")


def _check_jp2_boxes(data: bytes, name: str, limits: ReadLimits) -> None:
    """Walks the top-level boxes up to the codestream, stopping at the limit."""
    offset, boxes = 0, 0
    while offset + 8 <= len(data) and boxes <= limits.max_jp2_boxes:
        length, kind = int.from_bytes(data[offset : offset + 4], "big"), data[offset + 4 : offset + 8]
        if kind == b"jp2c" or length == 0:
            return  # the codestream, or a last box that runs to the end
        if length == 1:
            length = int.from_bytes(data[offset + 8 : offset + 16], "big")
        if length < 8:
            return  # damaged: the decoder says so in its own words
        boxes += 1
        offset += length
    if boxes > limits.max_jp2_boxes:
        raise ImageReadError(f"`{name}` is a JPEG 2000 image of more than {limits.max_jp2_boxes:,} boxes, far more than "
                             "any encoder writes, and slower to read than this app allows; export it as JPEG or PNG.")


def display_name(name: str) -> str:
    """A file name that is safe to show in a message, a table row or a CSV cell: control characters and Unicode
    direction overrides become U+FFFD, the backticks that quote names in messages become quotes, and a very long
    name is shortened in the middle."""
    cleaned = "".join("\ufffd" if unicodedata.category(c) in _UNSAFE_CHARACTERS else c for c in str(name))
    cleaned = cleaned.replace("`", "'").strip() or "upload"
    if len(cleaned) > _MAX_NAME_LENGTH:
        keep = (_MAX_NAME_LENGTH - 1) // 2
        cleaned = f"{cleaned[:keep]}…{cleaned[-keep:]}"
    return cleaned


def check_geometry(width: int, height: int, name: str, limits: ReadLimits) -> None:
    """Refuse, from the header alone, what is empty, too big, too small or too narrow to be a chest radiograph."""
    if width < 1 or height < 1:
        raise ImageReadError(f"`{name}` has no pixels.")
    if width * height > limits.max_pixels:
        raise ImageReadError(
            f"`{name}` is {width}x{height} = {width * height:,} pixels, more than the limit of {limits.max_pixels:,}."
        )
    if min(width, height) < limits.min_side_pixels or max(width, height) > limits.max_aspect_ratio * min(width, height):
        raise ImageReadError(
            f"`{name}` is {width}x{height} pixels: too small or too narrow to be a chest X-ray (each side needs at "
            f"least {limits.min_side_pixels} pixels, and the long side at most {limits.max_aspect_ratio:g} times the short one)."
        )


def check_decoded_bytes(width: int, height: int, bytes_per_pixel: float, name: str, limits: ReadLimits) -> None:
    """Deep pixels cost more memory: refuse, before decoding, an image whose decoded pixels would not fit the budget."""
    decoded = int(width * height * bytes_per_pixel)
    if decoded > limits.max_decoded_bytes:
        raise ImageReadError(
            f"`{name}` would take {decoded:,} bytes once decoded ({width}x{height} at {bytes_per_pixel:g} bytes a pixel), "
            f"more than the limit of {limits.max_decoded_bytes:,}."
        )


def stretch_to_grey(pixels: np.ndarray) -> Image.Image:
    """Any numeric grey array (16-bit PNG or TIFF, 32-bit, float) stretched from its own minimum and maximum to
    0-255, a chunk at a time: no full-size float copy is ever made. NaN becomes the minimum, infinities the ends."""
    flat = np.ascontiguousarray(pixels).reshape(-1)
    low, high = _finite_range(flat)
    scale = 255.0 / (high - low) if high > low else 0.0
    grey = np.empty(flat.shape, dtype=np.uint8)
    for start in range(0, flat.size, _CHUNK_PIXELS):
        chunk = flat[start : start + _CHUNK_PIXELS].astype(np.float64)
        chunk = np.nan_to_num(chunk, nan=low, posinf=high, neginf=low)
        grey[start : start + _CHUNK_PIXELS] = np.rint((chunk - low) * scale)
    return Image.fromarray(grey.reshape(pixels.shape[:2]))


def apply_lut(indices: np.ndarray, lut: np.ndarray) -> Image.Image:
    """`lut[indices]` as an 8-bit grey image, a chunk at a time (numpy would make a full-size int64 index copy)."""
    flat = np.ascontiguousarray(indices).reshape(-1)
    grey = np.empty(flat.shape, dtype=np.uint8)
    for start in range(0, flat.size, _CHUNK_PIXELS):
        grey[start : start + _CHUNK_PIXELS] = lut[flat[start : start + _CHUNK_PIXELS]]
    return Image.fromarray(grey.reshape(indices.shape[:2]))


def _finite_range(flat: np.ndarray) -> tuple[float, float]:
    if flat.size == 0:
        return 0.0, 0.0
    if not np.issubdtype(flat.dtype, np.floating):
        return float(flat.min()), float(flat.max())
    low, high = np.inf, -np.inf
    for start in range(0, flat.size, _CHUNK_PIXELS):
        chunk = flat[start : start + _CHUNK_PIXELS]
        finite = chunk[np.isfinite(chunk)]
        if finite.size:
            low, high = min(low, float(finite.min())), max(high, float(finite.max()))
    return (low, high) if low <= high else (0.0, 0.0)


def colour_thumbnail(image: Image.Image) -> Image.Image:
    """A small copy to judge colour on: a full-size RGB copy of a 30 MP upload would cost 120 MB."""
    factor = max(1, min(image.size) // 256)
    if factor == 1:
        return image
    if image.mode in ("P", "PA"):  # palette indices cannot be averaged
        return image.resize((image.width // factor, image.height // factor), Image.Resampling.NEAREST)
    return image.reduce(factor)


def colourfulness(image: Image.Image) -> float:
    """Hasler-Süsstrunk colourfulness on a thumbnail (cheap on huge uploads)."""
    small = image.convert("RGB")
    small.thumbnail((96, 96))
    r, g, b = (np.asarray(small, dtype=float)[..., i] for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))
