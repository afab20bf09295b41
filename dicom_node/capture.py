"""The overlay Secondary Capture: the mammogram with the mask burned in (PS3.3 A.8.1).

For viewers that cannot show a SEG, the node also sends an RGB Secondary
Capture: the display image in gray, the mask in red blended at alpha 0.4
(out = (1 - a) * gray + a * red, as cv2.addWeighted in the reference work),
a thin red contour, and burned-in text saying that this is AI output not for
diagnostic use, with the model name and version ("No mass found" when the
mask is empty).  Burned In Annotation is YES (PS3.3 C.7.6.1.1.? / C.8.6.2).

The image is downscaled so that its longer side is at most ``max_size``
(antialiased for the image, nearest for the mask); Pixel Spacing, when the
source states it, is rescaled to match (PS3.3 C.8.6.2 SC Image module).
The SC is a new series in the source's study, references the source image
(Source Image Sequence, Referenced Image Sequence; C.7.6.1) and carries the
source's laterality and a valid Patient Orientation.  Modality is OT, as
highdicom sets for SC: a mammography workstation must not hang it as a
mammogram.
"""

from __future__ import annotations

from typing import Final

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from scipy import ndimage

from dicom_node.provenance import (
    DerivedObjectError,
    Provenance,
    check_source,
    copy_patient_orientation,
    copy_patient_study,
    reference_dataset,
    source_laterality,
)

DEFAULT_SC_SERIES_DESCRIPTION: Final = "AI mass overlay (not for diagnostic use)"
DEFAULT_MAX_SIZE: Final = 2048
MIN_MAX_SIZE: Final = 64
DEFAULT_ALPHA: Final = 0.4
SC_INSTANCE_NUMBER: Final = 1
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
# PS3.3 Table CID 7202: "Source image for image processing operation".
_SOURCE_IMAGE_PURPOSE: Final = ("121322", "DCM", "Source image for image processing operation")


class CaptureError(DerivedObjectError):
    """An overlay Secondary Capture that cannot be built (the reason says why)."""


def build_overlay_capture(
    *,
    source: Dataset,
    image: np.ndarray,
    mask: np.ndarray,
    provenance: Provenance,
    series_number: int,
    series_description: str = DEFAULT_SC_SERIES_DESCRIPTION,
    max_size: int | None = DEFAULT_MAX_SIZE,
    alpha: float = DEFAULT_ALPHA,
) -> Dataset:
    """An RGB SC of ``image`` (float32 in [0, 1], from display_image) with ``mask`` in red.

    ``image`` and ``mask`` are at the source matrix.  ``max_size`` bounds the
    longer side (None keeps the full matrix); ``alpha`` is the red's weight.
    """
    check_source(source)
    _check_inputs(source, image, mask, series_number, series_description, max_size, alpha)
    rows, columns = image.shape
    out_rows, out_columns = _output_size(rows, columns, max_size)
    gray = _gray8(image, out_rows, out_columns)
    small_mask = _nearest(mask, out_rows, out_columns)
    rgb = _blend(gray, small_mask, alpha)
    laterality = source_laterality(source)
    _draw_text(rgb, provenance, found=bool(small_mask.any()), laterality=laterality)

    spacing = _scaled_spacing(source.get("PixelSpacing"), rows / out_rows, columns / out_columns)
    try:
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=reference_dataset(source),
            pixel_array=rgb,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=provenance.new_uid(),
            series_number=series_number,
            sop_instance_uid=provenance.new_uid(),
            instance_number=SC_INSTANCE_NUMBER,
            manufacturer=provenance.manufacturer,
            manufacturer_model_name=provenance.model_name,
            software_versions=provenance.software_version,
            device_serial_number=provenance.device_serial_number,
            institution_name=provenance.institution_name,
            series_description=series_description,
            pixel_spacing=spacing,  # type: ignore[arg-type]  # annotated tuple[int, int]
            laterality=laterality,
            patient_orientation=_PLACEHOLDER_ORIENTATION,
            transfer_syntax_uid=ExplicitVRLittleEndian,
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise CaptureError(f"cannot build the overlay capture from this source: {exc}") from exc
    copy_patient_study(source, sc)
    copy_patient_orientation(source, sc)
    sc.BurnedInAnnotation = "YES"
    sc.RecognizableVisualFeatures = "NO"
    sc.LossyImageCompression = "00"
    sc.DerivationDescription = (
        f"Mass segmentation by {provenance.model_name} {provenance.model_version} "
        f"overlaid in red (alpha {alpha:g}) on the display image; "
        f"{'downscaled' if (out_rows, out_columns) != (rows, columns) else 'full matrix'}"
    )
    sc.SourceImageSequence = [_image_reference(source, purpose=True)]
    sc.ReferencedImageSequence = [_image_reference(source, purpose=False)]
    return sc


def _check_inputs(
    source: Dataset,
    image: np.ndarray,
    mask: np.ndarray,
    series_number: int,
    series_description: str,
    max_size: int | None,
    alpha: float,
) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.float32 or image.ndim != 2:
        raise ValueError("image must be a 2-D float32 numpy array (from display_image)")
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
        raise ValueError("mask must be a bool numpy array")
    if mask.shape != image.shape:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {image.shape}")
    expected = (int(source.get("Rows", 0)), int(source.get("Columns", 0)))
    if image.shape != expected:
        raise ValueError(f"image shape {image.shape} does not match the source matrix {expected}")
    if isinstance(series_number, bool) or not isinstance(series_number, int):
        raise ValueError(f"series_number must be an int, got {type(series_number).__name__}")
    if not 1 <= series_number <= 2**31 - 1:
        raise ValueError(f"series_number must be in 1..2^31-1 (IS), got {series_number}")
    if not isinstance(series_description, str) or not series_description.strip():
        raise ValueError("series_description must be a non-empty string")
    if len(series_description) > 64:
        raise ValueError("series_description must be at most 64 characters (LO)")
    if max_size is not None and (isinstance(max_size, bool) or max_size < MIN_MAX_SIZE):
        raise ValueError(f"max_size must be None or >= {MIN_MAX_SIZE}, got {max_size}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")


def _output_size(rows: int, columns: int, max_size: int | None) -> tuple[int, int]:
    longer = max(rows, columns)
    if max_size is None or longer <= max_size:
        return rows, columns
    scale = max_size / longer
    return max(1, round(rows * scale)), max(1, round(columns * scale))


def _gray8(image: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """The display image as 8-bit gray, antialiased down to rows x columns."""
    scaled = np.clip(image, 0.0, 1.0)
    scaled *= np.float32(255.0)
    scaled += np.float32(0.5)
    gray = scaled.astype(np.uint8)
    if gray.shape == (rows, columns):
        return gray
    resized = Image.fromarray(gray).resize(
        (columns, rows), resample=Image.Resampling.LANCZOS, reducing_gap=3.0
    )
    return np.asarray(resized, dtype=np.uint8)


def _nearest(mask: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """Nearest-neighbour resampling of the mask (pixel centres)."""
    if mask.shape == (rows, columns):
        return mask
    row_index = ((np.arange(rows) + 0.5) * (mask.shape[0] / rows)).astype(np.intp)
    column_index = ((np.arange(columns) + 0.5) * (mask.shape[1] / columns)).astype(np.intp)
    np.minimum(row_index, mask.shape[0] - 1, out=row_index)
    np.minimum(column_index, mask.shape[1] - 1, out=column_index)
    return mask[np.ix_(row_index, column_index)]


def _blend(gray: np.ndarray, mask: np.ndarray, alpha: float) -> np.ndarray:
    """Gray to RGB, red blended inside the mask, red contour on its edge."""
    rgb = np.repeat(gray[:, :, np.newaxis], 3, axis=2)
    if not mask.any():
        return rgb
    kept = gray[mask].astype(np.float32) * np.float32(1.0 - alpha)
    for channel, red in enumerate(OVERLAY_RED):
        rgb[mask, channel] = np.rint(kept + np.float32(alpha * red)).astype(np.uint8)
    width = max(1, round(max(mask.shape) * CONTOUR_FRACTION))
    interior = ndimage.binary_erosion(mask, iterations=width, border_value=0)
    rgb[mask & ~interior] = OVERLAY_RED
    return rgb


def _draw_text(
    rgb: np.ndarray, provenance: Provenance, *, found: bool, laterality: str | None
) -> None:
    """Burn the warning, the model and, if empty, "No mass found" into the top.

    The text goes on the side away from the chest wall (over air, IHE
    Mammography Image orientation): right for a left breast, left otherwise.
    """
    rows, columns = rgb.shape[:2]
    size = max(MIN_FONT_PX, round(min(rows, columns) * FONT_FRACTION))
    font = ImageFont.load_default(size=size)
    lines = [WARNING_TEXT, f"{provenance.model_name} {provenance.model_version}"]
    if not found:
        lines.append(NO_MASS_TEXT)
    canvas = Image.fromarray(rgb)
    draw = ImageDraw.Draw(canvas)
    stroke = max(1, size // 8)
    margin = size // 2
    y = margin
    for line in lines:
        left, top, right, bottom = draw.textbbox((0, 0), line, font=font, stroke_width=stroke)
        x = columns - margin - (right - left) if laterality == "L" else margin
        draw.text(
            (max(0, x), y),
            line,
            fill=TEXT_FILL,
            font=font,
            stroke_width=stroke,
            stroke_fill=TEXT_STROKE,
        )
        y += (bottom - top) + margin // 2
    rgb[...] = np.asarray(canvas)


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
