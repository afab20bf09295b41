"""Segment one uploaded picture: the reference work's ``/predict``, with checks.

PNG, JPEG and TIFF are read with Pillow (EXIF orientation applied, so a phone
photo is upright); DICOM goes through the same display pipeline as the node
(:func:`dicom_node.pixels.display_image`). The declared content type must
agree with the file's signature. The image becomes display-ready grayscale in
[0, 1], then :func:`service.segmentation.segment_image` (the same step as the
node's: model, threshold, lesions and their measurements), and an overlay
in red at alpha 0.4 with a red contour and the lesion numbers, as in the
Secondary Capture the node sends.

Nothing is stored: the upload lives in memory for the request only. Areas are
in mm² when the pixel spacing is known (DICOM Pixel Spacing or Imager Pixel
Spacing, or the ``pixel_spacing_mm`` the caller gives), otherwise in pixels.
"""

from __future__ import annotations

import dataclasses
import io
import time
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from dicom_node.capture import overlay_rgb
from service.imaging.lesions import Lesion
from service.inference import Segmenter
from service.segmentation import LesionRules, Segmentation, segment_image

#: Media types accepted, by the format their signature shows.
MEDIA_TYPES: Final = {
    "image/png": "PNG",
    "image/jpeg": "JPEG",
    "image/tiff": "TIFF",
    "application/dicom": "DICOM",
}
_ALIASES: Final = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "image/x-png": "image/png",
    "image/tif": "image/tiff",
    "image/x-tiff": "image/tiff",
    "application/x-dicom": "application/dicom",
    "image/dicom": "application/dicom",
}
#: Types that say nothing about the content: the signature decides.
_UNSPECIFIC: Final = ("", "application/octet-stream", "binary/octet-stream")
MAX_PIXELS: Final = 80_000_000
ALPHA: Final = 0.4
DEFAULT_OVERLAY_SIZE: Final = 1024
WARNING: Final = "AI segmentation - not for diagnostic use"


class UploadError(Exception):
    """An upload that cannot be segmented; ``status`` is the HTTP status to answer."""

    status = 422
    title = "Unprocessable image"


class UnsupportedImage(UploadError):
    status = 415
    title = "Unsupported media type"


class ImageTooLarge(UploadError):
    status = 413
    title = "Image too large"


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # float32 [0, 1], rows x columns, bright = dense; padding black
    format: str  # PNG, JPEG, TIFF, DICOM
    spacing_mm: tuple[float, float] | None
    spacing_source: str | None
    padding: np.ndarray | None = None  # DICOM Pixel Padding Value pixels (bool)


@dataclass(frozen=True)
class UploadResult:
    image: DecodedImage
    segmentation: Segmentation
    seconds_decode: float
    seconds_inference: float

    @property
    def mask(self) -> np.ndarray:
        return self.segmentation.mask

    @property
    def lesions(self) -> tuple[Lesion, ...]:
        return self.segmentation.lesions

    @property
    def threshold(self) -> float:
        return self.segmentation.threshold

    @property
    def max_probability(self) -> float:
        return self.segmentation.max_probability


def sniff(data: bytes) -> str | None:
    """The format a file's first bytes show (PS3.10 7.1 for DICOM: 'DICM' after 128 bytes)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if len(data) > 132 and data[128:132] == b"DICM":
        return "DICOM"
    return None


def media_type_of(content_type: str | None) -> str:
    """The bare, lower-case media type of a Content-Type value, aliases resolved."""
    bare = (content_type or "").split(";", 1)[0].strip().lower()
    return _ALIASES.get(bare, bare)


def check_format(data: bytes, content_type: str | None) -> str:
    """The upload's format; refuses what is not PNG/JPEG/TIFF/DICOM or not what it claims."""
    declared = media_type_of(content_type)
    if declared not in _UNSPECIFIC and declared not in MEDIA_TYPES:
        hint = (
            " (an iPhone photo: choose 'Most Compatible' in Settings > Camera > Formats)"
            if declared in ("image/heic", "image/heif")
            else ""
        )
        raise UnsupportedImage(
            f"{declared} is not accepted; send PNG, JPEG, TIFF or DICOM"
            f" ({', '.join(MEDIA_TYPES)}){hint}"
        )
    found = sniff(data)
    if found is None:
        raise UnsupportedImage("the file is not a PNG, JPEG, TIFF or DICOM (Part 10) file")
    if declared in MEDIA_TYPES and MEDIA_TYPES[declared] != found:
        raise UnsupportedImage(f"declared {declared} but the file is {found}")
    return found


def decode(data: bytes, content_type: str | None, *, max_pixels: int = MAX_PIXELS) -> DecodedImage:
    if not data:
        raise UploadError("the upload is empty")
    kind = check_format(data, content_type)
    if kind == "DICOM":
        return _decode_dicom(data, max_pixels)
    return _decode_picture(data, kind, max_pixels)


def _decode_dicom(data: bytes, max_pixels: int) -> DecodedImage:
    from pydicom.errors import InvalidDicomError

    from dicom_node.limits import DatasetTooLarge, max_inflated_bytes, read_dataset
    from dicom_node.pixels import PixelDataError, display_image
    from dicom_node.spacing import pixel_spacing

    try:
        ds = read_dataset(data, max_inflated_bytes=max_inflated_bytes(max_pixels))
        has_pixels = "PixelData" in ds
        rows, columns = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    except DatasetTooLarge as exc:
        raise ImageTooLarge(str(exc)) from exc
    except InvalidDicomError as exc:
        raise UploadError(f"the DICOM file cannot be read: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - pydicom parses lazily; any error is bad input
        raise UploadError(f"the DICOM file cannot be read: {type(exc).__name__}: {exc}") from exc
    if not has_pixels:
        raise UploadError("the DICOM file has no image (no Pixel Data)")
    if rows * columns > max_pixels:
        raise ImageTooLarge(f"{columns}x{rows} pixels is more than {max_pixels} pixels")
    try:
        display = display_image(ds, max_pixels=max_pixels)
    except PixelDataError as exc:
        raise UploadError(str(exc)) from exc
    spacing = pixel_spacing(ds)
    return DecodedImage(  # display_image has set the padding pixels to black
        pixels=display.pixels,
        format="DICOM",
        spacing_mm=(spacing.row_mm, spacing.column_mm) if spacing else None,
        spacing_source=spacing.source if spacing else None,
        padding=display.padding,
    )


def _decode_picture(data: bytes, kind: str, max_pixels: int) -> DecodedImage:
    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            if width * height > max_pixels:
                raise ImageTooLarge(f"{width}x{height} pixels is more than {max_pixels} pixels")
            frames = int(getattr(opened, "n_frames", 1))
            if frames > 1:
                raise UploadError(f"the {kind} has {frames} pages; send one image")
            image = ImageOps.exif_transpose(opened)
            pixels = _gray(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UploadError(f"the {kind} image cannot be decoded: {exc}") from exc
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(str(exc)) from exc
    return DecodedImage(pixels=pixels, format=kind, spacing_mm=None, spacing_source=None)


def _gray(image: Image.Image) -> np.ndarray:
    """Grayscale float32 in [0, 1]: 8-bit divided by 255, deeper images stretched min-max."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float32)
        low, high = float(values.min()), float(values.max())
        if high <= low:
            return np.zeros(values.shape, dtype=np.float32)
        return ((values - low) / (high - low)).astype(np.float32)
    if image.mode != "L":
        image = image.convert("L")
    return np.asarray(image, dtype=np.float32) / np.float32(255.0)


def segment_upload(
    data: bytes,
    content_type: str | None,
    segmenter: Segmenter,
    rules: LesionRules,
    *,
    pixel_spacing_mm: float | None = None,
    max_pixels: int = MAX_PIXELS,
) -> UploadResult:
    """Decode, check and segment one upload; raises :class:`UploadError` with the reason.

    ``pixel_spacing_mm`` (square pixels), when given, wins over the file's own.
    """
    start = time.perf_counter()
    image = decode(data, content_type, max_pixels=max_pixels)
    if pixel_spacing_mm is not None:
        if not 0 < pixel_spacing_mm < 100:
            raise UploadError(f"pixel_spacing_mm {pixel_spacing_mm} is not in (0, 100)")
        image = dataclasses.replace(
            image, spacing_mm=(pixel_spacing_mm, pixel_spacing_mm), spacing_source="parameter"
        )
    decoded = time.perf_counter()
    segmentation = segment_image(
        image.pixels, segmenter, rules, padding=image.padding, spacing_mm=image.spacing_mm
    )
    return UploadResult(
        image=image,
        segmentation=segmentation,
        seconds_decode=decoded - start,
        seconds_inference=time.perf_counter() - decoded,
    )


def overlay_png(result: UploadResult, *, max_size: int = DEFAULT_OVERLAY_SIZE) -> bytes:
    """The image in gray with the mask in red at alpha 0.4, a red contour and lesion numbers."""
    pixels = result.image.pixels
    rgb, _ = overlay_rgb(pixels, result.mask, max_size=max_size, alpha=ALPHA)
    rows, columns = rgb.shape[:2]
    canvas = Image.fromarray(rgb)
    draw = ImageDraw.Draw(canvas)
    size = max(12, round(min(rows, columns) / 30))
    font = ImageFont.load_default(size=size)
    stroke = max(1, size // 8)
    scale_r, scale_c = rows / pixels.shape[0], columns / pixels.shape[1]
    for lesion in result.lesions:
        x = max(0, min(columns - size, round(lesion.bbox.right * scale_c) + 2))
        y = max(0, round(lesion.bbox.top * scale_r) - size)
        draw.text(
            (x, y),
            str(lesion.number),
            fill=(255, 255, 0),
            font=font,
            stroke_width=stroke,
            stroke_fill=(0, 0, 0),
        )
    small = max(10, size * 2 // 3)
    draw.text(
        (4, rows - small - 6),
        WARNING,
        fill=(255, 255, 255),
        font=ImageFont.load_default(small),
        stroke_width=1,
        stroke_fill=(0, 0, 0),
    )
    return _png(canvas)


def mask_png(mask: np.ndarray) -> bytes:
    """The mask at the image's matrix, 0 outside and 255 inside (8-bit gray)."""
    return _png(Image.fromarray(np.where(mask, np.uint8(255), np.uint8(0))))


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False, compress_level=6)
    return out.getvalue()
