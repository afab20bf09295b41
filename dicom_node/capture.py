"""The overlay Secondary Capture: the mammogram with the mask burned in (PS3.3 A.8.1).

For viewers that cannot show a SEG, the node also sends an RGB Secondary
Capture: the display image in gray, the mask in red blended at alpha 0.4
(out = (1 - a) * gray + a * red, as cv2.addWeighted in the reference work),
a thin red contour, and burned-in text saying that this is AI output not for
diagnostic use, with the model name and version ("No mass found" when the
mask is empty).  Burned In Annotation is YES (PS3.3 C.7.6.1, General Image).

The image is downscaled so that its longer side is at most ``max_size``
(antialiased for the image: a box filter by the whole factor, then Lanczos;
nearest for the mask), in float32 before it is made 8-bit, so that nothing
is made at the full matrix but the mask's sampling; Pixel Spacing, when the
source states it, is rescaled to match (PS3.3 C.8.6.2 SC Image module).
The SC is a new series in the source's study, references the source image
(Source Image Sequence, Referenced Image Sequence; C.7.6.1) and carries the
source's laterality and a valid Patient Orientation.  Modality is OT, as
highdicom sets for SC: a mammography workstation must not hang it as a
mammogram.

Compression (PS3.5 8.2, A.4) is chosen by the site; measured on a full-size
synthetic image at ``max_size`` 2048 (2048 x 1664 RGB, 10.2 MB raw) and on a
CBIS-DDSM film (2048 x 1323, 8.1 MB raw):

- ``deflate`` (the node's default): Deflated Explicit VR Little Endian
  (1.2.840.10008.1.2.1.99, PS3.5 A.5), lossless, 1.7 / 0.8 MB: the three
  equal gray channels deflate well.  The pixel data stay native, so a
  destination that refuses deflate gets the same instance re-encoded as
  Explicit VR Little Endian at association time, nothing decompressed and
  the SOP Instance UID unchanged.  dicom3tools cannot read it (tests
  validate an inflated copy).
- ``jpeg``: JPEG Baseline (1.2.840.10008.1.2.4.50), quality 95, chroma
  subsampled horizontally (Photometric Interpretation YBR_FULL_422, PS3.5
  8.2.1; dciodvfy refuses YBR_FULL in an SC), 0.5 / 0.2 MB; lossy, so
  Lossy Image Compression is 01 with its ratio and method (PS3.3
  C.7.6.1.1.5).  For destinations that accept JPEG Baseline.
- ``rle``: RLE Lossless (1.2.840.10008.1.2.5), pixel-exact, 6.9 / 3.2 MB.
- ``none``: Explicit VR Little Endian, pixel-exact, 10.2 / 8.1 MB.

A source that was itself lossy-compressed makes the SC lossy too (Lossy
Image Compression 01 with the source's methods, PS3.3 C.7.6.1.1.5).
Contributing Equipment names the model (PS3.3 C.12.1.1.5, IHE AI Results);
series and equipment are those of every derived object
(:func:`dicom_node.provenance.derived_object_kwargs`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from enum import Enum
from typing import Final

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)

from dicom_node.provenance import (
    DerivedObjectError,
    Provenance,
    check_series,
    check_source,
    copy_patient_orientation,
    copy_patient_study,
    derived_object_kwargs,
    highdicom_errors,
    reference_dataset,
    source_laterality,
)

DEFAULT_SC_SERIES_DESCRIPTION: Final = "AI mass overlay (not for diagnostic use)"
DEFAULT_MAX_SIZE: Final = 2048
MIN_MAX_SIZE: Final = 64
DEFAULT_ALPHA: Final = 0.4
WARNING_TEXT: Final = "AI segmentation - not for diagnostic use"
NO_MASS_TEXT: Final = "No mass found"
OVERLAY_RED: Final = (255, 0, 0)
TEXT_FILL: Final = (255, 255, 255)
TEXT_STROKE: Final = (0, 0, 0)
#: Font height as a fraction of the image's shorter side, and its floor in pixels.
FONT_FRACTION: Final = 1 / 40
MIN_FONT_PX: Final = 12
#: Contour width as a fraction of the longer side (at least one pixel).
CONTOUR_FRACTION: Final = 1 / 1024
# highdicom insists on a biped orientation value it knows; the source's value
# (e.g. A\FR, which it refuses) replaces this placeholder afterwards.
_PLACEHOLDER_ORIENTATION: Final = ("A", "F")
#: JPEG Baseline quality (Pillow/libjpeg scale 1-95): text and contour stay crisp.
DEFAULT_JPEG_QUALITY: Final = 95
MIN_JPEG_QUALITY: Final = 50
MAX_JPEG_QUALITY: Final = 95
#: Defined Term of Lossy Image Compression Method for JPEG (PS3.3 C.7.6.1.1.5.1).
JPEG_LOSSY_METHOD: Final = "ISO_10918_1"
# Pillow's subsampling argument: 0 is 4:4:4, 1 is 4:2:2, 2 is 4:2:0.
_CHROMA_422: Final = 1
# PS3.3 Table CID 7202: "Source image for image processing operation".
_SOURCE_IMAGE_PURPOSE: Final = ("121322", "DCM", "Source image for image processing operation")


class CaptureError(DerivedObjectError):
    """An overlay Secondary Capture that cannot be built (the reason says why)."""


class CaptureCompression(Enum):
    """How the SC's pixel data are encoded (PS3.5 A.4); see the module docstring."""

    NONE = "none"
    DEFLATE = "deflate"
    RLE = "rle"
    JPEG = "jpeg"


@dataclass(frozen=True)
class OverlayGray:
    """The display image as the SC shows it: 8-bit gray at the output size.

    Made by :func:`overlay_gray` from the full-size display image, so that the
    caller can let that image go before the mask is known.
    """

    pixels: np.ndarray  # uint8, output rows x columns
    source_shape: tuple[int, int]  # the source matrix it was made from
    max_size: int | None


def overlay_gray(image: np.ndarray, max_size: int | None) -> OverlayGray:
    """``image`` (float32 in [0, 1], the source matrix) as the SC's 8-bit gray picture."""
    if not isinstance(image, np.ndarray) or image.dtype != np.float32 or image.ndim != 2:
        raise ValueError("image must be a 2-D float32 numpy array (from display_image)")
    _check_max_size(max_size)
    rows, columns = image.shape
    out_rows, out_columns = _output_size(rows, columns, max_size)
    return OverlayGray(_gray8(image, out_rows, out_columns), (rows, columns), max_size)


def build_overlay_capture(
    *,
    source: Dataset,
    image: np.ndarray | OverlayGray,
    mask: np.ndarray,
    provenance: Provenance,
    series_number: int,
    series_description: str = DEFAULT_SC_SERIES_DESCRIPTION,
    max_size: int | None = DEFAULT_MAX_SIZE,
    alpha: float = DEFAULT_ALPHA,
    compression: CaptureCompression | str = CaptureCompression.NONE,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
) -> Dataset:
    """An RGB SC of ``image`` (float32 in [0, 1], from display_image) with ``mask`` in red.

    ``image`` and ``mask`` are at the source matrix; ``image`` may instead be
    its :func:`overlay_gray` (made with the same ``max_size``).  ``max_size``
    bounds the longer side (None keeps the full matrix); ``alpha`` is the
    red's weight; ``compression`` (enum or its value) picks the transfer
    syntax and ``jpeg_quality`` the JPEG quality.
    """
    check_source(source)
    _check_inputs(source, image, mask, series_number, series_description, max_size, alpha)
    compression = _check_compression(compression, jpeg_quality)
    rows, columns = mask.shape
    rgb, small_mask = overlay_rgb(image, mask, max_size=max_size, alpha=alpha)
    out_rows, out_columns = small_mask.shape
    laterality = source_laterality(source)
    _draw_text(rgb, provenance, found=bool(small_mask.any()), laterality=laterality)

    spacing = _scaled_spacing(source.get("PixelSpacing"), rows / out_rows, columns / out_columns)
    with highdicom_errors(CaptureError, "the overlay capture from this source"):
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=reference_dataset(source),
            pixel_array=rgb,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            pixel_spacing=spacing,  # type: ignore[arg-type]  # annotated tuple[int, int]
            laterality=laterality,
            patient_orientation=_PLACEHOLDER_ORIENTATION,
            **derived_object_kwargs(
                "sc",
                provenance,
                source,
                series_number=series_number,
                series_description=series_description,
            ),
        )
    copy_patient_study(source, sc)
    copy_patient_orientation(source, sc)
    sc.BurnedInAnnotation = "YES"
    sc.RecognizableVisualFeatures = "NO"
    _inherit_lossy_compression(source, sc)
    sc.DerivationDescription = (
        f"Mass segmentation by {provenance.model_name} {provenance.model_version} "
        f"overlaid in red (alpha {alpha:g}) on the display image; "
        f"{'downscaled' if (out_rows, out_columns) != (rows, columns) else 'full matrix'}"
    )
    sc.SourceImageSequence = [_image_reference(source, purpose=True)]
    sc.ReferencedImageSequence = [_image_reference(source, purpose=False)]
    if compression is CaptureCompression.DEFLATE:
        sc.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian  # deflated on writing
    elif compression is CaptureCompression.RLE:
        _compress_rle(sc)
    elif compression is CaptureCompression.JPEG:
        _compress_jpeg(sc, rgb, jpeg_quality)
    return sc


def _check_compression(compression: CaptureCompression | str, quality: int) -> CaptureCompression:
    try:
        chosen = CaptureCompression(compression)
    except ValueError as exc:
        values = [c.value for c in CaptureCompression]
        raise ValueError(f"compression must be one of {values}, got {compression!r}") from exc
    if isinstance(quality, bool) or not isinstance(quality, int):
        raise ValueError(f"jpeg_quality must be an int, got {type(quality).__name__}")
    if not MIN_JPEG_QUALITY <= quality <= MAX_JPEG_QUALITY:
        raise ValueError(
            f"jpeg_quality must be in {MIN_JPEG_QUALITY}..{MAX_JPEG_QUALITY}, got {quality}"
        )
    return chosen


def _inherit_lossy_compression(source: Dataset, sc: Dataset) -> None:
    """Lossy once, lossy in every derived image (PS3.3 C.7.6.1.1.5)."""
    if str(source.get("LossyImageCompression", "")).strip() != "01":
        sc.LossyImageCompression = "00"
        return
    sc.LossyImageCompression = "01"
    for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
        if source.get(keyword):
            sc.add_new(source[keyword].tag, source[keyword].VR, source[keyword].value)


def _compress_rle(sc: Dataset) -> None:
    """RLE Lossless in place (PS3.5 G), one segment per colour sample."""
    try:
        sc.compress(RLELossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    except (RuntimeError, ValueError) as exc:
        raise CaptureError(f"cannot RLE-compress the overlay capture: {exc}") from exc


def _compress_jpeg(sc: Dataset, rgb: np.ndarray, quality: int) -> None:
    """JPEG Baseline 8-bit in place, 4:2:2, stored as YBR_FULL_422 (PS3.5 8.2.1, A.4.1).

    libjpeg converts RGB to YCbCr itself (JFIF) and halves the chroma
    horizontally: exactly what YBR_FULL_422 declares (PS3.3 C.7.6.3.1.2).
    """
    buffer = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(
        buffer, format="JPEG", quality=quality, subsampling=_CHROMA_422, optimize=False
    )
    frame = buffer.getvalue()
    ratio = rgb.nbytes / len(frame)
    sc.PixelData = encapsulate([frame])
    sc["PixelData"].VR = "OB"
    sc["PixelData"].is_undefined_length = True
    sc.PhotometricInterpretation = "YBR_FULL_422"
    sc.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    methods = list(_multi(sc.get("LossyImageCompressionMethod")))
    ratios = list(_multi(sc.get("LossyImageCompressionRatio")))
    sc.LossyImageCompression = "01"
    sc.LossyImageCompressionMethod = [*methods, JPEG_LOSSY_METHOD]
    sc.LossyImageCompressionRatio = [*ratios, f"{ratio:.2f}"]


def _multi(value: object) -> tuple[object, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        return (value,)
    return tuple(value)  # type: ignore[arg-type]


def _check_inputs(
    source: Dataset,
    image: np.ndarray | OverlayGray,
    mask: np.ndarray,
    series_number: int,
    series_description: str,
    max_size: int | None,
    alpha: float,
) -> None:
    if isinstance(image, OverlayGray):
        shape = image.source_shape
        if image.max_size != max_size:
            raise ValueError(f"the gray image was made for max_size {image.max_size}")
    elif not isinstance(image, np.ndarray) or image.dtype != np.float32 or image.ndim != 2:
        raise ValueError("image must be a 2-D float32 numpy array (from display_image)")
    else:
        shape = image.shape
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
        raise ValueError("mask must be a bool numpy array")
    if mask.shape != shape:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {shape}")
    expected = (int(source.get("Rows", 0)), int(source.get("Columns", 0)))
    if shape != expected:
        raise ValueError(f"image shape {shape} does not match the source matrix {expected}")
    check_series(series_number, series_description)
    _check_max_size(max_size)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")


def _check_max_size(max_size: int | None) -> None:
    if max_size is not None and (isinstance(max_size, bool) or max_size < MIN_MAX_SIZE):
        raise ValueError(f"max_size must be None or >= {MIN_MAX_SIZE}, got {max_size}")


def overlay_rgb(
    image: np.ndarray | OverlayGray,
    mask: np.ndarray,
    *,
    max_size: int | None,
    alpha: float = DEFAULT_ALPHA,
) -> tuple[np.ndarray, np.ndarray]:
    """The display image in gray with the mask in red (and a red contour), downscaled.

    ``image`` is the display image at the source matrix or its :func:`overlay_gray`.
    Returns the RGB uint8 picture and the mask at its size. Shared by the
    Secondary Capture and the upload API, so both look the same.
    """
    gray = image if isinstance(image, OverlayGray) else overlay_gray(image, max_size)
    out_rows, out_columns = gray.pixels.shape
    small_mask = _nearest(mask, out_rows, out_columns)
    return _blend(gray.pixels, small_mask, alpha), small_mask


def _output_size(rows: int, columns: int, max_size: int | None) -> tuple[int, int]:
    longer = max(rows, columns)
    if max_size is None or longer <= max_size:
        return rows, columns
    scale = max_size / longer
    return max(1, round(rows * scale)), max(1, round(columns * scale))


#: The SC's gray image is reduced by the whole factor first (a box filter: 2 x 2 for a
#: 4096-row image at 2048), then Lanczos does what is left: five times faster than
#: Lanczos from the full matrix. A viewing copy, not for diagnosis.
GRAY_REDUCING_GAP: Final = 1.0
#: Source rows reduced at a time (Pillow copies what it is given: a strip, not the image).
GRAY_STRIP_ROWS: Final = 512


def _gray8(image: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """The display image as 8-bit gray, antialiased down to rows x columns.

    Downscaled in float32 first, a strip at a time, and quantised at the
    output size: no full-size copy of the image is made.
    """
    if image.shape != (rows, columns):
        row_factor = max(1, int(image.shape[0] / rows / GRAY_REDUCING_GAP))
        column_factor = max(1, int(image.shape[1] / columns / GRAY_REDUCING_GAP))
        if row_factor > 1 or column_factor > 1:
            image = _reduced(image, row_factor, column_factor)
        if image.shape != (rows, columns):
            small = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F")
            image = np.asarray(
                small.resize((columns, rows), resample=Image.Resampling.LANCZOS), dtype=np.float32
            )
    scaled = np.clip(image, 0.0, 1.0)
    scaled *= np.float32(255.0)
    scaled += np.float32(0.5)
    return scaled.astype(np.uint8)


def _reduced(image: np.ndarray, row_factor: int, column_factor: int) -> np.ndarray:
    """Pillow's ``reduce`` (block means) of a float32 image, strip by strip (the same values)."""
    step = row_factor * max(1, GRAY_STRIP_ROWS // row_factor)
    strips = []
    for start in range(0, image.shape[0], step):
        strip = np.ascontiguousarray(image[start : start + step], dtype=np.float32)
        reduced = Image.fromarray(strip, mode="F").reduce((column_factor, row_factor))
        strips.append(np.asarray(reduced, dtype=np.float32))
    return np.concatenate(strips)


def _nearest(mask: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """Nearest-neighbour resampling of the mask (pixel centres)."""
    if mask.shape == (rows, columns):
        return mask
    row_index = _nearest_index(mask.shape[0], rows)
    column_index = _nearest_index(mask.shape[1], columns)
    return np.ascontiguousarray(mask[row_index][:, column_index])


def _nearest_index(size: int, out: int) -> np.ndarray | slice:
    """The source index of each output pixel's centre; a slice when the factor is whole."""
    if size % out == 0:  # (i + 0.5) * k rounds down to i * k + k // 2: a strided view
        factor = size // out
        return slice(factor // 2, size, factor)
    index = ((np.arange(out) + 0.5) * (size / out)).astype(np.intp)
    return np.minimum(index, size - 1, out=index)


def _blend(gray: np.ndarray, mask: np.ndarray, alpha: float) -> np.ndarray:
    """Gray to RGB, red blended inside the mask, red contour on its edge."""
    rgb = np.repeat(gray[:, :, np.newaxis], 3, axis=2)
    if not mask.any():
        return rgb
    # Inside the mask's box only; the blend of each gray level from a 256-entry table.
    rows = np.flatnonzero(mask.any(axis=1))
    columns = np.flatnonzero(mask.any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1))
    # Entries 0-255: gray as it is; 256-511: gray blended with red (np.take is the fast gather).
    levels = np.arange(256, dtype=np.float32)
    kept = levels * np.float32(1.0 - alpha)
    red = [np.rint(kept + np.float32(alpha * value)).astype(np.uint8) for value in OVERLAY_RED]
    plain = np.repeat(levels.astype(np.uint8)[:, np.newaxis], 3, axis=1)
    table = np.concatenate([plain, np.stack(red, axis=1)])
    part, inside = rgb[box], mask[box]
    index = inside.view(np.uint8).astype(np.uint16) << 8
    index |= gray[box]
    part[...] = np.take(table, index, axis=0)
    width = max(1, round(max(mask.shape) * CONTOUR_FRACTION))
    edge = inside & ~_eroded(inside, width)
    np.copyto(part, np.asarray(OVERLAY_RED, dtype=np.uint8), where=edge[:, :, np.newaxis])
    return rgb


def _eroded(mask: np.ndarray, iterations: int) -> np.ndarray:
    """``ndimage.binary_erosion(mask, iterations=iterations, border_value=0)``, by shifts.

    The default (4-neighbour) structure: a pixel stays if it and its four
    neighbours are in the mask, the outside of the array counting as not.
    """
    out = mask
    for _ in range(iterations):
        step = out.copy()
        step[1:] &= out[:-1]
        step[:-1] &= out[1:]
        step[:, 1:] &= out[:, :-1]
        step[:, :-1] &= out[:, 1:]
        step[0] = step[-1] = False
        step[:, 0] = step[:, -1] = False
        out = step
    return out


def _draw_text(
    rgb: np.ndarray, provenance: Provenance, *, found: bool, laterality: str | None
) -> None:
    """Burn the warning, the model and, if empty, "No mass found" into the top.

    The text goes on the side away from the chest wall (over air, IHE
    Mammography Image orientation): right for a left breast, left otherwise.
    Only the band of rows the text covers goes through Pillow.
    """
    rows, columns = rgb.shape[:2]
    size = max(MIN_FONT_PX, round(min(rows, columns) * FONT_FRACTION))
    font = ImageFont.load_default(size=size)
    lines = [WARNING_TEXT, f"{provenance.model_name} {provenance.model_version}"]
    if not found:
        lines.append(NO_MASS_TEXT)
    stroke = max(1, size // 8)
    margin = size // 2
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    y = margin
    band = 0
    placed = []
    for line in lines:
        left, top, right, bottom = measure.textbbox((0, 0), line, font=font, stroke_width=stroke)
        x = columns - margin - (right - left) if laterality == "L" else margin
        placed.append((max(0, x), y, line))
        band = y + bottom + 1
        y += (bottom - top) + margin // 2
    band = min(rows, band)
    canvas = Image.fromarray(np.ascontiguousarray(rgb[:band]))
    draw = ImageDraw.Draw(canvas)
    for x, y, line in placed:
        draw.text(
            (x, y), line, fill=TEXT_FILL, font=font, stroke_width=stroke, stroke_fill=TEXT_STROKE
        )
    rgb[:band] = np.asarray(canvas)


def _scaled_spacing(
    spacing: object, row_factor: float, column_factor: float
) -> tuple[float, float] | None:
    """Pixel Spacing (row, column) of the downscaled image, if the source states it."""
    if spacing is None or isinstance(spacing, str):
        return None
    try:
        row_spacing, column_spacing = (float(v) for v in spacing)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    if not (row_spacing > 0 and column_spacing > 0):
        return None
    # highdicom writes them as DS with auto-formatting (16 characters, PS3.5 6.2).
    return row_spacing * row_factor, column_spacing * column_factor


def _image_reference(source: Dataset, *, purpose: bool) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if purpose:
        value, scheme, meaning = _SOURCE_IMAGE_PURPOSE
        item.PurposeOfReferenceCodeSequence = [hd.sr.CodedConcept(value, scheme, meaning)]
    return item
