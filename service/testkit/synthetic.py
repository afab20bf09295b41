"""Synthetic digital mammograms: the one generator of the tests and ``mammoseg bench``.

The images imitate a Digital Mammography X-Ray Image (PS3.3 A.26/A.27) closely
enough that ``dciodvfy`` accepts them: a half-elliptic breast against the chest
wall, smooth tissue texture, and bright round masses with soft edges at known
positions, so that a test knows the ground truth (:func:`mass_mask`).

Orientation follows the IHE Mammography Image profile (IHE RAD TF-2 4.16.4,
PS3.3 C.8.11.7 Patient Orientation for MG): a left breast is shown with the
chest wall at the left edge of the image (column 0) and the nipple pointing
right, a right breast with the chest wall at the right edge, so that a left and
a right image hang back to back.  CC views put the lateral side at the top;
PatientOrientation is therefore ``A\\R`` (L CC), ``P\\L`` (R CC), ``A\\FR``
(L MLO) and ``P\\FL`` (R MLO).

Pixel content is seeded by ``seed``.  UIDs are derived from the seed, the
parameters and a per-process call counter: two calls never share a UID, and a
test session run twice in the same order makes the same UIDs.

For the bench, :func:`write_mammograms` writes many files of one
:class:`ImageSpec` (full-size, 14 bits stored by default) with one or two
seeded masses each: a few pixel contents are cycled and only the UIDs change,
so writing 100 full-size files costs seconds, not minutes.

No patient data.  Part of :mod:`service.testkit`: the tests and the bench import
it, production code never does.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    JPEG2000,
    PYDICOM_ROOT_UID,
    UID,
    BreastTomosynthesisImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from scipy import ndimage

from dicom_node.provenance import Provenance

FULL_SIZE_ROWS = 4096
FULL_SIZE_COLUMNS = 3328
FULL_SIZE_BITS_STORED = 14

#: Native transfer syntaxes: the dataset is written as it is.
NATIVE_TRANSFER_SYNTAXES = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
)
#: Compressed with pydicom's encoders (pylibjpeg-rle, pyjpegls, pylibjpeg-openjpeg).
PYDICOM_TRANSFER_SYNTAXES = (
    RLELossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
)
#: pydicom 3 has no JPEG lossless (Process 14) encoder: DCMTK's dcmcjpeg does it.
DCMTK_TRANSFER_SYNTAXES = (JPEGLosslessSV1, JPEGLossless)
LOSSY_TRANSFER_SYNTAXES = (JPEGLSNearLossless, JPEG2000)
#: Maximum absolute error of one stored value for JPEG-LS near-lossless.
JPEG_LS_NEAR_LOSSLESS_ERROR = 2
#: Compression ratio asked of the lossy JPEG 2000 encoder.
JPEG_2000_LOSSY_RATIO = 5.0

_DCMTK_OPTIONS = {
    JPEGLosslessSV1: ["+e1"],
    JPEGLossless: ["+el"],
}

_VIEW_CODES = {
    "CC": ("399162004", "cranio-caudal"),
    "MLO": ("399368009", "medio-lateral oblique"),
    "ML": ("399260004", "medio-lateral"),
    "LM": ("399352003", "latero-medial"),
}
_PATIENT_ORIENTATION = {
    ("L", "CC"): ["A", "R"],
    ("R", "CC"): ["P", "L"],
    ("L", "MLO"): ["A", "FR"],
    ("R", "MLO"): ["P", "FL"],
    ("L", "ML"): ["A", "F"],
    ("R", "ML"): ["P", "F"],
    ("L", "LM"): ["P", "F"],
    ("R", "LM"): ["A", "F"],
}
_PRESENTATION_INTENT: dict[str, str] = {
    DigitalMammographyXRayImageStorageForPresentation: "FOR PRESENTATION",
    DigitalMammographyXRayImageStorageForProcessing: "FOR PROCESSING",
}

# Densities on a 0 (air) .. 1 (densest) scale before mapping to stored values.
_TISSUE_DENSITY = 0.45
_TISSUE_TEXTURE = 0.12
_MASS_DENSITY = 0.35
_FINE_NOISE = 0.01
_TEXTURE_CELLS = 12
_FINE_TEXTURE = 0.5
_AIR_DENSITY = 0.02

_call_counter = itertools.count()


@dataclass(frozen=True)
class Mass:
    """A round mass: centre (row, col) and radius, in pixels of the image."""

    row: int
    col: int
    radius: int

    def __post_init__(self) -> None:
        if self.radius < 1:
            raise ValueError(f"Mass radius must be >= 1 pixel, got {self.radius}")


def default_mass(rows: int, columns: int, laterality: str) -> Mass:
    """The one mass placed when ``masses`` is None: mid-height, inside the breast."""
    col = round(columns * 0.4) if laterality == "L" else round(columns * 0.6)
    return Mass(row=rows // 2, col=col, radius=max(4, min(rows, columns) // 16))


def mass_mask(rows: int, columns: int, masses: Sequence[Mass]) -> np.ndarray:
    """Ground truth: True inside each mass (distance to the centre <= radius)."""
    mask = np.zeros((rows, columns), dtype=bool)
    for mass in masses:
        r0, r1 = max(0, mass.row - mass.radius), min(rows, mass.row + mass.radius + 1)
        c0, c1 = max(0, mass.col - mass.radius), min(columns, mass.col + mass.radius + 1)
        if r0 >= r1 or c0 >= c1:
            continue
        rr = np.arange(r0, r1)[:, None] - mass.row
        cc = np.arange(c0, c1)[None, :] - mass.col
        mask[r0:r1, c0:c1] |= rr * rr + cc * cc <= mass.radius * mass.radius
    return mask


def breast_region(rows: int, columns: int, laterality: str) -> np.ndarray:
    """True inside the half-ellipse of the breast (chest wall side by laterality)."""
    chest_col = 0.0 if laterality == "L" else columns - 1.0
    rr = ((np.arange(rows, dtype=np.float32) - (rows - 1) / 2) / (rows * 0.46)) ** 2
    cc = ((np.arange(columns, dtype=np.float32) - chest_col) / (columns * 0.85)) ** 2
    return (rr[:, None] + cc[None, :]) <= 1.0


def _smooth_noise(rows: int, columns: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    """Noise smooth over 1/``cells`` of the shorter side: cubic up x4, then linear to size."""
    step = max(1, min(rows, columns) // cells)
    coarse_shape = (max(4, -(-rows // step)), max(4, -(-columns // step)))
    coarse = rng.standard_normal(coarse_shape).astype(np.float32)
    medium = ndimage.zoom(coarse, 4, order=3, mode="mirror")
    noise = ndimage.zoom(
        medium, (rows / medium.shape[0], columns / medium.shape[1]), order=1, mode="nearest"
    )[:rows, :columns]
    return np.pad(noise, ((0, rows - noise.shape[0]), (0, columns - noise.shape[1])), "edge")


def _density(
    rows: int, columns: int, laterality: str, masses: Sequence[Mass], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Density map in [0, 1] (float32) and the breast region."""
    region = breast_region(rows, columns, laterality)
    # Two octaves, the same look at every matrix size: lobules and finer glandular detail.
    texture = _smooth_noise(rows, columns, _TEXTURE_CELLS, rng)
    texture += _FINE_TEXTURE * _smooth_noise(rows, columns, 4 * _TEXTURE_CELLS, rng)
    density = np.full((rows, columns), _AIR_DENSITY, dtype=np.float32)
    tissue = _TISSUE_DENSITY + _TISSUE_TEXTURE * np.tanh(texture[region])
    density[region] = tissue
    for mass in masses:
        edge = max(1.0, mass.radius * 0.15)
        reach = int(mass.radius + 3 * edge) + 1
        r0, r1 = max(0, mass.row - reach), min(rows, mass.row + reach + 1)
        c0, c1 = max(0, mass.col - reach), min(columns, mass.col + reach + 1)
        if r0 >= r1 or c0 >= c1:
            continue
        rr = (np.arange(r0, r1, dtype=np.float32)[:, None] - mass.row) ** 2
        cc = (np.arange(c0, c1, dtype=np.float32)[None, :] - mass.col) ** 2
        distance = np.sqrt(rr + cc)
        # Soft edge: 1 well inside, 0.5 at the radius, 0 a few edge widths out.
        profile = 1.0 / (1.0 + np.exp((distance - mass.radius) / edge))
        density[r0:r1, c0:c1] += _MASS_DENSITY * profile
    density += _FINE_NOISE * rng.standard_normal((rows, columns), dtype=np.float32)
    np.clip(density, 0.0, 1.0, out=density)
    return density, region


def _next_uids(seed: int, parameters: tuple[object, ...]) -> tuple[UID, UID, UID, UID]:
    call = next(_call_counter)
    entropy = [str(seed), repr(parameters), str(call)]
    return tuple(  # type: ignore[return-value]
        generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=[*entropy, kind])
        for kind in ("study", "series", "instance", "frame-of-reference")
    )


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def synthetic_mammogram(
    *,
    rows: int = 512,
    columns: int = 416,
    bits_stored: int = 12,
    photometric: str = "MONOCHROME2",
    laterality: str = "L",
    view: str = "CC",
    masses: Sequence[Mass] | None = None,
    seed: int = 0,
    transfer_syntax: str = ExplicitVRLittleEndian,
    sop_class: str = DigitalMammographyXRayImageStorageForPresentation,
    pixel_spacing_mm: float | tuple[float, float] | None = 0.1,
    voi_lut_sequence: bool = False,
    pixel_padding_value: int | None = None,
    patient_name: str = "Synthetic^Patient",
    patient_id: str = "SYN0001",
    birth_date: str = "19600101",
    study_uid: str | None = None,
) -> Dataset:
    """A synthetic MG image as a dataset with file meta, ready to write.

    ``masses=None`` places :func:`default_mass`; ``masses=()`` makes an image
    without a mass.  ``pixel_spacing_mm`` is one value or (row, column) for
    both Pixel Spacing and Imager Pixel Spacing; None leaves Imager Pixel
    Spacing 0.1 only.  ``pixel_padding_value`` stores that value outside the
    breast and sets PixelPaddingValue (PS3.3 C.7.5.1.1.2).  JPEG lossless
    (1.2.840.10008.1.2.4.70 / .57) has no pydicom encoder: write the
    uncompressed dataset and use :func:`encode_with_dcmtk` (or
    :func:`synthetic_file`).
    """
    if laterality not in ("L", "R"):
        raise ValueError(f"laterality must be 'L' or 'R', got {laterality!r}")
    if view not in _VIEW_CODES:
        raise ValueError(f"view must be one of {sorted(_VIEW_CODES)}, got {view!r}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    if not 8 <= bits_stored <= 16:
        raise ValueError(f"bits_stored must be in 8..16, got {bits_stored}")
    if rows < 8 or columns < 8:
        raise ValueError(f"image must be at least 8x8, got {rows}x{columns}")
    if sop_class not in _PRESENTATION_INTENT:
        raise ValueError(f"sop_class must be an MG image storage UID, got {sop_class}")
    transfer_syntax = UID(transfer_syntax)
    if transfer_syntax in DCMTK_TRANSFER_SYNTAXES:
        raise ValueError(
            f"no pydicom encoder for {transfer_syntax.name}: write the dataset and "
            "use encode_with_dcmtk() or synthetic_file()"
        )
    if transfer_syntax not in NATIVE_TRANSFER_SYNTAXES + PYDICOM_TRANSFER_SYNTAXES:
        raise ValueError(f"unsupported transfer syntax {transfer_syntax}")
    if masses is None:
        masses = (default_mass(rows, columns, laterality),)

    rng = np.random.default_rng(seed)
    density, region = _density(rows, columns, laterality, masses, rng)
    max_value = (1 << bits_stored) - 1
    stored = np.rint(density * max_value).astype(np.uint16 if bits_stored > 8 else np.uint8)
    if photometric == "MONOCHROME1":
        stored = (max_value - stored).astype(stored.dtype)
    if pixel_padding_value is not None:
        if not 0 <= pixel_padding_value <= max_value:
            raise ValueError(f"pixel_padding_value must be in 0..{max_value}")
        stored[~region] = pixel_padding_value

    parameters = (rows, columns, bits_stored, photometric, laterality, view, tuple(masses))
    new_study_uid, series_uid, instance_uid, frame_uid = _next_uids(seed, parameters)

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = instance_uid
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.InstanceCreationDate = "20240102"
    ds.InstanceCreationTime = "101500"
    # Patient (C.7.1.1) and General Study (C.7.2.1)
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study_uid or new_study_uid
    ds.StudyDate = "20240102"
    ds.StudyTime = "101010"
    ds.ReferringPhysicianName = "Referrer^Synthetic"
    ds.StudyID = "S1"
    ds.AccessionNumber = "ACC0001"
    ds.StudyDescription = "Synthetic screening mammography"
    ds.PatientAge = "063Y"
    # General Series, DX Series, Mammography Series (C.7.3.1, C.8.11.1, C.8.11.6)
    ds.Modality = "MG"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.SeriesDescription = f"{laterality} {view}"
    ds.PresentationIntentType = _PRESENTATION_INTENT[sop_class]
    # Frame of Reference (C.7.4.1)
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    # General Equipment (C.7.5.1)
    ds.Manufacturer = "Synthetic Mammography"
    ds.ManufacturerModelName = "mammoseg testkit"
    ds.SoftwareVersions = "1"
    ds.DeviceSerialNumber = "SYN-1"
    if pixel_padding_value is not None:
        ds.PixelPaddingValue = pixel_padding_value
    # General Acquisition / General Image (C.7.10.1, C.7.6.1)
    ds.InstanceNumber = 1
    ds.PatientOrientation = _PATIENT_ORIENTATION[(laterality, view)]
    ds.ContentDate = "20240102"
    ds.ContentTime = "101500"
    ds.AcquisitionDateTime = "20240102101500"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    # Image Pixel (C.7.6.3) and DX Image (C.8.11.3)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 8 if bits_stored == 8 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    # Higher stored value = less X-ray intensity for MONOCHROME2 (dense is bright).
    ds.PixelIntensityRelationshipSign = -1 if photometric == "MONOCHROME2" else 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY" if photometric == "MONOCHROME2" else "INVERSE"
    ds.QualityControlImage = "NO"
    # DX Anatomy Imaged (C.8.11.2)
    ds.ImageLaterality = laterality
    ds.BodyPartExamined = "BREAST"
    ds.AnatomicRegionSequence = [_code_item("76752008", "SCT", "Breast")]
    # DX Detector (C.8.11.4)
    ds.DetectorType = "DIRECT"
    ds.DetectorConfiguration = "AREA"
    if pixel_spacing_mm is not None:
        row_mm, column_mm = (
            pixel_spacing_mm
            if isinstance(pixel_spacing_mm, tuple)
            else (pixel_spacing_mm, pixel_spacing_mm)
        )
        spacing = [f"{row_mm:.6g}", f"{column_mm:.6g}"]
        ds.ImagerPixelSpacing = spacing
        ds.PixelSpacing = spacing
        ds.PixelSpacingCalibrationType = "GEOMETRY"
        ds.PixelSpacingCalibrationDescription = "Synthetic: detector spacing, no magnification"
    else:
        ds.ImagerPixelSpacing = ["0.1", "0.1"]
    # DX Positioning / Mammography Image (C.8.11.5, C.8.11.7)
    ds.PositionerType = "MAMMOGRAPHIC"
    ds.OrganExposed = "BREAST"
    ds.BreastImplantPresent = "NO"
    # X-Ray Acquisition Dose (C.8.7.8): the compressed breast, as FFDM units report it
    ds.BodyPartThickness = "50"
    ds.PartialView = "NO"
    view_value, view_meaning = _VIEW_CODES[view]
    view_code = _code_item(view_value, "SCT", view_meaning)
    view_code.ViewModifierCodeSequence = []
    ds.ViewCodeSequence = [view_code]
    # Acquisition Context (C.7.6.14)
    ds.AcquisitionContextSequence = []
    # VOI LUT (C.11.2), For Presentation only (C.8.11.7): a window over the
    # breast, and optionally a LUT.
    if sop_class == DigitalMammographyXRayImageStorageForPresentation:
        breast_values = stored[region] if region.any() else stored.ravel()
        low, high = int(breast_values.min()), int(breast_values.max())
        ds.WindowCenter = f"{(low + high) / 2:.6g}"
        ds.WindowWidth = f"{max(1, high - low + 1):.6g}"
        ds.WindowCenterWidthExplanation = "SYNTHETIC"
        if voi_lut_sequence:
            ds.VOILUTSequence = [_gamma_voi_lut(bits_stored, low, high)]
    ds.PixelData = stored.tobytes()

    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if transfer_syntax in PYDICOM_TRANSFER_SYNTAXES:
        _compress(ds, transfer_syntax)
    else:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    return ds


#: Output bits of the synthetic VOI LUT (PS3.3 C.11.2.1.1: 10..16).
VOI_LUT_BITS = 12
VOI_LUT_GAMMA = 0.8


def _gamma_voi_lut(bits_stored: int, low: int, high: int) -> Dataset:
    """A VOI LUT item mapping every stored value through a gamma curve."""
    entries = 1 << bits_stored
    x = np.arange(entries, dtype=np.float64)
    y = np.clip((x - low) / max(1, high - low), 0.0, 1.0) ** VOI_LUT_GAMMA
    lut = np.rint(y * ((1 << VOI_LUT_BITS) - 1)).astype(np.uint16)
    item = Dataset()
    # 65536 entries are written as 0 (PS3.3 C.11.2.1.1).
    item.LUTDescriptor = [entries % 65536, 0, VOI_LUT_BITS]
    item.LUTExplanation = f"GAMMA {VOI_LUT_GAMMA}"
    item.add_new("LUTData", "OW", lut.tobytes())
    return item


def _compress(ds: Dataset, transfer_syntax: UID) -> None:
    """Compress in place with pydicom's encoders; lossy keeps the SOP Instance UID."""
    options: dict[str, object] = {}
    if transfer_syntax == RLELossless:
        options["encoding_plugin"] = "pylibjpeg"
    elif transfer_syntax == JPEGLSNearLossless:
        options["jls_error"] = JPEG_LS_NEAR_LOSSLESS_ERROR
    elif transfer_syntax == JPEG2000:
        options["j2k_cr"] = [JPEG_2000_LOSSY_RATIO]
    ds.compress(transfer_syntax, generate_instance_uid=False, **options)  # type: ignore[arg-type]
    if transfer_syntax in LOSSY_TRANSFER_SYNTAXES:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = (
            "ISO_14495_1" if transfer_syntax == JPEGLSNearLossless else "ISO_15444_1"
        )


#: Attributes of the DX/MG modules that a Secondary Capture does not have (PS3.3 A.8.1).
_DX_ONLY_KEYWORDS = (
    "PresentationIntentType",
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    "PixelIntensityRelationship",
    "PixelIntensityRelationshipSign",
    "PresentationLUTShape",
    "QualityControlImage",
    "ImageLaterality",
    "AnatomicRegionSequence",
    "DetectorType",
    "DetectorConfiguration",
    "ImagerPixelSpacing",
    "PixelSpacingCalibrationType",
    "PixelSpacingCalibrationDescription",
    "PositionerType",
    "OrganExposed",
    "BreastImplantPresent",
    "BodyPartThickness",
    "PartialView",
    "ViewCodeSequence",
    "AcquisitionContextSequence",
    "AcquisitionDateTime",
    "PixelPaddingValue",
)
#: SC Equipment Conversion Type for a film digitiser (PS3.3 C.8.6.1).
DIGITIZED_FILM = "DF"


def synthetic_secondary_capture(
    *,
    modality: str = "MG",
    signed: bool = False,
    pixel_spacing_mm: float | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    **kw: object,
) -> Dataset:
    """A digitised-film mammogram as a Secondary Capture Image (PS3.3 A.8.1).

    Like the CBIS-DDSM files: SC Equipment with Conversion Type DF and
    ``modality`` (MG: a digitised mammogram), series Laterality instead of
    Image Laterality, no pixel spacing unless ``pixel_spacing_mm`` (then SC
    Image Pixel Spacing).  ``signed`` stores the values shifted by
    -2^(Bits Stored - 1) as two's complement (Pixel Representation 1) with
    the window shifted alike, so the display is the same.  Other keywords go
    to :func:`synthetic_mammogram` (no padding: the SC IOD has none).
    """
    transfer_syntax = UID(transfer_syntax)
    if transfer_syntax in DCMTK_TRANSFER_SYNTAXES:
        raise ValueError("write the dataset and use encode_with_dcmtk() for JPEG lossless")
    ds = synthetic_mammogram(pixel_spacing_mm=None, **kw)  # type: ignore[arg-type]
    laterality = ds.ImageLaterality
    for keyword in _DX_ONLY_KEYWORDS:
        if keyword in ds:
            delattr(ds, keyword)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.Modality = modality
    ds.ConversionType = DIGITIZED_FILM
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.Laterality = laterality
    ds.DateOfSecondaryCapture = ds.ContentDate
    ds.TimeOfSecondaryCapture = ds.ContentTime
    if pixel_spacing_mm is not None:
        ds.PixelSpacing = [f"{pixel_spacing_mm:.6g}", f"{pixel_spacing_mm:.6g}"]
    if signed:
        offset = 1 << (int(ds.BitsStored) - 1)
        stored = ds.pixel_array.astype(np.int32) - offset
        dtype = np.int8 if ds.BitsAllocated == 8 else np.int16
        ds.PixelData = stored.astype(dtype).tobytes()
        ds.PixelRepresentation = 1
        ds.WindowCenter = f"{float(ds.WindowCenter) - offset:.6g}"
    if transfer_syntax in PYDICOM_TRANSFER_SYNTAXES:
        _compress(ds, transfer_syntax)
    else:
        ds.file_meta.TransferSyntaxUID = transfer_syntax
    return ds


def synthetic_tomosynthesis(*, rows: int = 64, columns: int = 48, frames: int = 2) -> Dataset:
    """A minimal Breast Tomosynthesis Image (multi-frame) for the input policy.

    Only what the node reads before it decides not to segment: the SOP class,
    Modality MG and a small multi-frame pixel matrix.  Not an IOD-complete
    object (the node must never need one to say no).
    """
    study_uid, series_uid, instance_uid, _ = _next_uids(0, ("BTO", rows, columns, frames))
    ds = Dataset()
    ds.SOPClassUID = BreastTomosynthesisImageStorage
    ds.SOPInstanceUID = instance_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "MG"
    ds.PatientName = "Synthetic^Patient"
    ds.PatientID = "SYN0001"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.zeros((frames, rows, columns), dtype=np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def with_sop_class(ds: Dataset, sop_class: str, modality: str) -> Dataset:
    """``ds`` relabelled as another SOP class and modality (e.g. a CT reaching the node)."""
    ds.SOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.Modality = modality
    return ds


def full_size(**kw: object) -> Dataset:
    """A full-field digital mammogram: 4096 rows x 3328 columns, 14-bit by default."""
    kw.setdefault("rows", FULL_SIZE_ROWS)
    kw.setdefault("columns", FULL_SIZE_COLUMNS)
    kw.setdefault("bits_stored", FULL_SIZE_BITS_STORED)
    return synthetic_mammogram(**kw)  # type: ignore[arg-type]


def write(ds: Dataset, path: Path | str) -> Path:
    """Write ``ds`` as a DICOM file (PS3.10) in its file meta transfer syntax."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def dcmtk_available() -> bool:
    """Whether DCMTK's dcmcjpeg is on PATH."""
    return shutil.which("dcmcjpeg") is not None


def encode_with_dcmtk(path_in: Path | str, path_out: Path | str, ts: str) -> Path:
    """Re-encode a DICOM file to JPEG lossless (.70 or .57) with DCMTK's dcmcjpeg.

    pydicom 3 has no JPEG lossless encoder, so the compressed test inputs come
    from the same third-party toolkit a PACS would use.
    """
    ts = UID(ts)
    if ts not in _DCMTK_OPTIONS:
        raise ValueError(f"encode_with_dcmtk supports {list(_DCMTK_OPTIONS)}, got {ts}")
    if not dcmtk_available():
        raise FileNotFoundError("DCMTK's dcmcjpeg is not installed (Debian package dcmtk)")
    result = subprocess.run(
        ["dcmcjpeg", *_DCMTK_OPTIONS[ts], str(path_in), str(path_out)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"dcmcjpeg failed ({result.returncode}): {result.stderr.strip()}")
    return Path(path_out)


def synthetic_file(directory: Path | str, *, name: str = "mg.dcm", **kw: object) -> Path:
    """Write a synthetic mammogram under ``directory`` in any transfer syntax.

    Takes :func:`synthetic_mammogram`'s keywords; JPEG lossless goes through
    DCMTK via an uncompressed file next to the result.
    """
    directory = Path(directory)
    transfer_syntax = UID(str(kw.pop("transfer_syntax", ExplicitVRLittleEndian)))
    if transfer_syntax not in DCMTK_TRANSFER_SYNTAXES:
        return write(synthetic_mammogram(transfer_syntax=transfer_syntax, **kw), directory / name)  # type: ignore[arg-type]
    plain = write(synthetic_mammogram(**kw), directory / f"uncompressed-{name}")  # type: ignore[arg-type]
    return encode_with_dcmtk(plain, directory / name, transfer_syntax)


def density_map(
    rows: int,
    columns: int,
    *,
    laterality: str = "L",
    masses: Sequence[Mass] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """The [0, 1] float32 density :func:`synthetic_mammogram` makes stored values of.

    Same seed, size, side and masses: the same map as the image's (before it is
    scaled to Bits Stored).  ``masses=None`` places :func:`default_mass`.
    """
    if laterality not in ("L", "R"):
        raise ValueError(f"laterality must be 'L' or 'R', got {laterality!r}")
    if masses is None:
        masses = (default_mass(rows, columns, laterality),)
    density, _ = _density(rows, columns, laterality, masses, np.random.default_rng(seed))
    return density


def random_masses(rows: int, columns: int, laterality: str, *, seed: int) -> tuple[Mass, ...]:
    """One or two seeded masses inside the breast (radius 3-6 % of the shorter side)."""
    rng = np.random.default_rng(seed)
    masses = []
    for _ in range(int(rng.integers(1, 3))):
        radius = max(1, round(rng.uniform(0.03, 0.06) * min(rows, columns)))
        row = round(rng.uniform(0.3, 0.7) * rows)
        col = round(rng.uniform(0.15, 0.45) * columns)
        if laterality == "R":
            col = columns - 1 - col
        masses.append(Mass(row=row, col=col, radius=radius))
    return tuple(masses)


#: Distinct pixel contents :func:`write_mammograms` cycles over the files of one call.
VARIANTS = 4
#: Detector pixel spacing of the bench's images.
BENCH_PIXEL_SPACING_MM = 0.07


@dataclass(frozen=True, kw_only=True)
class ImageSpec:
    """Matrix and depth of the images :func:`write_mammograms` writes."""

    rows: int = FULL_SIZE_ROWS
    columns: int = FULL_SIZE_COLUMNS
    bits_stored: int = FULL_SIZE_BITS_STORED

    def __post_init__(self) -> None:
        if self.rows < 64 or self.columns < 64:
            raise ValueError(f"images must be at least 64x64, got {self.rows}x{self.columns}")
        if not 9 <= self.bits_stored <= 16:
            raise ValueError(f"bits_stored must be in 9..16, got {self.bits_stored}")

    @property
    def nbytes(self) -> int:
        return self.rows * self.columns * 2


def renew_uids(ds: Dataset) -> None:
    """New random study, series, instance and frame of reference: a new image."""
    ds.StudyInstanceUID = generate_uid(prefix=PYDICOM_ROOT_UID)
    ds.SeriesInstanceUID = generate_uid(prefix=PYDICOM_ROOT_UID)
    ds.FrameOfReferenceUID = generate_uid(prefix=PYDICOM_ROOT_UID)
    ds.SOPInstanceUID = generate_uid(prefix=PYDICOM_ROOT_UID)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def write_mammograms(folder: Path, count: int, spec: ImageSpec, *, seed: int = 0) -> list[Path]:
    """``count`` For Presentation files ``mg0000.dcm``... in ``folder`` (Explicit VR LE).

    :data:`VARIANTS` pixel contents (left/right, CC/MLO, :func:`random_masses`)
    are cycled; every file gets new random UIDs (:func:`renew_uids`), so each is
    a new image to the node.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    folder.mkdir(parents=True, exist_ok=True)
    variants = []
    for i in range(min(count, VARIANTS)):
        laterality = "LR"[i % 2]
        variant_seed = seed * 1000 + i
        variants.append(
            synthetic_mammogram(
                rows=spec.rows,
                columns=spec.columns,
                bits_stored=spec.bits_stored,
                laterality=laterality,
                view=("CC", "MLO")[(i // 2) % 2],
                masses=random_masses(spec.rows, spec.columns, laterality, seed=variant_seed),
                seed=variant_seed,
                pixel_spacing_mm=BENCH_PIXEL_SPACING_MM,
                patient_name="Bench^Synthetic",
                patient_id="BENCH0001",
                birth_date="",
            )
        )
    paths = []
    for index in range(count):
        ds = variants[index % len(variants)]
        renew_uids(ds)
        paths.append(write(ds, folder / f"mg{index:04d}.dcm"))
    return paths


#: UID root of the objects the tests derive (the "pydicom" root would also do).
EXAMPLE_UID_ROOT = "1.2.826.0.1.3680043.10.1234."


def example_provenance(**overrides: object) -> Provenance:
    """A valid Provenance for tests; keywords override single fields."""
    fields: dict[str, object] = {
        "model_name": "MobileNetV2-ResUNet",
        "model_version": "1.0.0",
        "software_version": "0.1.0",
        "uid_root": EXAMPLE_UID_ROOT,
    }
    fields.update(overrides)
    return Provenance(**fields)  # type: ignore[arg-type]


def read(path: Path | str) -> Dataset:
    """Read a DICOM file written by :func:`write`."""
    return pydicom.dcmread(path)


__all__ = [
    "BENCH_PIXEL_SPACING_MM",
    "DCMTK_TRANSFER_SYNTAXES",
    "FULL_SIZE_BITS_STORED",
    "FULL_SIZE_COLUMNS",
    "FULL_SIZE_ROWS",
    "JPEG_LS_NEAR_LOSSLESS_ERROR",
    "LOSSY_TRANSFER_SYNTAXES",
    "EXAMPLE_UID_ROOT",
    "Mass",
    "NATIVE_TRANSFER_SYNTAXES",
    "PYDICOM_TRANSFER_SYNTAXES",
    "VARIANTS",
    "VOI_LUT_BITS",
    "VOI_LUT_GAMMA",
    "ImageSpec",
    "breast_region",
    "dcmtk_available",
    "default_mass",
    "density_map",
    "encode_with_dcmtk",
    "example_provenance",
    "full_size",
    "mass_mask",
    "random_masses",
    "read",
    "renew_uids",
    "synthetic_file",
    "synthetic_mammogram",
    "synthetic_secondary_capture",
    "synthetic_tomosynthesis",
    "with_sop_class",
    "write",
    "write_mammograms",
]
