"""The TID 1500 measurement report: read back with highdicom, compared, validated."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicom_node.provenance import PATIENT_STUDY_KEYWORDS
from dicom_node.seg import build_segmentation
from dicom_node.spacing import PixelSpacing, pixel_spacing
from dicom_node.sr import (
    DEFAULT_SR_SERIES_DESCRIPTION,
    LOCAL_SCHEME,
    ReportError,
    build_measurement_report,
)
from service.imaging.lesions import Lesion, measure_lesions
from service.testkit.synthetic import (
    EXAMPLE_UID_ROOT,
    Mass,
    example_provenance,
    mass_mask,
    synthetic_mammogram,
    synthetic_secondary_capture,
    write,
)
from tests.dicom_validation import assert_consistent, assert_valid_dicom

SMALL = {"rows": 160, "columns": 128}
MASSES = (Mass(row=50, col=50, radius=14), Mass(row=110, col=70, radius=8))
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def made(
    tmp_path: Path, source: Dataset, masses: tuple[Mass, ...] = MASSES, **kw: object
) -> tuple[Path, hd.sr.Comprehensive3DSR, tuple[Lesion, ...], Dataset | None]:
    """Source, SEG and SR written under tmp_path; the SR read back by highdicom."""
    write(source, tmp_path / "source.dcm")
    mask = mass_mask(source.Rows, source.Columns, masses)
    probability = np.where(mask, np.float32(0.8), np.float32(0.05))
    provenance = example_provenance()
    seg = build_segmentation(source=source, mask=mask, provenance=provenance, series_number=901)
    if seg is not None:
        write(seg, tmp_path / "seg.dcm")
    spacing = pixel_spacing(source)
    lesions = measure_lesions(
        mask,
        probability,
        spacing_mm=(spacing.row_mm, spacing.column_mm) if spacing else None,
    )
    sr = build_measurement_report(
        source=source,
        lesions=lesions,
        spacing=spacing,
        segmentation=seg,
        provenance=kw.pop("provenance", provenance),  # type: ignore[arg-type]
        series_number=kw.pop("series_number", 903),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )
    path = write(sr, tmp_path / "sr.dcm")
    return path, hd.sr.srread(path), lesions, seg


def measurement(group: object, name: object) -> hd.sr.Measurement:
    (found,) = group.get_measurements(name=name)  # type: ignore[attr-defined]
    return found


def method_of(item: hd.sr.Measurement) -> str:
    return str(item.method.value) if item.method is not None else ""


def test_report_is_a_valid_tid_1500_in_the_source_study(tmp_path: Path) -> None:
    source = synthetic_mammogram(masses=MASSES, seed=2, **SMALL)
    path, sr, _, seg = made(tmp_path, source)
    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.SeriesInstanceUID.startswith(EXAMPLE_UID_ROOT)
    assert sr.SOPInstanceUID.startswith(EXAMPLE_UID_ROOT)
    assert (sr.SeriesNumber, sr.SeriesDescription) == (903, DEFAULT_SR_SERIES_DESCRIPTION)
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == (
        "COMPLETE",
        "UNVERIFIED",
        "PRELIMINARY",
    )
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for item in series.ReferencedSOPSequence
    }
    assert seg is not None
    assert evidence == {source.SOPInstanceUID, seg.SOPInstanceUID}
    # The only warnings: dciodvfy does not know the local coding scheme.
    assert all(LOCAL_SCHEME in warning for warning in assert_valid_dicom(path))
    assert_consistent([tmp_path / "source.dcm", tmp_path / "seg.dcm", path])


def test_each_lesion_has_its_measurements_segment_and_box(tmp_path: Path) -> None:
    source = synthetic_mammogram(masses=MASSES, seed=2, **SMALL)
    _, sr, lesions, seg = made(tmp_path, source)
    assert seg is not None and len(lesions) == 2
    groups = sr.content.get_planar_roi_measurement_groups()
    assert len(groups) == 4
    for lesion in lesions:
        mine = [g for g in groups if g.tracking_identifier == f"Mass {lesion.number}"]
        segment_group, box_group = mine
        assert segment_group.tracking_uid == box_group.tracking_uid
        assert segment_group.tracking_uid.startswith(EXAMPLE_UID_ROOT)
        assert segment_group.finding_type == codes.SCT.Mass
        area = measurement(segment_group, codes.SCT.Area)
        assert area.value == pytest.approx(lesion.area_mm2, abs=0.005)
        assert area.unit == codes.UCUM.SquareMillimeter
        assert method_of(area) == "PixelSpacing"
        diameter = measurement(segment_group, codes.SCT.LongAxis)
        assert diameter.value == pytest.approx(lesion.diameter_mm, abs=0.005)
        assert diameter.unit == codes.UCUM.Millimeter
        probability = measurement(segment_group, codes.DCM.Probability)
        assert probability.value == pytest.approx(0.8, abs=0.001)
        assert probability.derivation == codes.SCT.Mean
        reference = segment_group.referenced_segmentation_frame
        assert reference is not None
        segment_item = reference[0].ReferencedSOPSequence[0]
        assert segment_item.ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert segment_item.ReferencedSegmentNumber == 1
        assert reference[1].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
            source.SOPInstanceUID
        )
        region = box_group.roi
        assert region is not None and region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        corners = region.value.reshape(-1, 2)  # (column, row) on pixel edges
        box = lesion.bbox
        assert corners.min(axis=0).tolist() == [box.left, box.top]
        assert corners.max(axis=0).tolist() == [box.right, box.bottom]
        (selected_from,) = region.ContentSequence  # SCOORD "selected from" the source
        assert selected_from.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
            source.SOPInstanceUID
        )
        width = measurement(box_group, codes.SCT.Width)
        assert width.value == pytest.approx(box.width * 0.1, abs=0.005)


def test_largest_lesion_is_mass_1_with_known_area(tmp_path: Path) -> None:
    source = synthetic_mammogram(masses=MASSES, seed=2, **SMALL)
    _, sr, _, _ = made(tmp_path, source)
    first = next(
        g
        for g in sr.content.get_planar_roi_measurement_groups()
        if g.tracking_identifier == "Mass 1"
    )
    truth = np.pi * (14 * 0.1) ** 2
    assert measurement(first, codes.SCT.Area).value == pytest.approx(truth, rel=0.05)


def test_no_mass_is_recorded_as_absent(tmp_path: Path) -> None:
    source = synthetic_mammogram(masses=(), seed=2, **SMALL)
    path, sr, lesions, seg = made(tmp_path, source, masses=())
    assert lesions == () and seg is None
    assert sr.content.get_planar_roi_measurement_groups() == []
    (group,) = sr.content.get_image_measurement_groups()
    assert group.tracking_identifier == "No mass"
    (evaluation,) = group.get_qualitative_evaluations(name=codes.SCT.Mass)
    assert (evaluation.name, evaluation.value) == (codes.SCT.Mass, codes.SCT.Absent)
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert_valid_dicom(path)
    assert_consistent([tmp_path / "source.dcm", path])


def test_imager_pixel_spacing_is_named_as_the_method(tmp_path: Path) -> None:
    source = synthetic_mammogram(masses=MASSES, pixel_spacing_mm=None, seed=2, **SMALL)
    _, sr, _, _ = made(tmp_path, source)
    group = sr.content.get_planar_roi_measurement_groups()[0]
    assert method_of(measurement(group, codes.SCT.Area)) == "ImagerPixSpacing"


def test_without_any_spacing_values_are_in_pixels(tmp_path: Path) -> None:
    source = synthetic_secondary_capture(masses=MASSES, seed=2, **SMALL)
    path, sr, lesions, _ = made(tmp_path, source)
    group = sr.content.get_planar_roi_measurement_groups()[0]
    area = measurement(group, codes.SCT.Area)
    assert area.unit.value == "{pixels}" and area.value == lesions[0].pixel_count
    assert method_of(area) == "NoPixelSpacing"
    assert_valid_dicom(path)


def test_non_square_spacing_scales_rows_and_columns(tmp_path: Path) -> None:
    source = synthetic_mammogram(masses=MASSES, pixel_spacing_mm=(0.1, 0.05), seed=2, **SMALL)
    _, sr, lesions, _ = made(tmp_path, source)
    first = sr.content.get_planar_roi_measurement_groups()[1]  # Mass 1, box
    box = lesions[0].bbox
    assert measurement(first, codes.DCM.Height).value == pytest.approx(box.height * 0.1, abs=0.005)
    assert measurement(first, codes.SCT.Width).value == pytest.approx(box.width * 0.05, abs=0.005)


def test_observer_algorithm_and_contributing_equipment(tmp_path: Path) -> None:
    source = synthetic_mammogram(masses=MASSES, seed=2, **SMALL)
    _, sr, _, _ = made(tmp_path, source)
    provenance = example_provenance()
    group = sr.content.get_planar_roi_measurement_groups()[0]
    algorithm = {item.name.meaning: item.value for item in group[0].ContentSequence}
    assert algorithm.get("Algorithm Name") == provenance.model_name
    assert algorithm.get("Algorithm Version") == provenance.model_version
    context = {
        item.ConceptNameCodeSequence[0].CodeMeaning: getattr(item, "TextValue", None)
        for item in sr.ContentSequence
        if item.RelationshipType == "HAS OBS CONTEXT"
    }
    assert context["Device Observer Name"] == provenance.model_name
    model = [
        item
        for item in sr.ContributingEquipmentSequence
        if item.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
        and item.get("ManufacturerModelName") == provenance.model_name
    ]
    assert len(model) == 1 and model[0].SoftwareVersions == provenance.model_version
    schemes = [item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence]
    assert LOCAL_SCHEME in schemes


def test_patient_and_study_are_copied_exactly(tmp_path: Path) -> None:
    source = synthetic_mammogram(masses=MASSES, patient_name="Ünal^Zoë", seed=2, **SMALL)
    source.IssuerOfPatientID = "HOSP"
    source.ReferringPhysicianName = ""
    _, sr, _, _ = made(tmp_path, source)
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in source:
            assert sr[keyword].value == source[keyword].value, keyword


def test_bad_arguments_are_refused() -> None:
    source = synthetic_mammogram(masses=MASSES, seed=2, **SMALL)
    mask = mass_mask(source.Rows, source.Columns, MASSES)
    lesions = measure_lesions(mask, mask.astype(np.float32), spacing_mm=(0.1, 0.1))
    spacing = PixelSpacing(0.1, 0.1, "PixelSpacing")
    common = {"source": source, "provenance": example_provenance(), "series_number": 903}
    with pytest.raises(ValueError, match="SEG"):
        build_measurement_report(lesions=lesions, spacing=spacing, segmentation=None, **common)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mm values"):
        build_measurement_report(lesions=lesions, spacing=None, segmentation=None, **common)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="series_number"):
        build_measurement_report(
            source=source,
            lesions=(),
            spacing=spacing,
            segmentation=None,
            provenance=example_provenance(),
            series_number=0,
        )


def test_a_seg_from_another_study_is_refused() -> None:
    source = synthetic_mammogram(masses=MASSES, seed=2, **SMALL)
    mask = mass_mask(source.Rows, source.Columns, MASSES)
    other = synthetic_mammogram(masses=MASSES, seed=3, **SMALL)
    seg = build_segmentation(
        source=other, mask=mask, provenance=example_provenance(), series_number=1
    )
    lesions = measure_lesions(mask, mask.astype(np.float32), spacing_mm=(0.1, 0.1))
    with pytest.raises(ValueError, match="study"):
        build_measurement_report(
            source=source,
            lesions=lesions,
            spacing=PixelSpacing(0.1, 0.1, "PixelSpacing"),
            segmentation=seg,
            provenance=example_provenance(),
            series_number=903,
        )


def test_report_error_is_a_derived_object_error() -> None:
    from dicom_node.errors import DicomNodeError

    assert issubclass(ReportError, DicomNodeError)


def test_no_patient_data_in_logs_or_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = synthetic_mammogram(
        masses=MASSES, patient_name="Jane Doe", patient_id="PID-778899", seed=2, **SMALL
    )
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        made(tmp_path, source)
    text = caplog.text + " ".join(str(w.message) for w in caught)
    assert "Jane" not in text and "PID-778899" not in text


def test_sr_reads_back_with_pydicom(tmp_path: Path) -> None:
    source = synthetic_mammogram(masses=MASSES, seed=2, **SMALL)
    path, _, _, _ = made(tmp_path, source)
    ds = pydicom.dcmread(path)
    assert ds.Modality == "SR" and ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"


def test_each_lesion_has_a_long_axis_line_a_viewer_can_rebuild(tmp_path: Path) -> None:
    """TID 1501 per lesion: Long axis INFERRED FROM a 2-point SCOORD on the source.

    What OHIF 3's SR hydration reads (its Length tool): the tool in the Tracking
    Identifier, the SCOORD under the group's first (here only) NUM.
    """
    source = synthetic_mammogram(masses=MASSES, pixel_spacing_mm=(0.1, 0.05), seed=2, **SMALL)
    path, sr, lesions, _ = made(tmp_path, source)
    groups = sr.content.get_image_measurement_groups()
    assert len(groups) == len(lesions) == 2
    box_uids = {g.tracking_uid for g in sr.content.get_planar_roi_measurement_groups()}
    for lesion, group in zip(lesions, groups, strict=True):
        assert group.tracking_identifier == (
            f"Cornerstone3DTools@^0.1.0:Length:Mass {lesion.number}"
        )
        assert group.tracking_uid not in box_uids
        assert group.finding_type == codes.SCT.Mass
        (num,) = [item for item in group[0].ContentSequence if item.ValueType == "NUM"]
        long_axis = measurement(group, codes.SCT.LongAxis)
        assert long_axis.value == pytest.approx(lesion.diameter_mm, abs=0.005)
        (scoord,) = [item for item in num.ContentSequence if item.ValueType == "SCOORD"]
        assert scoord.RelationshipType == "INFERRED FROM"
        assert scoord.GraphicType == "POLYLINE"
        (col_a, row_a), (col_b, row_b) = np.reshape(scoord.GraphicData, (2, 2))
        drawn = np.hypot((row_a - row_b) * 0.1, (col_a - col_b) * 0.05)
        assert drawn == pytest.approx(lesion.diameter_mm, abs=1e-6)
        box = lesion.bbox
        assert box.left <= min(col_a, col_b) and max(col_a, col_b) <= box.right
        assert box.top <= min(row_a, row_b) and max(row_a, row_b) <= box.bottom
        (image,) = scoord.ContentSequence
        assert image.RelationshipType == "SELECTED FROM"
        assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert all(LOCAL_SCHEME in warning for warning in assert_valid_dicom(path))


def test_no_mass_report_has_no_long_axis_group(tmp_path: Path) -> None:
    source = synthetic_mammogram(masses=(), seed=2, **SMALL)
    _, sr, _, _ = made(tmp_path, source, masses=())
    (group,) = sr.content.get_image_measurement_groups()
    assert group.tracking_identifier == "No mass"
