"""Full-size synthetic mammograms for ``mammoseg bench`` (no test code, no patient data).

A Digital Mammography X-Ray Image For Presentation (PS3.3 A.26.2) with what
the node and its SEG/SC/SR builders read: a half-elliptic breast against the
chest wall, smooth tissue texture, one or two bright soft-edged masses, a
window over the breast (PS3.3 C.11.2), Image Laterality, View Code and Pixel
Spacing. The default matrix is 3328 x 4096 (columns x rows) with 14 bits
stored, as a typical full-field digital mammography detector writes.

Pixel content is seeded; a few variants are cycled over many files and only
the UIDs change, so writing 100 files costs seconds, not minutes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_ROOT_UID,
    DigitalMammographyXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

FULL_ROWS = 4096
FULL_COLUMNS = 3328
FULL_BITS_STORED = 14
#: Distinct pixel contents cycled over the files of one run.
VARIANTS = 4
PIXEL_SPACING_MM = 0.07

_AIR = 0.02
_TISSUE = 0.45
_TEXTURE = 0.12
_MASS = 0.35
_NOISE = 0.01
# SCT view codes (CID 4014) and the IHE Mammography Image orientation of each side.
_VIEWS = {"CC": ("399162004", "cranio-caudal"), "MLO": ("399368009", "medio-lateral oblique")}
_ORIENTATION = {
    ("L", "CC"): ["A", "R"],
    ("R", "CC"): ["P", "L"],
    ("L", "MLO"): ["A", "FR"],
    ("R", "MLO"): ["P", "FL"],
}


@dataclass(frozen=True, kw_only=True)
class ImageSpec:
    """Matrix and depth of the generated images."""

    rows: int = FULL_ROWS
    columns: int = FULL_COLUMNS
    bits_stored: int = FULL_BITS_STORED

    def __post_init__(self) -> None:
        if self.rows < 64 or self.columns < 64:
            raise ValueError(f"images must be at least 64x64, got {self.rows}x{self.columns}")
        if not 9 <= self.bits_stored <= 16:
            raise ValueError(f"bits_stored must be in 9..16, got {self.bits_stored}")

    @property
    def nbytes(self) -> int:
        return self.rows * self.columns * 2


def density_map(spec: ImageSpec, *, laterality: str, seed: int) -> np.ndarray:
    """A [0, 1] float32 density map: air, breast with texture, masses (chest wall by side)."""
    rng = np.random.default_rng(seed)
    rows, columns = spec.rows, spec.columns
    chest = 0.0 if laterality == "L" else columns - 1.0
    rr = ((np.arange(rows, dtype=np.float32) - (rows - 1) / 2) / (rows * 0.46)) ** 2
    cc = ((np.arange(columns, dtype=np.float32) - chest) / (columns * 0.85)) ** 2
    breast = (rr[:, None] + cc[None, :]) <= 1.0
    texture = _smooth_noise(rows, columns, 12, rng) + 0.5 * _smooth_noise(rows, columns, 48, rng)
    density = np.where(breast, _TISSUE + _TEXTURE * np.tanh(texture), np.float32(_AIR))
    density = density.astype(np.float32, copy=False)
    for _ in range(int(rng.integers(1, 3))):
        radius = float(rng.uniform(0.03, 0.06) * min(rows, columns))
        row = float(rng.uniform(0.3, 0.7) * rows)
        col = float(rng.uniform(0.15, 0.45) * columns)
        if laterality == "R":
            col = columns - 1.0 - col
        _add_mass(density, row, col, radius)
    density += _NOISE * rng.standard_normal((rows, columns), dtype=np.float32)
    np.clip(density, 0.0, 1.0, out=density)
    return density


def _smooth_noise(rows: int, columns: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise on a coarse grid, bilinear up to the full matrix (smooth texture)."""
    step = max(1, min(rows, columns) // cells)
    coarse = rng.standard_normal((rows // step + 2, columns // step + 2)).astype(np.float32)
    image = Image.fromarray(coarse, mode="F").resize((columns, rows), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32)


def _add_mass(density: np.ndarray, row: float, col: float, radius: float) -> None:
    """A round mass with a soft (logistic) edge, added in place."""
    edge = max(1.0, radius * 0.15)
    reach = int(radius + 4 * edge) + 1
    r0, r1 = max(0, int(row) - reach), min(density.shape[0], int(row) + reach + 1)
    c0, c1 = max(0, int(col) - reach), min(density.shape[1], int(col) + reach + 1)
    dr = (np.arange(r0, r1, dtype=np.float32)[:, None] - row) ** 2
    dc = (np.arange(c0, c1, dtype=np.float32)[None, :] - col) ** 2
    distance = np.sqrt(dr + dc)
    density[r0:r1, c0:c1] += _MASS / (1.0 + np.exp((distance - radius) / edge))


def mammogram_dataset(spec: ImageSpec, *, laterality: str, view: str, seed: int) -> Dataset:
    """One For Presentation MG dataset with file meta (UIDs set by :func:`renew_uids`)."""
    if laterality not in ("L", "R") or view not in _VIEWS:
        raise ValueError(f"laterality L/R and view CC/MLO, got {laterality!r} {view!r}")
    density = density_map(spec, laterality=laterality, seed=seed)
    top = (1 << spec.bits_stored) - 1
    stored = np.rint(density * np.float32(top)).astype(np.uint16)
    low, high = int(stored.min()), int(stored.max())

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = DigitalMammographyXRayImageStorageForPresentation
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.PatientName = "Bench^Synthetic"
    ds.PatientID = "BENCH0001"
    ds.PatientBirthDate = ""
    ds.PatientSex = "F"
    ds.StudyDate = ds.ContentDate = "20240102"
    ds.StudyTime = ds.ContentTime = "101010"
    ds.AcquisitionDateTime = "20240102101010"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "BENCH"
    ds.AccessionNumber = ""
    ds.StudyDescription = "mammoseg bench (synthetic)"
    ds.Modality = "MG"
    ds.SeriesNumber = 1
    ds.SeriesDescription = f"{laterality} {view}"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "mammoseg bench"
    ds.InstanceNumber = 1
    ds.PatientOrientation = _ORIENTATION[(laterality, view)]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = spec.rows
    ds.Columns = spec.columns
    ds.BitsAllocated = 16
    ds.BitsStored = spec.bits_stored
    ds.HighBit = spec.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = -1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.QualityControlImage = "NO"
    ds.ImageLaterality = laterality
    ds.BodyPartExamined = "BREAST"
    ds.AnatomicRegionSequence = [_code("76752008", "SCT", "Breast")]
    ds.DetectorType = "DIRECT"
    ds.DetectorConfiguration = "AREA"
    spacing = [f"{PIXEL_SPACING_MM:g}", f"{PIXEL_SPACING_MM:g}"]
    ds.ImagerPixelSpacing = spacing
    ds.PixelSpacing = spacing
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "Synthetic: detector spacing"
    ds.PositionerType = "MAMMOGRAPHIC"
    ds.OrganExposed = "BREAST"
    ds.BreastImplantPresent = "NO"
    ds.PartialView = "NO"
    view_value, view_meaning = _VIEWS[view]
    view_code = _code(view_value, "SCT", view_meaning)
    view_code.ViewModifierCodeSequence = []
    ds.ViewCodeSequence = [view_code]
    ds.AcquisitionContextSequence = []
    ds.WindowCenter = f"{(low + high) / 2:.6g}"
    ds.WindowWidth = f"{max(2, high - low + 1):.6g}"
    ds.PixelData = stored.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    renew_uids(ds)
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def renew_uids(ds: Dataset) -> None:
    """New study, series, instance and frame of reference: every file is a new image."""
    ds.StudyInstanceUID = generate_uid(prefix=PYDICOM_ROOT_UID)
    ds.SeriesInstanceUID = generate_uid(prefix=PYDICOM_ROOT_UID)
    ds.FrameOfReferenceUID = generate_uid(prefix=PYDICOM_ROOT_UID)
    ds.SOPInstanceUID = generate_uid(prefix=PYDICOM_ROOT_UID)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def write_mammograms(folder: Path, count: int, spec: ImageSpec, *, seed: int = 0) -> list[Path]:
    """``count`` files in ``folder`` (Explicit VR Little Endian), VARIANTS contents cycled."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    folder.mkdir(parents=True, exist_ok=True)
    variants = [
        mammogram_dataset(
            spec,
            laterality="LR"[i % 2],
            view=("CC", "MLO")[(i // 2) % 2],
            seed=seed * 1000 + i,
        )
        for i in range(min(count, VARIANTS))
    ]
    paths = []
    for index in range(count):
        ds = variants[index % len(variants)]
        renew_uids(ds)
        path = folder / f"mg{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
