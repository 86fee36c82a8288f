"""Hostile files against the reader (issue 14): each one is refused or read within ~1 GB of memory and 2 s of CPU,
with its own clear message, and no patient data ever reaches a message, a log line, a warning or stderr.

`python tests/test_hostile_files.py` prints the peak extra memory and CPU time of every bomb kind (each read in a
fresh forked process); `PYTHONPATH=<an older tree> python tests/test_hostile_files.py` measures that tree instead.
"""

from __future__ import annotations

import csv
import io
import logging
import multiprocessing
import resource
import struct
import sys
import time
import warnings
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import psutil
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from chestxray.imaging import ImageReadError, read_image
from conftest import PATIENT_ID, PATIENT_NAME, synthetic_xray

MAX_EXTRA_MEMORY_MB = 1024
MAX_CPU_SECONDS = 2.0

# ---------------------------------------------------------------------------------------------------------------
# DICOM written byte by byte, so that any tag can hold anything (a string in Rows, a name in NumberOfFrames).

EXPLICIT_VR_LE, IMPLICIT_VR_LE, DEFLATED = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99"
RLE, JPEG_BASELINE = "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50"
JPEG2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
UNDEFINED = 0xFFFFFFFF

# Patient data in every kind of tag: person names, IDs, dates, free text, an address, a private tag.
PHI = {
    0x00080050: ("SH", "ACC-SECRET-951"),
    0x00080080: ("LO", "SECRET ST MARY HOSPITAL"),
    0x00080090: ("PN", "SECRET^REFERRER^DR"),
    0x00081030: ("LO", "SECRETSTUDYNOTE"),
    0x00091001: ("LO", "PRIVATE-SECRET-77"),
    0x00091010: ("LO", "SECRETCO"),
    0x00100010: ("PN", PATIENT_NAME),
    0x00100020: ("LO", PATIENT_ID),
    0x00100030: ("DA", "19191231"),
    0x00101040: ("LO", "1 SECRET LANE"),
    0x00321032: ("PN", "SECRET^REQUESTER"),
}
SECRETS = [value for _, value in PHI.values()] + ["DOE", "SECRET"]


def element(tag: int, vr: str, value: bytes | str | None, implicit: bool = False) -> bytes:
    """One data element; `value=None` opens an undefined-length one (items and a delimiter follow)."""
    data = value.encode("latin-1") if isinstance(value, str) else value
    if data is not None and len(data) % 2:
        data += b"\0" if vr in ("UI", "OB") else b" "
    length = UNDEFINED if data is None else len(data)
    group, number = tag >> 16, tag & 0xFFFF
    if implicit:
        header = struct.pack("<HHI", group, number, length)
    elif vr in LONG_VRS:
        header = struct.pack("<HH2sHI", group, number, vr.encode(), 0, length)
    else:
        header = struct.pack("<HH2sH", group, number, vr.encode(), length)
    return header + (data or b"")


def item(content: bytes) -> bytes:
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(content)) + content


SEQUENCE_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def encapsulated(frame: bytes) -> bytes:
    return element(0x7FE00010, "OB", None) + item(b"") + item(frame) + SEQUENCE_END


def dicom_bytes(elements: dict[int, tuple[str, object]], transfer_syntax: str = EXPLICIT_VR_LE, preamble: bool = True,
                meta: bool = True, raw_tail: bytes = b"") -> bytes:
    """A DICOM file of `elements` ({tag: (vr, value)}; vr "raw" means value is the whole encoded element)."""
    implicit = transfer_syntax == IMPLICIT_VR_LE
    body = b"".join(value if vr == "raw" else element(tag, vr, value, implicit) for tag, (vr, value) in sorted(elements.items()))
    body += raw_tail
    if transfer_syntax == DEFLATED:
        compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        body = compressor.compress(body) + compressor.flush()
    head = b"\0" * 128 + b"DICM" if preamble else b""
    if not meta:
        return head + body
    group = (element(0x00020001, "OB", b"\0\1") + element(0x00020002, "UI", "1.2.840.10008.5.1.4.1.1.1")
             + element(0x00020003, "UI", "1.2.3.4.5.6.7") + element(0x00020010, "UI", transfer_syntax))
    return head + element(0x00020000, "UL", struct.pack("<I", len(group))) + group + body


def image_elements(pixels: np.ndarray | None = None, changes: dict | None = None) -> dict[int, tuple[str, object]]:
    """A 16-bit (12 stored) MONOCHROME2 CR radiograph with patient data in every kind of tag; `changes` replaces
    elements ({tag: (vr, value)}) or removes them ({tag: None})."""
    pixels = gradient() if pixels is None else pixels
    elements = dict(PHI)
    elements.update({
        0x00080060: ("CS", "CR"), 0x00280002: ("US", struct.pack("<H", 1)), 0x00280004: ("CS", "MONOCHROME2"),
        0x00280010: ("US", struct.pack("<H", pixels.shape[0])), 0x00280011: ("US", struct.pack("<H", pixels.shape[1])),
        0x00280100: ("US", struct.pack("<H", 16)), 0x00280101: ("US", struct.pack("<H", 12)),
        0x00280102: ("US", struct.pack("<H", 11)), 0x00280103: ("US", struct.pack("<H", 0)),
        0x7FE00010: ("OW", pixels.astype("<u2").tobytes()),
    })
    for tag, value in (changes or {}).items():
        if value is None:
            elements.pop(tag, None)
        else:
            elements[tag] = value
    return elements


def gradient(rows: int = 64, columns: int = 80) -> np.ndarray:
    """A 12-bit ramp: every grey level of the stretched result is predictable."""
    return np.tile(np.linspace(100, 4000, columns), (rows, 1)).astype(np.uint16)


def us(value: int) -> tuple[str, bytes]:
    return "US", struct.pack("<H", value)


# ---------------------------------------------------------------------------------------------------------------
# Bombs: small files that declare, or inflate to, far more than a radiograph.

def png(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=options.pop("format", "PNG"), **options)
    return buffer.getvalue()


def bmp_rle8_bomb(width: int = 7000, height: int = 7000) -> bytes:
    """An 8-bit RLE BMP: each row is a few runs of 255 black pixels, 58 bytes a row, 0.4 MB for 49 MP."""
    full, rest = divmod(width, 255)
    row = b"\xff\x00" * full + (bytes([rest, 0]) if rest else b"") + b"\x00\x00"
    pixels, palette = row * height + b"\x00\x01", bytes(1024)
    offset = 14 + 40 + len(palette)
    return (struct.pack("<2sIHHI", b"BM", offset + len(pixels), 0, 0, offset)
            + struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(pixels), 2835, 2835, 256, 0) + palette + pixels)


def bmp_rle8_short_runs(side: int, max_bytes: int | None = None) -> bytes:
    """An 8-bit RLE BMP of one-pixel runs (2 bytes a pixel): Pillow's RLE decoder is Python, ~0.25 s a MB."""
    row = b"".join(bytes([1, (x * 7) & 255]) for x in range(side)) + b"\x00\x00"
    rows = side if max_bytes is None else min(side, max_bytes // len(row))
    pixels, palette = row * rows + b"\x00\x01", bytes(1024)
    offset = 14 + 40 + len(palette)
    return (struct.pack("<2sIHHI", b"BM", offset + len(pixels), 0, 0, offset)
            + struct.pack("<IiiHHIIiiII", 40, side, side, 1, 8, 1, len(pixels), 2835, 2835, 256, 0) + palette + pixels)


def bmp_rle4_long_runs(side: int) -> bytes:
    """A 4-bit RLE BMP of 255-pixel runs: 2 bytes expand to 255 pixels, which Pillow's decoder makes one by one."""
    full, rest = divmod(side, 255)
    row = bytes([255, 0x12]) * full + (bytes([rest, 0x34]) if rest else b"") + b"\x00\x00"
    pixels = row * side + b"\x00\x01"
    palette = b"".join(struct.pack("<BBBB", i * 17, i * 17, i * 17, 0) for i in range(16))
    offset = 14 + 40 + len(palette)
    return (struct.pack("<2sIHHI", b"BM", offset + len(pixels), 0, 0, offset)
            + struct.pack("<IiiHHIIiiII", 40, side, side, 1, 4, 2, len(pixels), 2835, 2835, 16, 0) + palette + pixels)


def many_ifd_tiff(count: int = 40_001, side: int = 32) -> bytes:
    """A TIFF of `count` 32x32 pages sharing one strip: 4 MB, and Pillow's `n_frames` walks it in quadratic time."""
    entry = lambda tag, kind, value: struct.pack("<HHII", tag, kind, 1, value)  # noqa: E731
    ifd_size = 2 + 8 * 12 + 4
    strip = 8 + count * ifd_size
    ifds = []
    for index in range(count):
        entries = [entry(256, 4, side), entry(257, 4, side), entry(258, 3, 8), entry(259, 3, 1), entry(262, 3, 1),
                   entry(273, 4, strip), entry(278, 4, side), entry(279, 4, side * side)]
        following = 8 + (index + 1) * ifd_size if index + 1 < count else 0
        ifds.append(struct.pack("<H", len(entries)) + b"".join(entries) + struct.pack("<I", following))
    return b"II*\x00" + struct.pack("<I", 8) + b"".join(ifds) + bytes(side * side)


def rle_segment_of_zeros(size: int) -> bytes:
    """PackBits runs of 128 zero bytes (2 bytes each), then the remainder."""
    full, rest = divmod(size, 128)
    return b"\x81\x00" * full + (bytes([257 - rest, 0]) if rest > 1 else b"\x00\x00" if rest else b"")


def rle_frame(segments: list[bytes]) -> bytes:
    offsets, position = [], 64
    for segment in segments:
        offsets.append(position)
        position += len(segment) + len(segment) % 2
    header = struct.pack("<16I", len(segments), *(offsets + [0] * (15 - len(segments))))
    return header + b"".join(s + b"\0" * (len(s) % 2) for s in segments)


def rle_dicom_bomb(side: int = 7000) -> bytes:
    frame = rle_frame([rle_segment_of_zeros(side * side)] * 2)  # 16-bit: high and low byte
    return dicom_bytes(image_elements(gradient(2, 2), changes={0x00280010: us(side), 0x00280011: us(side),
                                                          0x7FE00010: ("raw", encapsulated(frame))}), RLE)


def rle_slow_runs(side: int = 4000) -> bytes:
    """An honest 4000x4000 8-bit RLE image coded in the slowest way: 2-byte runs (pydicom's Python decoder: ~1 s)."""
    frame = rle_frame([b"\xff\x00" * (side * side // 2)])
    return dicom_bytes(image_elements(gradient(2, 2), changes={
        0x00280010: us(side), 0x00280011: us(side), 0x00280100: us(8), 0x00280101: us(8), 0x00280102: us(7),
        0x7FE00010: ("raw", encapsulated(frame))}), RLE)


def deflate_bomb(inflated_bytes: int = 160 * 2**20) -> bytes:
    """A Deflated Explicit VR dataset whose pixel data inflates to `inflated_bytes` of zeros (1 kB per MB)."""
    head = b"".join(element(tag, vr, value) for tag, (vr, value) in sorted(image_elements(gradient(2, 2)).items())
                    if tag != 0x7FE00010)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunks = [compressor.compress(head + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, inflated_bytes))]
    zeros = bytes(16 * 2**20)
    for _ in range(inflated_bytes // len(zeros)):
        chunks.append(compressor.compress(zeros))
    deflated = b"".join(chunks) + compressor.flush()
    meta_group = element(0x00020001, "OB", b"\0\1") + element(0x00020010, "UI", DEFLATED)
    return b"\0" * 128 + b"DICM" + element(0x00020000, "UL", struct.pack("<I", len(meta_group))) + meta_group + deflated


def deflated_ybr_bomb(side: int = 5477) -> bytes:
    """A deflated YBR_FULL CR dataset of 3 x 8-bit samples just under the decoded-size limit (90 MB of zeros, 88 kB):
    pydicom's conversion to RGB alone took ~1 GB and 2.7 s."""
    changes = {0x00280002: us(3), 0x00280004: ("CS", "YBR_FULL"), 0x00280006: us(0), 0x00280010: us(side),
               0x00280011: us(side), 0x00280100: us(8), 0x00280101: us(8), 0x00280102: us(7)}
    head = b"".join(element(tag, vr, value) for tag, (vr, value) in sorted(image_elements(gradient(2, 2), changes).items())
                    if tag != 0x7FE00010)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    size = side * side * 3
    deflated = compressor.compress(head + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, size + size % 2))
    deflated += b"".join(compressor.compress(bytes(2**20)) for _ in range(size // 2**20))
    deflated += compressor.compress(bytes(size % 2**20 + size % 2)) + compressor.flush()
    meta_group = element(0x00020001, "OB", b"\0\1") + element(0x00020010, "UI", DEFLATED)
    return b"\0" * 128 + b"DICM" + element(0x00020000, "UL", struct.pack("<I", len(meta_group))) + meta_group + deflated


def jpeg_header_bomb(segment: bytes, count: int) -> bytes:
    """A small real JPEG with `count` copies of `segment` (fill bytes, or empty segments) right after its start."""
    film = png(Image.new("L", (224, 224), 90), format="JPEG")
    return film[:2] + segment * count + film[2:]


def png_chunk_bomb(kind: bytes, payload: bytes, count: int, side: int = 2000) -> bytes:
    """A plain grey PNG with `count` copies of one small chunk before its image data."""
    film = png(Image.new("L", (side, side), 90))
    chunk = struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return film[:33] + chunk * count + film[33:]


def jpeg_frame_bomb() -> bytes:
    """A JPEG DICOM whose header says 64x80 but whose frame is 6000x6000."""
    frame = png(Image.new("L", (6000, 6000)), format="JPEG")
    return dicom_bytes(image_elements(gradient(), changes={0x00280100: us(8), 0x00280101: us(8), 0x00280102: us(7),
                                                     0x7FE00010: ("raw", encapsulated(frame))}), JPEG_BASELINE)


def header_element_bomb(count: int = 1_000_000) -> bytes:
    """8 MB of empty private elements before the pixels: pydicom would parse them for ~3 s."""
    elements = image_elements()
    flood = b"".join(struct.pack("<HH2sH", 0x0009, 0x1100 + i % 0xEE00, b"LO", 0) for i in range(count))
    elements[0x00091100] = ("raw", flood)
    return dicom_bytes(elements)


def nested_item_bomb(count: int = 500_000) -> bytes:
    """An undefined-length sequence of half a million empty items: pydicom would parse it for ~8 s."""
    empty_item = struct.pack("<HHI", 0xFFFE, 0xE000, UNDEFINED) + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    elements = image_elements()
    elements[0x00091020] = ("raw", element(0x00091020, "SQ", None) + empty_item * count + SEQUENCE_END)
    return dicom_bytes(elements)


def jpeg2000_size_bomb() -> bytes:
    """A JPEG 2000 DICOM whose frame is too big to decode within the CPU budget (~0.2 s per MB of noise)."""
    frame = np.random.default_rng(0).integers(0, 256, 11 * 2**20, dtype=np.uint8).tobytes()
    return dicom_bytes(image_elements(changes={0x7FE00010: ("raw", encapsulated(frame))}), "1.2.840.10008.1.2.4.90")


def ztxt_bomb(kind: str = "zTXt") -> bytes:
    info = PngInfo()
    if kind == "zTXt":
        info.add_text("Comment", "x" * 8_000_000, zip=True)
    else:
        info.add_itxt("Comment", "x" * 8_000_000, zip=True)
    return png(synthetic_xray(1, 3, size=64), pnginfo=info)


def progressive_jpeg_scan_bomb(scans: int, side: int = 5400) -> bytes:
    """A progressive JPEG whose one AC scan (one band of one coefficient, every block an end-of-band run) repeats
    `scans` times: ~50 bytes a scan, each decoded over every block of the image (~1.6 ms at 5400x5400)."""
    encoded = io.BytesIO()
    Image.new("L", (side, side), 128).save(encoded, "JPEG", progressive=True, quality=50)
    data = encoded.getvalue()
    first_scan = data.find(b"\xff\xda")
    position = first_scan + 2 + struct.unpack(">H", data[first_scan + 2 : first_scan + 4])[0]
    while True:  # to the marker after the first (DC) scan's coded data
        position = data.find(b"\xff", position)
        if data[position + 1] != 0 and not 0xD0 <= data[position + 1] <= 0xD7:
            break
        position += 2
    segment = lambda marker, payload: b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload  # noqa: E731
    huffman = segment(0xC4, bytes([0x11, 1] + [0] * 15 + [0xE0]))  # AC table 1: one symbol, EOB run of 2^14 blocks
    scan = segment(0xDA, bytes([1, 1, 0x01, 1, 63, 0]))
    blocks, bits = ((side + 7) // 8) ** 2, ""
    while blocks > 0:
        bits, blocks = bits + "0" + "1" * 14, blocks - (2**15 - 1)
    bits += "1" * (-len(bits) % 8)
    coded = bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)).replace(b"\xff", b"\xff\x00")
    return data[:position] + huffman + (scan + coded) * scans + b"\xff\xd9"


def jpeg_dicom_extra_frames(extra: bytes, count: int = 1, side: int = 5400) -> bytes:
    """A one-frame JPEG DICOM of the declared size whose offset table lists `count` more frames of `extra`."""
    from pydicom.encaps import encapsulate

    frame = png(Image.new("L", (side, side), 100), format="JPEG", quality=20)
    return dicom_bytes(image_elements(gradient(2, 2), changes={
        0x00280010: us(side), 0x00280011: us(side), 0x00280100: us(8), 0x00280101: us(8), 0x00280102: us(7),
        0x7FE00010: ("raw", element(0x7FE00010, "OB", None) + encapsulate([frame] + [extra] * count, has_bot=True) + SEQUENCE_END)}),
        JPEG_BASELINE)


def jpeg_dicom_offset_table_bomb(offsets: int = 25_000_000) -> bytes:
    """A one-frame JPEG DICOM whose Basic Offset Table lists `offsets` frames (100 MB of table for 25 M)."""
    frame = png(Image.fromarray(gradient(256, 256).astype(np.uint8)), format="JPEG")
    frame += b"\0" * (len(frame) % 2)
    table = np.zeros(offsets, dtype="<u4")
    table[1:] = 8 + len(frame)  # every later "frame" starts after the first: only the first is there
    return dicom_bytes(image_elements(gradient(256, 256), changes={
        0x00280100: us(8), 0x00280101: us(8), 0x00280102: us(7),
        0x7FE00010: ("raw", element(0x7FE00010, "OB", None) + item(table.tobytes()) + item(frame) + SEQUENCE_END)}),
        JPEG_BASELINE)


def jpeg_dicom_header_bomb() -> bytes:
    """A JPEG DICOM of the declared size whose frame's header holds 24 MB of fill bytes."""
    frame = jpeg_header_bomb(b"\xff", 24 * 2**20)
    return dicom_bytes(image_elements(gradient(224, 224), changes={0x00280100: us(8), 0x00280101: us(8), 0x00280102: us(7),
                                                             0x7FE00010: ("raw", encapsulated(frame))}), JPEG_BASELINE)


def gif_with(before_image: bytes = b"", after_image: bytes = b"", side: int = 224) -> bytes:
    """A plain grey GIF with blocks inserted before its image and after it (before the trailer)."""
    film = png(Image.new("L", (side, side), 90), format="GIF")
    flags = film[10]
    start = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # the header, screen descriptor and colour table
    return film[:start] + before_image + film[start:-1] + after_image + film[-1:]


def gif_animation(frames: int = 5000) -> bytes:
    """An animation of one frame repeated, each with its timing extension: more extensions than the limit, and
    refused as the animation it is."""
    film = gif_with()
    flags = film[10]
    start = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    timed_frame = b"\x21\xf9\x04\x00\x0a\x00\x00\x00" + film[start:-1]
    return film[:start] + timed_frame * frames + film[-1:]


def jp2_dicom(boxes: int) -> bytes:
    """A JPEG 2000 DICOM whose frame is a JP2 file with `boxes` empty boxes before its header."""
    jp2 = png(Image.fromarray(gradient(224, 224).astype(np.uint8)), format="JPEG2000", irreversible=False, no_jp2=False)
    end_of_file_type = 12 + struct.unpack(">I", jp2[12:16])[0]
    frame = jp2[:end_of_file_type] + (struct.pack(">I", 8) + b"free") * boxes + jp2[end_of_file_type:]
    return dicom_bytes(image_elements(gradient(224, 224), changes={0x00280100: us(8), 0x00280101: us(8), 0x00280102: us(7),
                                                             0x7FE00010: ("raw", encapsulated(frame))}), JPEG2000_LOSSLESS)


# TIFF structures, walked by Pillow in Python (a second review's findings): a TIFF file, and the EXIF of a PNG or WebP.
def tiff_entry(tag: int, kind: int, count: int, value: int) -> bytes:
    return struct.pack("<HHII", tag, kind, count, value)


def tiff_with_entries(extra, tail: bytes = b"", side: int = 256, drop: tuple[int, ...] = ()) -> bytes:
    """A grey side x side uncompressed little-endian TIFF: one directory of the usual tags (those in `drop` left out)
    and `extra(offset of the tail)` entries, then the pixels and `tail`."""
    usual = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1), (273, 4, 1, None),
             (278, 4, 1, side), (279, 4, 1, side * side)]
    usual = [entry for entry in usual if entry[0] not in drop]
    count = len(usual) + len(extra(0))
    pixels_at = 8 + 2 + 12 * count + 4
    entries = [tiff_entry(tag, kind, n, pixels_at if value is None else value) for tag, kind, n, value in usual]
    entries += extra(pixels_at + side * side)
    return (b"II*\0" + struct.pack("<IH", 8, count) + b"".join(entries) + struct.pack("<I", 0)
            + bytes(range(256)) * (side * side // 256) + tail)


def exif_block(entries: list[bytes], tail: bytes) -> bytes:
    """An EXIF block (a TIFF header and one directory) whose entries may point at `tail` (at offset 8 + 2 + 12n + 4)."""
    return b"II*\0" + struct.pack("<IH", 8, len(entries)) + b"".join(entries) + struct.pack("<I", 0) + tail


def rereads(count: int, size: int) -> list[bytes]:
    """`count` entries of one unknown tag, each pointing at the same `size` bytes right after the directory."""
    return [tiff_entry(65000, 7, size, 8 + 2 + 12 * count + 4)] * count


def png_with_exif(exif: bytes) -> bytes:
    film = png(Image.new("L", (256, 256), 90))
    return film[:33] + struct.pack(">I", len(exif)) + b"eXIf" + exif + struct.pack(">I", zlib.crc32(b"eXIf" + exif)) + film[33:]


def tiny_tiles_tiff(side: int = 1000) -> bytes:
    """An honest uncompressed grey TIFF in 1x1 tiles: a decoder call per pixel."""
    tiles = side * side
    tiff = tiff_with_entries(lambda at: [tiff_entry(322, 3, 1, 1), tiff_entry(323, 3, 1, 1), tiff_entry(324, 1, tiles, at),
                                         tiff_entry(325, 1, tiles, at + tiles)],
                             bytes(tiles) + bytes([1]) * tiles, drop=(273, 278, 279))
    return tiff.replace(tiff_entry(256, 4, 1, 256), tiff_entry(256, 4, 1, side), 1).replace(
        tiff_entry(257, 4, 1, 256), tiff_entry(257, 4, 1, side), 1)


def bigtiff_many_entries(entries: int = 600_000, side: int = 256) -> bytes:
    """A BigTIFF (whose entry count is 8 bytes) holding `entries` copies of one unknown tag."""
    usual = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1), (273, 16, 1, None),
             (278, 4, 1, side), (279, 16, 1, side * side)]
    total = len(usual) + entries
    pixels_at = 16 + 8 + 20 * total + 8
    packed = b"".join(struct.pack("<HHQQ", tag, kind, n, pixels_at if value is None else value) for tag, kind, n, value in usual)
    return (b"II+\0" + struct.pack("<HHQQ", 8, 0, 16, total) + packed + struct.pack("<HHQQ", 1000, 3, 1, 0) * entries
            + struct.pack("<Q", 0) + bytes(side * side))


def animated_png(side: int = 1500, frames: int = 12) -> bytes:
    """RGBA frames composited over the last: seeking to frame 10 decoded every frame on the way (3.5 s at 4740x4740);
    the header's count is used instead (so the message says 12, not "more than 10")."""
    images = [Image.new("RGBA", (side, side), (40 + 100 * (i % 2),) * 4) for i in range(frames)]
    return png(images[0], save_all=True, append_images=images[1:], blend=1, disposal=2)


def motion_photo() -> bytes:
    """A phone's Motion Photo: a JPEG with an 8 MB video after its end, whose bytes hold FF DA about 130 times."""
    film = png(Image.fromarray((gradient(820, 1000) // 16).astype(np.uint8)), format="JPEG")
    return film + b"\0\0\0\x18ftypmp42" + np.random.default_rng(0).integers(0, 256, 8 * 2**20, dtype=np.uint8).tobytes()


def camera_mpo() -> bytes:
    """A camera's JPEG with a preview after it (MPF), which Pillow opens as a two-frame MPO."""
    film = Image.fromarray((gradient(820, 1000) // 16).astype(np.uint8)).convert("RGB")
    return png(film, format="MPO", save_all=True, append_images=[film.resize((500, 410))])


def tiff_with_second_page(subfile_type: int) -> bytes:
    """A grey TIFF whose second page says what it is (NewSubfileType): 1 a smaller copy, 0 another page."""
    film = Image.fromarray((gradient(820, 1000) // 16).astype(np.uint8))
    data = bytearray(png(film, format="TIFF", save_all=True, append_images=[film.resize((205, 250))],
                         tiffinfo={254: subfile_type}))
    first = struct.unpack_from("<I", data, 4)[0]  # Pillow writes the tag on every page: the first says 0
    for entry in range(first + 2, first + 2 + 12 * struct.unpack_from("<H", data, first)[0], 12):
        if struct.unpack_from("<H", data, entry)[0] == 254:
            struct.pack_into("<I", data, entry + 8, 0)
    return bytes(data)


def jpeg_dicom_scan_bomb() -> bytes:
    """A JPEG DICOM of the declared size whose frame is a progressive JPEG of 2,000 scans."""
    frame = progressive_jpeg_scan_bomb(2000, side=80)
    return dicom_bytes(image_elements(gradient(80, 80), changes={0x00280100: us(8), 0x00280101: us(8), 0x00280102: us(7),
                                                           0x7FE00010: ("raw", encapsulated(frame))}), JPEG_BASELINE)


# kind -> (file name, maker, message fragment of the refusal, or None when the image must be read)
BOMBS = {
    "PNG 7000x7000 8-bit": ("bomb8.png", lambda: png(Image.new("L", (7000, 7000))), "more than the limit"),
    "PNG 7000x7000 16-bit": ("bomb16.png", lambda: png(Image.new("I;16", (7000, 7000))), "more than the limit"),
    "BMP RLE8 7000x7000": ("bomb.bmp", bmp_rle8_bomb, "more than the limit"),
    "BMP RLE8 of one-pixel runs, 24 MB": ("shortruns.bmp", lambda: bmp_rle8_short_runs(5400, 24 * 2**20),
                                          "run-length-compressed BMP larger than 4 MB"),
    "BMP RLE4 5400x5400 (240 kB)": ("rle4.bmp", lambda: bmp_rle4_long_runs(5400), "of 4-bit pixels and more than"),
    "RLE DICOM 7000x7000": ("bombrle.dcm", rle_dicom_bomb, "more than the limit"),
    "deflated DICOM": ("deflate.dcm", deflate_bomb, "inflates to more than"),
    "JPEG DICOM, 6000x6000 frame": ("jpegframe.dcm", jpeg_frame_bomb, "not the size its header says"),
    "DICOM header, 1M elements": ("elements.dcm", header_element_bomb, "header too large"),
    "DICOM header, 500k items": ("items.dcm", nested_item_bomb, "header too large"),
    "TIFF with 40,001 pages": ("pages.tiff", many_ifd_tiff, "more than 10 frames"),
    "JPEG 2000 DICOM, 11 MB frame": ("j2k.dcm", jpeg2000_size_bomb, "MB compressed"),
    "PNG zTXt bomb": ("ztxt.png", ztxt_bomb, "text metadata too large"),
    "PNG iTXt bomb": ("itxt.png", lambda: ztxt_bomb("iTXt"), "text metadata too large"),
    "progressive JPEG 5400x5400 of 2,000 scans": ("scans.jpeg", lambda: progressive_jpeg_scan_bomb(2000), "more than 100 scans"),
    "JPEG DICOM, a frame of 2,000 scans": ("scans.dcm", jpeg_dicom_scan_bomb, "more than 100 scans"),
    # Frames beyond the one declared, listed in the offset table: only the first is ever decoded.
    "JPEG DICOM listing an extra frame of 10,000 scans": (
        "extrascans.dcm", lambda: jpeg_dicom_extra_frames(progressive_jpeg_scan_bomb(10_000)), None),
    "JPEG DICOM listing 40 extra 5400x5400 frames": (
        "extraframes.dcm", lambda: jpeg_dicom_extra_frames(png(Image.new("L", (5400, 5400), 100), format="JPEG", quality=20), 40),
        None),
    "JPEG DICOM whose offset table lists 25 M frames": ("offsets.dcm", jpeg_dicom_offset_table_bomb, None),
    # The largest images that pass: read, and still within the budget.
    "PNG 16-bit at the limit (5470x5470)": ("edge16.png", lambda: png(Image.new("I;16", (5470, 5470))), None),
    "PNG RGBA at the limit (4735x4735)": ("edgergba.png", lambda: png(Image.new("RGBA", (4735, 4735))), None),
    "RLE DICOM 16-bit at the limit (5470x5470)": ("edgerle.dcm", lambda: rle_dicom_bomb(5470), None),
    "RLE DICOM, 2-byte runs (4000x4000)": ("slowrle.dcm", rle_slow_runs, None),
    "BMP RLE8 of one-pixel runs at the limit (1400x1400, 3.9 MB)": ("edgeruns.bmp", lambda: bmp_rle8_short_runs(1400), None),
    "BMP RLE4 at the limit (2000x2000)": ("edgerle4.bmp", lambda: bmp_rle4_long_runs(2000), None),
    "progressive JPEG 5400x5400 at the limit (100 scans)": ("edgescans.jpeg", lambda: progressive_jpeg_scan_bomb(99), None),
    # Headers that Pillow walks in Python, one segment or chunk at a time (6-10 s, up to 0.8 GB, before the limits).
    "JPEG with 24 MB of fill bytes in its header": ("fill.jpeg", lambda: jpeg_header_bomb(b"\xff", 24 * 2**20), "fill bytes"),
    "JPEG DICOM, a frame with 24 MB of fill bytes": ("fill.dcm", jpeg_dicom_header_bomb, "fill bytes"),
    "JPEG with 6 M empty segments": ("segments.jpeg", lambda: jpeg_header_bomb(b"\xff\xe5\x00\x02", 6 * 2**20), "segments"),
    "JPEG with 900 comment segments (at the limit)": ("comments.jpeg", lambda: jpeg_header_bomb(b"\xff\xfe\x00\x02", 900), None),
    "PNG with 2 M unknown chunks": ("chunks.png", lambda: png_chunk_bomb(b"zzZz", b"", 2_100_000), "chunks besides its image"),
    "PNG with 1.3 M text chunks": ("texts.png", lambda: png_chunk_bomb(b"tEXt", b"a\0b", 1_260_000), "chunks besides its image"),
    "PNG with 900 text chunks (at the limit)": ("edgetexts.png", lambda: png_chunk_bomb(b"tEXt", b"a\0b", 900), None),
    "deflated YBR_FULL DICOM 5477x5477 (90 MB decoded)": ("ybr.dcm", deflated_ybr_bomb, None),
    # GIF blocks, which Pillow walks in Python (and joins comment pieces quadratically): > 2 minutes, or 8 s.
    "GIF with a 20 MB comment of one-byte pieces": ("comment.gif", lambda: gif_with(b"\x21\xfe" + b"\x01a" * 10 * 2**20 + b"\0"),
                                                    "comment pieces"),
    "GIF with 8 M empty comments": ("comments.gif", lambda: gif_with(b"\x21\xfe\0" * 8 * 2**20), "extension blocks"),
    "GIF with 100 MB of stray bytes": ("stray.gif", lambda: gif_with(b"\x07" * 100 * 2**20), "blocks"),
    "GIF with 40 M one-byte blocks after its image": (
        "blocks.gif", lambda: gif_with(after_image=b"\x21\x01" + b"\x01a" * 40 * 2**20 + b"\0"), "blocks"),
    "GIF animation of 5,000 frames": ("frames.gif", gif_animation, "more than 10 frames"),
    "GIF with a 230 kB comment (at the limit)": ("edgecomment.gif", lambda: gif_with(b"\x21\xfe" + (b"\xff" + b"a" * 255) * 900 + b"\0"),
                                                 None),
    "GIF 4000x4000 of noise (21 MB)": ("noise.gif", lambda: png(Image.fromarray(np.random.default_rng(0).integers(
        0, 256, (4000, 4000), dtype=np.uint8)), format="GIF"), None),
    "JPEG 2000 DICOM, a JP2 frame of 1.3 M boxes": ("boxes.dcm", lambda: jp2_dicom(1_300_000), "1,000 boxes"),
    "JPEG 2000 DICOM, a JP2 frame of 900 boxes (at the limit)": ("edgeboxes.dcm", lambda: jp2_dicom(900), None),
    # TIFF structures (before: 2-37 s, up to 6 GB).
    "TIFF, 50 entries pointing at one 60 MB blob": (
        "rereads.tiff", lambda: tiff_with_entries(lambda at: [tiff_entry(65000, 7, 60 * 2**20, at)] * 50, bytes(60 * 2**20)),
        "the same bytes again"),
    "BigTIFF, a directory of 600,000 entries": ("entries.tiff", bigtiff_many_entries, "600,008 entries"),
    "TIFF of 1 M one-pixel tiles": ("tiles.tiff", tiny_tiles_tiff, "strips or tiles"),
    "TIFF, a colour map of 12 M numbers": (
        "colormap.tiff", lambda: tiff_with_entries(lambda at: [tiff_entry(262, 3, 1, 3), tiff_entry(320, 3, 12_000_000, at)],
                                                   bytes(24_000_000), drop=(262,)), "12,000,000 numbers"),
    "PNG whose EXIF has 50 entries pointing at one 60 MB blob": (
        "rereads.png", lambda: png_with_exif(exif_block(rereads(50, 60 * 2**20), bytes(60 * 2**20))), "the same bytes again"),
    "PNG whose EXIF turns it and holds 5 M numbers": (
        "exifarray.png", lambda: png_with_exif(exif_block([tiff_entry(0x0112, 3, 1, 6), tiff_entry(65000, 3, 5_000_000, 38)],
                                                          bytes(10_000_000))), "5,000,000 numbers"),
    "WebP whose EXIF has 50 entries pointing at one 60 MB blob": (
        "rereads.webp", lambda: png(Image.new("RGB", (256, 256), (90, 90, 90)), format="WEBP",
                                    exif=exif_block(rereads(50, 60 * 2**20), bytes(60 * 2**20))), "the same bytes again"),
    "APNG of 12 frames 1500x1500 RGBA": ("frames.png", animated_png, "has 12 frames"),
    "JPEG with an 8 MB video after it (a Motion Photo)": ("motion.jpeg", motion_photo, None),
    "JPEG with a preview image after it (MPO)": ("camera.jpeg", camera_mpo, None),
    "TIFF with a transfer function of 3 x 65,536 numbers (at the limit)": (
        "transfer.tiff", lambda: tiff_with_entries(lambda at: [tiff_entry(301, 3, 3 * 65536, at)], bytes(6 * 65536)), None),
    "TIFF whose second page is a smaller copy (a thumbnail)": ("thumbnail.tiff", lambda: tiff_with_second_page(1), None),
    "TIFF of two pages": ("twopages.tiff", lambda: tiff_with_second_page(0), "has 2 frames"),
    "TIFF tiled 64x64, LZW (ordinary)": ("tiled.tiff", lambda: png(Image.fromarray((gradient(2000, 2000) // 16).astype(np.uint8)),
                                                                   format="TIFF", compression="tiff_lzw", tiffinfo={322: 64, 323: 64}), None),
}


def measure(path: Path, timeout: float = 120.0) -> dict:
    """Read `path` in a forked process: its outcome, peak extra memory (MB) and CPU seconds."""
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_measured_read, args=(str(path), sender))
    process.start()
    result = receiver.recv() if receiver.poll(timeout) else {"outcome": "timed out", "extra_mb": float("nan"), "cpu_s": timeout}
    process.join(5)
    if process.is_alive():
        process.kill()
    return result


def _measured_read(path: str, sender) -> None:
    rss_before = psutil.Process().memory_info().rss
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        image = read_image(path)
        outcome = f"read, {image.width}x{image.height}"
    except ImageReadError as error:
        outcome = str(error)
    except BaseException as error:  # noqa: BLE001 - the "before" reader raised anything
        outcome = f"{type(error).__name__} (not an ImageReadError)"
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sender.send({"outcome": outcome, "extra_mb": (peak - rss_before) / 2**20, "cpu_s": cpu, "wall_s": wall})


@pytest.fixture(scope="module")
def bomb_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bombs")
    files = {}
    for kind, (name, make, _) in BOMBS.items():
        files[kind] = folder / name
        files[kind].write_bytes(make())
    return files


@pytest.mark.parametrize("kind", list(BOMBS))
def test_every_bomb_is_answered_within_one_gigabyte_and_two_cpu_seconds(bomb_files, kind):
    result = measure(bomb_files[kind])
    expected = BOMBS[kind][2]
    if expected is None:
        assert result["outcome"].startswith("read"), result
    else:
        assert expected in result["outcome"], result
    assert result["extra_mb"] < MAX_EXTRA_MEMORY_MB, result
    assert result["cpu_s"] < MAX_CPU_SECONDS, result


def test_a_tiff_with_a_thumbnail_is_read_as_its_full_page(bomb_files):
    image = read_image(bomb_files["TIFF whose second page is a smaller copy (a thumbnail)"])
    assert image.size == Image.open(bomb_files["TIFF of two pages"]).size  # the first page, not the thumbnail


def test_the_bombs_are_small_files(bomb_files):
    size = lambda kind: bomb_files[kind].stat().st_size  # noqa: E731
    assert size("PNG 7000x7000 16-bit") < 100_000  # the 95 kB 16-bit bomb of the report
    assert size("BMP RLE8 7000x7000") < 500_000 and size("RLE DICOM 7000x7000") < 1_600_000
    assert size("deflated DICOM") < 200_000 and size("TIFF with 40,001 pages") < 5_000_000


# ---------------------------------------------------------------------------------------------------------------
# Unexpected DICOM content: one clear error per file, and patient data nowhere.

UNEXPECTED_DICOM = {
    # name -> (elements, transfer syntax, message fragment or None when the image must be read)
    "frames holding a name": (image_elements(changes={0x00280008: ("IS", PATIENT_NAME[:16])}), EXPLICIT_VR_LE,
                              "NumberOfFrames is not a whole number"),
    "frames NaN": (image_elements(changes={0x00280008: ("IS", "NaN")}), EXPLICIT_VR_LE, "NumberOfFrames is not a whole number"),
    "frames 12": (image_elements(changes={0x00280008: ("IS", "12")}), EXPLICIT_VR_LE, "has 12 frames"),
    "rows NaN": (image_elements(changes={0x00280010: ("DS", "NaN")}), EXPLICIT_VR_LE, "Rows is not a whole number"),
    "rows a string": (image_elements(changes={0x00280010: ("LO", "SECRET ROWS")}), EXPLICIT_VR_LE, "Rows is not a whole number"),
    "rows missing": (image_elements(changes={0x00280010: None}), EXPLICIT_VR_LE, "Rows is missing"),
    "rows of 3 bytes": (image_elements(changes={0x00280010: ("US", b"\x40\x00\x00")}), EXPLICIT_VR_LE,
                        "Rows is not a whole number"),
    "bits missing": (image_elements(changes={0x00280100: None}), EXPLICIT_VR_LE, "BitsAllocated is missing"),
    "columns zero": (image_elements(changes={0x00280011: us(0)}), EXPLICIT_VR_LE, "has no pixels"),
    "samples 3 in grey": (image_elements(changes={0x00280002: us(3)}), EXPLICIT_VR_LE, "pixel layout"),
    "pixels truncated": (image_elements(changes={0x7FE00010: ("OW", bytes(100))}), EXPLICIT_VR_LE, "truncated"),
    "no pixel data": (image_elements(changes={0x7FE00010: None}), EXPLICIT_VR_LE, "without an image"),
    "float pixel data": (image_elements(changes={0x7FE00010: None, 0x7FE00008: ("OF", np.zeros(64 * 80, "<f4").tobytes())}),
                         EXPLICIT_VR_LE, "floating-point"),
    "photometric garbage": (image_elements(changes={0x00280004: ("CS", "SECRET")}), EXPLICIT_VR_LE, "photometric interpretation"),
    "palette colour": (image_elements(changes={0x00280004: ("CS", "PALETTE COLOR")}), EXPLICIT_VR_LE, "colour palette"),
    "modality CT": (image_elements(changes={0x00080060: ("CS", "CT")}), EXPLICIT_VR_LE, "is a CT scan"),
    "modality US": (image_elements(changes={0x00080060: ("CS", "US")}), EXPLICIT_VR_LE, "ultrasound"),
    "modality MR": (image_elements(changes={0x00080060: ("CS", "MR")}), EXPLICIT_VR_LE, "MRI"),
    "modality XYZ": (image_elements(changes={0x00080060: ("CS", "XYZ")}), EXPLICIT_VR_LE, "an image of another kind"),
    # A value too long or multi-valued reads as no code: it must not pass for an absent one (a CT read as an X-ray).
    "modality CT padded past 1 kB": (image_elements(changes={0x00080060: ("CS", "CT" + " " * 1100)}), EXPLICIT_VR_LE,
                                     "CR or DX expected"),
    "modality CT\\CT": (image_elements(changes={0x00080060: ("CS", "CT\\CT")}), EXPLICIT_VR_LE, "is a CT scan"),
    "modality DX\\CT": (image_elements(changes={0x00080060: ("CS", "DX\\CT")}), EXPLICIT_VR_LE, "is a CT scan"),
    "palette colour padded past 1 kB": (image_elements(changes={0x00280004: ("CS", "PALETTE COLOR" + " " * 1100)}),
                                        EXPLICIT_VR_LE, "photometric interpretation"),
    "a strip 1000x8": (image_elements(gradient(8, 1000)), EXPLICIT_VR_LE, "too small or too narrow"),
    "transfer syntax unknown": (image_elements(), "1.2.3.4.5.6", "unknown DICOM transfer syntax"),
    "JPEG Lossless without a decoder": (image_elements(changes={0x7FE00010: ("raw", encapsulated(b"\xff\xd8\xff\xd9"))}),
                                        "1.2.840.10008.1.2.4.70", "compressed in a way this tool cannot decode"),
    "window width 0": (image_elements(changes={0x00281050: ("DS", "2000"), 0x00281051: ("DS", "0")}), EXPLICIT_VR_LE, None),
    "window holding a name": (image_elements(changes={0x00281050: ("LO", PATIENT_NAME), 0x00281051: ("DS", "NaN")}),
                              EXPLICIT_VR_LE, None),
    "window flattening the image": (image_elements(changes={0x00281050: ("DS", "90000"), 0x00281051: ("DS", "2")}),
                                    EXPLICIT_VR_LE, None),
    "rescale slope garbage": (image_elements(changes={0x00281053: ("DS", "abc"), 0x00281052: ("DS", "x")}), EXPLICIT_VR_LE, None),
    "modality missing": (image_elements(changes={0x00080060: None}), EXPLICIT_VR_LE, None),
    "secondary capture (OT)": (image_elements(changes={0x00080060: ("CS", "OT")}), EXPLICIT_VR_LE, None),
    "implicit VR": (image_elements(), IMPLICIT_VR_LE, None),
}


@pytest.fixture
def quiet_reader(caplog, capsys):
    """Reads a file while recording every log record, warning and byte of stderr it causes."""
    def read(data: bytes, name: str):
        caplog.set_level(logging.DEBUG)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                outcome = read_image(data, name=name)
            except ImageReadError as error:
                outcome = error
            except Exception as error:  # noqa: BLE001
                pytest.fail(f"{name}: {type(error).__name__} instead of ImageReadError")
        leaks = caplog.text + capsys.readouterr().err + "".join(str(w.message) for w in caught)
        return outcome, leaks
    return read


def assert_no_patient_data(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"patient data {secret!r} leaked: {text[:300]!r}"


@pytest.mark.parametrize("case", list(UNEXPECTED_DICOM))
def test_unexpected_dicom_content_gets_its_own_error_and_no_patient_data_anywhere(case, quiet_reader):
    elements, syntax, expected = UNEXPECTED_DICOM[case]
    outcome, leaks = quiet_reader(dicom_bytes(elements, syntax), "scan.dcm")
    if expected is None:
        assert isinstance(outcome, Image.Image) and outcome.mode == "L", outcome
        assert outcome.size == (80, 64)
        assert np.ptp(np.asarray(outcome)) == 255  # a usable image, not a flat one
    else:
        assert isinstance(outcome, ImageReadError), case
        assert expected in str(outcome) and "scan.dcm" in str(outcome)
        assert outcome.__context__ is None and outcome.__cause__ is None  # nothing from the parse travels with it
        assert_no_patient_data(str(outcome))
    assert_no_patient_data(leaks)


def test_an_empty_modality_or_photometric_element_counts_as_absent():
    """Anonymisers blank elements, and home-made converters write free text or stray separators: none of these is a
    reason to refuse (only a value of another modality, or one too long to read, is)."""
    for changes in ({0x00080060: ("CS", "")}, {0x00280004: ("CS", "")}, {0x00080060: ("CS", "  ")},
                    {0x00080060: ("CS", "X-RAY")}, {0x00080060: ("CS", "DIGITAL RADIOGRAPH")}, {0x00080060: ("CS", "CR\\DX")},
                    {0x00080060: ("CS", "DX\\")}):
        assert read_image(dicom_bytes(image_elements(changes=changes)), name="blank.dcm").size == (80, 64)


def test_a_bad_window_falls_back_to_the_full_range_of_the_image():
    ramp = gradient()
    expected = np.rint((ramp - ramp.min()) * 255.0 / np.ptp(ramp))
    for window in (("2000", "0"), ("90000", "2")):
        elements = image_elements(ramp, changes={0x00281050: ("DS", window[0]), 0x00281051: ("DS", window[1])})
        image = read_image(dicom_bytes(elements), name="w.dcm")
        assert np.abs(np.asarray(image, float) - expected).max() <= 1


def test_a_good_window_is_still_applied():
    elements = image_elements(gradient(), changes={0x00281050: ("DS", "2000"), 0x00281051: ("DS", "400")})
    values = np.asarray(read_image(dicom_bytes(elements), name="w.dcm"), float)[0]
    assert values[:30].max() == 0 and values[55:].min() == 255


def test_a_batch_of_unexpected_dicom_answers_file_by_file(tmp_path):
    from chestxray.batch import predict_files
    from chestxray.classifier import Prediction

    files = []
    for index, (elements, syntax, _) in enumerate(UNEXPECTED_DICOM.values()):
        files.append((f"case{index}.dcm", tmp_path / f"case{index}.dcm"))
        files[-1][1].write_bytes(dicom_bytes(elements, syntax))
    answer = Prediction(pneumonia_probability=0.5, decision="NORMAL", threshold=0.5)
    stub = SimpleNamespace(read=lambda path, name: read_image(path, name=name), shrink=lambda image: image,
                           predict=lambda images, batch_size: [answer] * len(images))
    results = predict_files(stub, files)
    for result, (_, _, expected) in zip(results, UNEXPECTED_DICOM.values()):
        assert (result.error is None) == (expected is None), result
        assert expected is None or expected in result.error
        assert_no_patient_data(result.error or "")


# ---------------------------------------------------------------------------------------------------------------
# What the reader hands the out-of-distribution gate.

def test_dicom_facts_are_exposed_for_the_gate_and_nothing_else(tmp_path):
    elements = image_elements(changes={0x00080060: ("CS", "DX"), 0x00185101: ("CS", "PA"), 0x00180015: ("CS", "CHEST"),
                                 0x00101010: ("AS", "018M"), 0x00200062: ("CS", "L"),
                                 0x00280030: ("DS", "0.15\\0.15")})
    image = read_image(dicom_bytes(elements), name="x.dcm")
    assert image.info["dicom"] == {"modality": "DX", "view_position": "PA", "body_part": "CHEST", "laterality": "L",
                                   "patient_age_years": 1.5, "pixel_spacing_mm": 0.15}
    assert set(image.info) == {"colourfulness", "dicom"}
    assert_no_patient_data(repr(image.info))


@pytest.mark.parametrize("age, years", [("004Y", 4.0), ("018M", 1.5), ("030D", 30 / 365.25), ("026W", 26 * 7 / 365.25),
                                        ("4Y", None), ("SECRET", None)])
def test_patient_age_becomes_years(age, years):
    image = read_image(dicom_bytes(image_elements(changes={0x00101010: ("AS", age)})), name="x.dcm")
    assert image.info["dicom"]["patient_age_years"] == (pytest.approx(years, rel=1e-3) if years else None)


def test_missing_or_malformed_facts_are_none():
    elements = image_elements(changes={0x00080060: None, 0x00185101: ("CS", PATIENT_NAME), 0x00180015: ("LO", "x" * 40)})
    facts = read_image(dicom_bytes(elements), name="x.dcm").info["dicom"]
    assert facts == dict.fromkeys(facts, None)


def test_images_other_than_dicom_carry_no_dicom_facts():
    info = PngInfo()
    info.add_text("dicom", "{'modality': 'CR'}")  # a text chunk may not pose as DICOM facts
    image = read_image(png(synthetic_xray(1, 2, size=64), pnginfo=info), name="x.png")
    assert "dicom" not in image.info and set(image.info) == {"colourfulness"}


# ---------------------------------------------------------------------------------------------------------------
# Compressed DICOM is decoded to the same picture, or refused before decoding.

def test_rle_dicom_reads_as_the_same_image_as_uncompressed():
    ramp = gradient()
    native = read_image(dicom_bytes(image_elements(ramp)), name="native.dcm")
    planes = [(ramp >> 8).astype(np.uint8).tobytes(), (ramp & 0xFF).astype(np.uint8).tobytes()]
    frame = rle_frame([packbits(plane) for plane in planes])
    elements = image_elements(ramp, changes={0x7FE00010: ("raw", encapsulated(frame))})
    compressed = read_image(dicom_bytes(elements, RLE), name="rle.dcm")
    assert np.array_equal(np.asarray(native), np.asarray(compressed))


def packbits(data: bytes) -> bytes:
    """Literal runs of up to 128 bytes: valid PackBits, crossing row ends as DICOM allows."""
    return b"".join(bytes([len(chunk) - 1]) + chunk for chunk in (data[i : i + 128] for i in range(0, len(data), 128)))


def test_a_deflated_dicom_of_radiograph_size_is_read_like_the_uncompressed_one():
    native = read_image(dicom_bytes(image_elements()), name="native.dcm")
    deflated = read_image(dicom_bytes(image_elements(), DEFLATED), name="deflated.dcm")
    assert np.array_equal(np.asarray(native), np.asarray(deflated))


def test_jpeg_dicom_of_the_declared_size_is_read():
    picture = synthetic_xray(1, 4, size=64).resize((80, 64))
    elements = image_elements(gradient(), changes={0x00280100: us(8), 0x00280101: us(8), 0x00280102: us(7),
                                             0x7FE00010: ("raw", encapsulated(png(picture, format="JPEG", quality=95)))})
    image = read_image(dicom_bytes(elements, JPEG_BASELINE), name="jpeg.dcm")
    assert image.size == (80, 64)
    assert np.corrcoef(np.asarray(image, float).ravel(), np.asarray(picture, float).ravel())[0, 1] > 0.98


def test_a_ybr_dicom_is_read_as_the_grey_of_its_rgb_twin():
    """YBR_FULL pixels keep their luma as the grey (no trip through RGB), and their colour is still measured."""
    rgb = np.stack([np.tile(np.linspace(20, 230, 80), (64, 1)), np.full((64, 80), 90.0), np.full((64, 80), 40.0)], -1)
    rgb = rgb.astype(np.uint8)
    ybr = np.asarray(Image.fromarray(rgb).convert("YCbCr"))

    def colour_dicom(photometric: str, pixels: np.ndarray) -> Image.Image:
        elements = image_elements(gradient(), changes={0x00080060: ("CS", "OT"), 0x00280002: us(3), 0x00280004: ("CS", photometric),
                                                 0x00280006: us(0), 0x00280100: us(8), 0x00280101: us(8),
                                                 0x00280102: us(7), 0x7FE00010: ("OB", pixels.tobytes())})
        return read_image(dicom_bytes(elements), name="colour.dcm")

    from_ybr, from_rgb = colour_dicom("YBR_FULL", ybr), colour_dicom("RGB", rgb)
    assert from_ybr.mode == "L" and from_ybr.size == from_rgb.size
    assert np.abs(np.asarray(from_ybr, int) - np.asarray(from_rgb, int)).max() <= 1
    assert from_ybr.info["colourfulness"] == pytest.approx(from_rgb.info["colourfulness"], rel=0.1)
    assert from_ybr.info["colourfulness"] > 12


def test_colour_dicom_is_read_as_grey_with_its_colourfulness():
    rgb = np.stack([np.full((64, 80), 200), np.full((64, 80), 40), np.full((64, 80), 40)], -1).astype(np.uint8)
    elements = image_elements(gradient(), changes={0x00080060: ("CS", "OT"), 0x00280002: us(3), 0x00280004: ("CS", "RGB"),
                                             0x00280006: us(0), 0x00280100: us(8), 0x00280101: us(8),
                                             0x00280102: us(7), 0x7FE00010: ("OB", rgb.tobytes())})
    image = read_image(dicom_bytes(elements), name="colour.dcm")
    assert image.mode == "L" and image.info["colourfulness"] > 12


# ---------------------------------------------------------------------------------------------------------------
# Detection, formats and names.

@pytest.mark.parametrize("syntax, meta", [(EXPLICIT_VR_LE, True), (EXPLICIT_VR_LE, False), (IMPLICIT_VR_LE, True),
                                          (IMPLICIT_VR_LE, False)])
def test_dicom_without_preamble_or_extension_is_recognised_by_content(syntax, meta):
    data = dicom_bytes(image_elements(), syntax, preamble=False, meta=meta)
    assert read_image(data, name="IMG0001").size == (80, 64)


@pytest.mark.parametrize("fmt, name", [("EPS", "scan.eps"), ("ICO", "scan.ico"), ("PPM", "scan.pgm"), ("JPEG2000", "scan.jp2"),
                                       ("PCX", "scan.pcx"), ("TGA", "scan.tga")])
def test_formats_outside_the_documented_ones_are_never_decoded(fmt, name):
    data = png(synthetic_xray(0, 1, size=64).convert("L" if fmt != "ICO" else "RGBA"), format=fmt)
    with pytest.raises(ImageReadError, match=r"is not an image \(expected PNG, JPEG, TIFF, BMP, WebP or DICOM\)"):
        read_image(data, name=name)


def test_control_and_bidi_characters_never_reach_a_message_or_a_row(tmp_path):
    from chestxray.batch import predict_files

    name = "report\u202egnp.exe\x1b[31m\r\n=cmd|' /C calc'!A0"
    with pytest.raises(ImageReadError) as error:
        read_image(b"not an image", name=name)
    for character in ("\u202e", "\x1b", "\r", "\n"):
        assert character not in str(error.value)
    assert "report" in str(error.value) and "gnp.exe" in str(error.value)
    path = tmp_path / "x.png"
    path.write_bytes(b"not an image")
    stub = SimpleNamespace(read=lambda p, name: read_image(p, name=name), shrink=lambda image: image,
                           predict=lambda images, batch_size: [])
    (row,) = predict_files(stub, [(name, path)])
    assert "\u202e" not in row.file and "\x1b" not in row.file and "\n" not in row.file


def test_csv_cells_cannot_start_a_formula(tmp_path):
    from chestxray.batch import FileResult, write_csv

    names = ["=SUM(1,2)+HYPERLINK(\"http://x\")", "+1", "-2", "@cmd", "\tx", "\rx", "plain.png"]
    results = [FileResult(file=n, error="`x` is not an image") for n in names]
    with write_csv(results, tmp_path / "out.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["file"] for r in rows][:-1] == ["'" + n for n in names[:-1]]
    assert rows[-1]["file"] == "plain.png"


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path):
    path = tmp_path / "huge.dcm"
    with path.open("wb") as handle:
        handle.truncate(129 * 2**20)  # sparse: no disk used
    with pytest.raises(ImageReadError, match="larger than 128 MB"):
        read_image(path)


if __name__ == "__main__":
    import tempfile

    print(f"{'bomb kind':<45} {'file':>9}  {'extra MB':>9}  {'CPU s':>6}  outcome")
    with tempfile.TemporaryDirectory() as folder:
        the_reports_deflate_bomb = ("deflate1g.dcm", lambda: deflate_bomb(2**30), None)  # 1 MB inflating to 1 GB
        kinds = dict(BOMBS, **{"deflated DICOM, 1 MB -> 1 GB (the report's)": the_reports_deflate_bomb})
        for kind, (name, make, _) in kinds.items():
            path = Path(folder) / name
            path.write_bytes(make())
            result = measure(path, timeout=300)
            print(f"{kind:<45} {path.stat().st_size / 1e3:>7.0f}kB  {result['extra_mb']:>9.0f}  {result['cpu_s']:>6.2f}  "
                  f"{result['outcome'][:90]}", flush=True)
            path.unlink()
    sys.exit(0)


def test_a_batch_stops_reading_when_its_time_budget_is_spent(tmp_path, monkeypatch):
    """A batch of slow-to-decode files must not hold a public server's batch worker for minutes."""
    from chestxray import batch
    from chestxray.classifier import Prediction

    clock = iter(range(100))  # every look at the clock is one second later
    monkeypatch.setattr(batch.time, "monotonic", lambda: float(next(clock)))
    files = []
    for index in range(4):
        files.append((f"film{index}.png", tmp_path / f"film{index}.png"))
        synthetic_xray(0, index, size=32).save(files[-1][1])
    answer = Prediction(pneumonia_probability=0.2, decision="NORMAL", threshold=0.5)
    stub = SimpleNamespace(read=lambda path, name: read_image(path, name=name), shrink=lambda image: image,
                           predict=lambda images, batch_size: [answer] * len(images))
    results = batch.predict_files(stub, files, time_budget_s=2.0)
    assert [r.decision for r in results] == ["NORMAL", "NORMAL", None, None]
    assert all("Not read: this batch used up its 2 seconds" in r.error for r in results[2:])
    assert all(r.error is None for r in batch.predict_files(stub, files))  # no budget: every file is read
