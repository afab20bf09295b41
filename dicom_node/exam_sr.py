"""The exam report: one TID 1500 SR for a whole mammography study (PS3.16 A.35.3).

Each image has its own measurement report (:mod:`dicom_node.sr`); a reader
also wants the exam's answer per breast.  This report is a Comprehensive 3D
SR in a new series of the study, built like the per-image one (the same
observation context, measurement helpers, series and equipment), whose
content tree holds one TID 1501 measurement group per breast:

- tracking identifier "Left breast" / "Right breast" (a tracking UID per
  study and breast), finding type Mass, finding site Breast with laterality,
  the algorithm (TID 4019);
- the qualitative evaluation Mass (SCT 4147007) = Present (SCT 52101004) or
  Absent (SCT 272519000), when at least one image of the breast was segmented;
- the number of lesions over the breast's images (local code ``LesionCount``,
  unit ``{lesions}``) and, when there is one, the largest lesion (the largest
  diameter over the images): Long axis, Area and mean Probability, each with
  the image it was measured on (Source of Measurement);
- for every standard view (CC, MLO) of the breast that did not arrive, or
  whose image could not be segmented, the qualitative evaluation "View not
  available" (local code ``ViewMissing``) = the view's SCT code (CID 4014);
- Source of measurement group: every image of the breast.

The Current Requested Procedure Evidence Sequence (PS3.3 C.17.2.3) lists the
source images and every per-image result (SEG, SR, SC) by UID.  A second
version of the report (a late image reopened the exam) names the first in the
Predecessor Documents Sequence (PS3.3 C.17.2.2).  UIDs come from
:meth:`dicom_node.provenance.Provenance.derived_uid` keyed by the Study
Instance UID and the version, so writing the report again after a crash gives
the same object, not a second one.  The patient and study are copied from an
image of the study, as for every derived object.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import UID, Comprehensive3DSRStorage

from dicom_node.provenance import (
    DerivedObjectError,
    Provenance,
    check_series,
    copy_patient_study,
    derived_object_kwargs,
    highdicom_errors,
    reference_dataset,
)
from dicom_node.seg import BREAST, LATERALITY_CODES, MASS, MORPHOLOGICALLY_ABNORMAL_STRUCTURE
from dicom_node.sr import (
    ABSENT,
    AREA,
    LENGTH_DECIMALS,
    LOCAL_SCHEME,
    LONG_AXIS,
    MAMMOGRAPHY,
    MEAN,
    MILLIMETRE,
    NO_UNITS,
    PIXELS,
    PROBABILITY,
    PROBABILITY_DECIMALS,
    SPACING_METHODS,
    SQUARE_MILLIMETRE,
    local_scheme,
    observation_context,
    report_document,
)
from dicom_node.views import CC, MLO

DEFAULT_EXAM_SR_SERIES_NUMBER: Final = 9904
DEFAULT_EXAM_SR_SERIES_DESCRIPTION: Final = "AI exam summary (not for diagnostic use)"
PRESENT: Final[Code] = codes.SCT.Present  # SCT 52101004, CID 240
VIEW_MISSING: Final = Code("ViewMissing", LOCAL_SCHEME, "View not available")
LESION_COUNT: Final = Code("LesionCount", LOCAL_SCHEME, "Number of lesions found")
LESIONS_UNIT: Final = Code("{lesions}", "UCUM", "lesions")
#: CID 4014 codes of the two standard screening views.
VIEW_CONCEPTS: Final[dict[str, Code]] = {
    CC: codes.SCT.CranioCaudal,  # SCT 399162004
    MLO: Code("399368009", "SCT", "medio-lateral oblique"),
}
BREAST_NAMES: Final[dict[str, str]] = {"L": "Left breast", "R": "Right breast"}


class ExamReportError(DerivedObjectError):
    """An exam report that cannot be built (the reason says why)."""


@dataclass(frozen=True, kw_only=True)
class ExamLesion:
    """The largest-diameter view of one lesion of one image, as the job recorded it."""

    diameter: float  # mm with spacing, else pixels
    area: float  # mm2 with spacing, else pixels
    mean_probability: float
    in_mm: bool


@dataclass(frozen=True, kw_only=True)
class ExamImage:
    """One image of the study and what its job made of it (UIDs only, no patient data).

    ``segmented``: its results exist (False: SKIPPED or FAILED, which counts as
    a view not available); ``results``: kind ("seg", "sr", "sc") -> (SOP
    Class UID, Series Instance UID, SOP Instance UID) of each per-image result.
    """

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    laterality: str
    view: str
    segmented: bool
    lesions: Sequence[ExamLesion] = ()
    results: Mapping[str, tuple[str, str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class BreastFinding:
    """What the report says of one breast (also what the API's exam hook reports)."""

    laterality: str
    images: int
    segmented: int
    lesion_count: int
    largest: ExamLesion | None
    largest_image: ExamImage | None
    missing_views: tuple[str, ...]
    sources: tuple[ExamImage, ...] = ()  # every image of the breast

    @property
    def mass_found(self) -> bool | None:
        """True, False, or None when no image of the breast was segmented."""
        return None if not self.segmented else self.lesion_count > 0


def breast_findings(images: Sequence[ExamImage]) -> list[BreastFinding]:
    """Left, then right: images, lesions, the largest one and the standard views missing."""
    findings = []
    for laterality in ("L", "R"):
        own = [i for i in images if i.laterality == laterality]
        segmented = [i for i in own if i.segmented]
        lesions = [(lesion, image) for image in segmented for lesion in image.lesions]
        largest = max(lesions, key=lambda pair: pair[0].diameter, default=None)
        present = {i.view for i in segmented}
        findings.append(
            BreastFinding(
                laterality=laterality,
                images=len(own),
                segmented=len(segmented),
                lesion_count=len(lesions),
                largest=largest[0] if largest else None,
                largest_image=largest[1] if largest else None,
                missing_views=tuple(v for v in (CC, MLO) if v not in present),
                sources=tuple(own),
            )
        )
    return findings


def exam_provenance(provenance: Provenance, version: int) -> Provenance:
    """The provenance whose derived UIDs are those of version ``version`` of the exam report."""
    if version < 1:
        raise ValueError(f"version must be at least 1, got {version}")
    return provenance.for_result(f"exam/v{version}")


def exam_key(study_uid: str) -> Dataset:
    """The dataset the exam's UIDs are derived from: the study stands where a source would."""
    key = Dataset()
    key.SOPInstanceUID = study_uid
    return key


def exam_report_uids(provenance: Provenance, study_uid: str, version: int) -> tuple[UID, UID]:
    """(Series Instance UID, SOP Instance UID) of version ``version`` of the study's report."""
    derived = exam_provenance(provenance, version)
    key = exam_key(study_uid)
    return derived.derived_uid(key, "sr.series"), derived.derived_uid(key, "sr.instance")


def build_exam_report(
    *,
    header: Dataset,
    images: Sequence[ExamImage],
    provenance: Provenance,
    version: int = 1,
    series_number: int = DEFAULT_EXAM_SR_SERIES_NUMBER,
    series_description: str = DEFAULT_EXAM_SR_SERIES_DESCRIPTION,
) -> Dataset:
    """The exam's Comprehensive 3D SR (TID 1500), one group per breast.

    ``header`` is the header of one image of the study (its patient and study
    modules are copied); ``images`` every image of the study the node received.
    """
    check_series(series_number, series_description)
    study_uid = str(header.get("StudyInstanceUID", "") or "")
    if not study_uid:
        raise ExamReportError("the header has no Study Instance UID")
    if not images:
        raise ExamReportError("an exam report needs at least one image")
    derived = exam_provenance(provenance, version)
    key = exam_key(study_uid)
    algorithm = hd.sr.AlgorithmIdentification(
        name=provenance.model_name, version=provenance.model_version
    )
    ordered = sorted(images, key=lambda i: i.sop_instance_uid)
    with highdicom_errors(ExamReportError, "the exam report"):
        groups = [
            _breast_group(finding, derived, key, algorithm) for finding in breast_findings(ordered)
        ]
        report = hd.sr.MeasurementReport(
            observation_context=observation_context(provenance),
            procedure_reported=MAMMOGRAPHY,
            imaging_measurements=groups,
        )
        previous = []
        if version > 1:
            series, instance = exam_report_uids(provenance, study_uid, version - 1)
            previous.append(_reference(study_uid, series, Comprehensive3DSRStorage, instance))
        sr = report_document(
            evidence=_evidence(header, ordered),
            content=report[0],
            is_complete=True,
            is_final=False,
            is_verified=False,
            previous_versions=previous or None,
            **derived_object_kwargs(
                "sr",
                derived,
                key,
                series_number=series_number,
                series_description=series_description,
            ),
        )
    copy_patient_study(header, sr)
    sr.CodingSchemeIdentificationSequence = [local_scheme(provenance)]
    return sr


def _reference(study_uid: str, series_uid: str, sop_class_uid: str, sop_uid: str) -> Dataset:
    item = Dataset()
    item.StudyInstanceUID = study_uid
    item.SeriesInstanceUID = series_uid
    item.SOPClassUID = sop_class_uid
    item.SOPInstanceUID = sop_uid
    return item


def _evidence(header: Dataset, images: Sequence[ExamImage]) -> list[Dataset]:
    """Every source image and every per-image result, by UID only.

    The header's image goes first as highdicom wants it (it reads the patient
    and study there: placeholders, :func:`dicom_node.provenance.reference_dataset`).
    """
    study_uid = str(header.StudyInstanceUID)
    evidence = [reference_dataset(header)]
    for image in images:
        if image.sop_instance_uid != header.get("SOPInstanceUID"):
            evidence.append(
                _reference(
                    study_uid,
                    image.series_instance_uid,
                    image.sop_class_uid,
                    image.sop_instance_uid,
                )
            )
        for kind in sorted(image.results):
            sop_class, series, sop = image.results[kind]
            evidence.append(_reference(study_uid, series, sop_class, sop))
    return evidence


def _source(image: ExamImage) -> hd.sr.SourceImageForMeasurementGroup:
    return hd.sr.SourceImageForMeasurementGroup(image.sop_class_uid, image.sop_instance_uid)


def _breast_group(
    finding: BreastFinding,
    provenance: Provenance,
    key: Dataset,
    algorithm: hd.sr.AlgorithmIdentification,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 for one breast: mass present or absent, the largest lesion, missing views."""
    laterality = finding.laterality
    site = hd.sr.FindingSite(anatomic_location=BREAST, laterality=LATERALITY_CODES[laterality])
    evaluations = []
    if finding.mass_found is not None:
        evaluations.append(
            hd.sr.QualitativeEvaluation(name=MASS, value=PRESENT if finding.mass_found else ABSENT)
        )
    for view in finding.missing_views:
        evaluations.append(
            hd.sr.QualitativeEvaluation(name=VIEW_MISSING, value=VIEW_CONCEPTS[view])
        )
    measurements = []
    if finding.segmented:
        measurements.append(
            hd.sr.Measurement(name=LESION_COUNT, value=finding.lesion_count, unit=LESIONS_UNIT)
        )
    largest, image = finding.largest, finding.largest_image
    if largest is not None and image is not None:
        seen = [hd.sr.SourceImageForMeasurement(image.sop_class_uid, image.sop_instance_uid)]
        method = SPACING_METHODS["PixelSpacing" if largest.in_mm else None]
        length_unit = MILLIMETRE if largest.in_mm else PIXELS
        measurements += [
            hd.sr.Measurement(
                name=LONG_AXIS,
                value=round(largest.diameter, LENGTH_DECIMALS),
                unit=length_unit,
                method=method,
                referenced_images=seen,
            ),
            hd.sr.Measurement(
                name=AREA,
                value=round(largest.area, LENGTH_DECIMALS),
                unit=SQUARE_MILLIMETRE if largest.in_mm else PIXELS,
                method=method,
                referenced_images=seen,
            ),
            hd.sr.Measurement(
                name=PROBABILITY,
                value=round(largest.mean_probability, PROBABILITY_DECIMALS),
                unit=NO_UNITS,
                derivation=MEAN,
                referenced_images=seen,
            ),
        ]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            identifier=BREAST_NAMES[laterality],
            uid=provenance.derived_uid(key, f"sr.exam.{laterality}.tracking"),
        ),
        finding_type=MASS,
        finding_category=MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        finding_sites=[site],
        algorithm_id=algorithm,
        measurements=measurements or None,
        qualitative_evaluations=evaluations or None,
        source_images=[_source(i) for i in finding.sources] or None,
    )
