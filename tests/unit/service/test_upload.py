"""Upload decoding and measuring (service.upload), without HTTP."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from service.upload import (
    ImageTooLarge,
    UnsupportedImage,
    UploadError,
    check_format,
    decode,
    sniff,
)


def encoded(array: np.ndarray, fmt: str, **kw: object) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt, **kw)
    return out.getvalue()


def test_sniff_and_declared_types() -> None:
    png = encoded(np.zeros((8, 8), np.uint8), "PNG")
    assert sniff(png) == "PNG"
    assert sniff(b"\x00" * 128 + b"DICM" + b"\x00" * 8) == "DICOM"
    assert check_format(png, "image/png; charset=binary") == "PNG"
    assert check_format(png, None) == "PNG"
    assert check_format(png, "image/x-png") == "PNG"
    with pytest.raises(UnsupportedImage, match="declared image/jpeg but the file is PNG"):
        check_format(png, "image/jpg")


def test_pictures_become_gray_in_unit_range() -> None:
    rgb = np.zeros((10, 20, 3), np.uint8)
    rgb[..., 0] = 255
    image = decode(encoded(rgb, "PNG"), "image/png")
    assert image.pixels.shape == (10, 20) and image.pixels.dtype == np.float32
    assert 0.2 < float(image.pixels.max()) < 0.4  # luminance of pure red
    deep = np.full((4, 4), 1000, np.uint16)
    deep[0, 0] = 3000
    stretched = decode(encoded(deep, "TIFF"), "image/tiff").pixels
    assert stretched.min() == 0.0 and stretched.max() == 1.0


def test_phone_photos_are_turned_upright() -> None:
    wide = Image.new("L", (40, 10))
    exif = wide.getexif()
    exif[0x0112] = 6  # rotated 90 degrees: the picture is 10 wide, 40 high
    out = io.BytesIO()
    wide.save(out, format="JPEG", exif=exif.tobytes())
    assert decode(out.getvalue(), "image/jpeg").pixels.shape == (40, 10)


def test_limits_and_broken_files() -> None:
    png = encoded(np.zeros((100, 100), np.uint8), "PNG")
    with pytest.raises(ImageTooLarge, match="100x100"):
        decode(png, "image/png", max_pixels=9_999)
    with pytest.raises(UploadError, match="cannot be decoded"):
        decode(png[:60], "image/png")
    with pytest.raises(UploadError, match="empty"):
        decode(b"", "image/png")
    pages = io.BytesIO()
    frames = [Image.new("L", (8, 8)), Image.new("L", (8, 8))]
    frames[0].save(pages, format="TIFF", save_all=True, append_images=frames[1:])
    with pytest.raises(UploadError, match="2 pages"):
        decode(pages.getvalue(), "image/tiff")
