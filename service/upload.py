"""Segment one uploaded picture: the reference work's ``/predict``, with checks.

PNG, JPEG and TIFF are read with Pillow (EXIF orientation applied, so a phone
photo is upright); DICOM goes through the same display pipeline as the node
(:func:`dicom_node.pixels.display_image`). The declared content type must
agree with the file's signature. The image becomes display-ready grayscale in
[0, 1], then :meth:`Segmenter.predict`, the threshold, connected lesions with
their areas, and an overlay in red at alpha 0.4 with a red contour and the
lesion numbers, as in the Secondary Capture the node sends.

Nothing is stored: the upload lives in memory for the request only. Areas are
in mm² when the pixel spacing is known (DICOM Pixel Spacing or Imager Pixel
Spacing, or the ``pixel_spacing_mm`` the caller gives), otherwise in pixels.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError
from scipy import ndimage

from dicom_node.capture import overlay_rgb
from service.inference import Segmenter
from service.preprocess import threshold_mask

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
#: Without a pixel spacing, regions smaller than this fraction of the image are specks.
MIN_AREA_FRACTION: Final = 1e-4
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
    pixels: np.ndarray  # float32 [0, 1], rows x columns, bright = dense
    format: str  # PNG, JPEG, TIFF, DICOM
    spacing_mm: tuple[float, float] | None
    spacing_source: str | None


@dataclass(frozen=True)
class Lesion:
    number: int
    area_px: int
    area_mm2: float | None
    top: int
    left: int
    bottom: int
    right: int
    width_mm: float | None
    height_mm: float | None
    centroid_row: float
    centroid_col: float
    mean_probability: float
    max_probability: float


@dataclass(frozen=True)
class UploadResult:
    image: DecodedImage
    mask: np.ndarray
    lesions: list[Lesion]
    threshold: float
    max_probability: float
    seconds_decode: float
    seconds_inference: float


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
    pixels = display.pixels
    if display.padding is not None:
        pixels = np.where(display.padding, np.float32(0.0), pixels)
    spacing = pixel_spacing(ds)
    return DecodedImage(
        pixels=pixels,
        format="DICOM",
        spacing_mm=(spacing.row_mm, spacing.column_mm) if spacing else None,
        spacing_source=spacing.source if spacing else None,
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
    *,
    threshold: float,
    min_lesion_area_mm2: float,
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
        image = DecodedImage(
            pixels=image.pixels,
            format=image.format,
            spacing_mm=(pixel_spacing_mm, pixel_spacing_mm),
            spacing_source="parameter",
        )
    decoded = time.perf_counter()
    return segment(
        image,
        segmenter,
        threshold=threshold,
        min_lesion_area_mm2=min_lesion_area_mm2,
        seconds_decode=decoded - start,
    )


def segment(
    image: DecodedImage,
    segmenter: Segmenter,
    *,
    threshold: float,
    min_lesion_area_mm2: float,
    seconds_decode: float = 0.0,
) -> UploadResult:
    start = time.perf_counter()
    prediction = segmenter.predict(image.pixels)
    rows, columns = image.pixels.shape
    if image.spacing_mm is not None:
        area = image.spacing_mm[0] * image.spacing_mm[1]
        min_area_px = math.ceil(min_lesion_area_mm2 / area)
    else:
        min_area_px = math.ceil(rows * columns * MIN_AREA_FRACTION)
    mask = threshold_mask(prediction.probability, threshold, min_area_px=min_area_px)
    lesions = measure(mask, prediction.probability, image.spacing_mm)
    return UploadResult(
        image=image,
        mask=mask,
        lesions=lesions,
        threshold=threshold,
        max_probability=float(prediction.probability.max(initial=0.0)),
        seconds_decode=seconds_decode,
        seconds_inference=time.perf_counter() - start,
    )


def measure(
    mask: np.ndarray, probability: np.ndarray, spacing_mm: tuple[float, float] | None
) -> list[Lesion]:
    """One entry per connected region, largest first, numbered from 1."""
    labels, count = ndimage.label(mask)
    if count == 0:
        return []
    index = np.arange(1, count + 1)
    areas = ndimage.sum_labels(mask, labels, index)
    means = ndimage.mean(probability, labels, index)
    maxima = ndimage.maximum(probability, labels, index)
    centroids = ndimage.center_of_mass(mask, labels, index)
    boxes = ndimage.find_objects(labels)
    order = sorted(range(count), key=lambda i: -areas[i])
    lesions = []
    for number, i in enumerate(order, start=1):
        box = boxes[i]
        if box is None:  # find_objects gives a box for every label 1..count
            continue
        top, bottom = int(box[0].start), int(box[0].stop)
        left, right = int(box[1].start), int(box[1].stop)
        row_mm, col_mm = spacing_mm if spacing_mm else (None, None)
        lesions.append(
            Lesion(
                number=number,
                area_px=int(areas[i]),
                area_mm2=float(areas[i] * row_mm * col_mm) if row_mm and col_mm else None,
                top=top,
                left=left,
                bottom=bottom,
                right=right,
                width_mm=(right - left) * col_mm if col_mm else None,
                height_mm=(bottom - top) * row_mm if row_mm else None,
                centroid_row=float(centroids[i][0]),
                centroid_col=float(centroids[i][1]),
                mean_probability=float(means[i]),
                max_probability=float(maxima[i]),
            )
        )
    return lesions


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
        x = max(0, min(columns - size, round(lesion.right * scale_c) + 2))
        y = max(0, round(lesion.top * scale_r) - size)
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
