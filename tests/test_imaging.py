"""Reading every kind of real upload into the grey image the model sees, and refusing the rest clearly."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from chestxray.imaging import ImageReadError, read_image
from conftest import PATIENT_ID, PATIENT_NAME, synthetic_xray, write_dicom, xray_as_dicom


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


XRAY = synthetic_xray(1, 5, size=64)


@pytest.mark.parametrize(
    "mode, fmt",
    [("L", "PNG"), ("RGB", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("L", "JPEG"), ("RGB", "JPEG"), ("CMYK", "JPEG"),
     ("L", "TIFF"), ("RGB", "BMP"), ("RGB", "WEBP"), ("LA", "PNG"), ("P", "GIF")],
)
def test_common_formats_and_modes_become_the_same_grey_image(mode, fmt):
    data = encoded(XRAY.convert(mode), fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    image = read_image(data, name=f"x.{fmt.lower()}")
    assert image.mode == "L" and image.size == XRAY.size
    tolerance = 12 if fmt == "JPEG" else 2
    assert np.abs(np.asarray(image, float) - np.asarray(XRAY, float)).mean() < tolerance


def test_sixteen_bit_png_uses_its_full_range():
    pixels = (np.asarray(XRAY, dtype=np.uint16) * 200 + 1000)  # 1000..52000 in 16 bits
    image = read_image(encoded(Image.fromarray(pixels), "PNG"), name="x16.png")
    assert image.mode == "L"
    assert np.asarray(image).min() == 0 and np.asarray(image).max() == 255
    assert np.corrcoef(np.asarray(image, float).ravel(), np.asarray(XRAY, float).ravel())[0, 1] > 0.999


def test_exif_orientation_is_applied():
    wide = Image.new("L", (80, 40), 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90° turn
    image = read_image(encoded(wide, "JPEG", exif=exif), name="phone.jpeg")
    assert image.size == (40, 80)


def test_dicom_monochrome1_is_inverted_and_detected_without_extension(tmp_path):
    path = xray_as_dicom(tmp_path / "IMG0001")  # no extension: recognised by content
    image = read_image(path)
    assert image.mode == "L"
    expected = np.asarray(synthetic_xray(1, 3, size=64), float)
    assert np.corrcoef(np.asarray(image, float).ravel(), expected.ravel())[0, 1] > 0.99  # dark lungs stay dark


def test_dicom_rescale_and_window_are_applied(tmp_path):
    ramp = np.tile(np.arange(64, dtype=np.uint16) * 60, (64, 1))
    path = write_dicom(tmp_path / "windowed.dcm", ramp, photometric="MONOCHROME2",
                       RescaleSlope=1, RescaleIntercept=0, WindowCenter=1900, WindowWidth=400)
    values = np.asarray(read_image(path), float)[0]
    assert values[:25].max() == 0 and values[40:].min() == 255  # outside the window: clipped


def test_dicom_patient_data_never_appears_in_errors(tmp_path):
    path = xray_as_dicom(tmp_path / "no_pixels.dcm", with_pixels=False)
    with pytest.raises(ImageReadError, match="without an image") as error:
        read_image(path)
    assert PATIENT_NAME not in str(error.value) and PATIENT_ID not in str(error.value)


@pytest.mark.parametrize(
    "data, name, message",
    [
        (b"", "empty.png", "is empty"),
        (b"just some text, not pixels", "notes.png", "is not an image"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj", "report.png", "is not an image"),
        (encoded(XRAY, "JPEG")[:200], "cut.jpeg", "truncated or corrupt"),
        (encoded(XRAY, "PNG")[:120], "cut.png", "truncated or corrupt"),
        (b"\x00" * 128 + b"DICM" + b"\x02\x00garbage" * 4, "broken.dcm", "DICOM"),
        (b"plain notes, saved with a DICOM name\n" * 20, "notes.dcm", "is not a readable DICOM file"),  # not "no pixel data"
    ],
)
def test_unusable_files_get_a_clear_message(data, name, message):
    with pytest.raises(ImageReadError, match=message) as error:
        read_image(data, name=name)
    assert name in str(error.value)


def test_decompression_bomb_is_refused_before_decoding():
    bomb = encoded(Image.new("1", (9000, 9000)), "PNG")  # 81 MP, a few kB on disk
    assert len(bomb) < 100_000
    with pytest.raises(ImageReadError, match="more than the limit"):
        read_image(bomb, name="bomb.png")


@pytest.mark.parametrize("fmt, count, message", [("GIF", 3, "3 frames"), ("TIFF", 3, "single still radiograph"),
                                                ("GIF", 30, "more than 10 frames")])
def test_animations_and_multi_frame_files_are_refused_saying_why(fmt, count, message):
    frames = [synthetic_xray(0, i, size=32).convert("P") for i in range(count)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:])
    with pytest.raises(ImageReadError, match=message):
        read_image(buffer.getvalue(), name=f"anim.{fmt.lower()}")


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ImageReadError, match="does not exist"):
        read_image(tmp_path / "nope.png")
