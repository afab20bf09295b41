"""Who made a derived object, and how it joins the source's patient and study.

Every SEG, Secondary Capture and SR the node writes carries the same
provenance: the AI model (Algorithm Identification, PS3.3 C.8.20.2 /
CID 7162), the equipment that ran it (General and Enhanced General Equipment,
PS3.3 C.7.5.1, C.7.5.2), and UIDs under the site's root (PS3.5 9).  Nothing
here is defaulted that a site must decide: model name and version, software
version and UID root are required.

The helpers below are shared by the builders: the patient and study copied
verbatim from the source (PS3.3 C.7.1.1, C.7.2.1, C.7.2.2), the source's
laterality and a Patient Orientation worth copying, the reference dataset
handed to highdicom without pixel data or patient identity, the series
checks, and the Contributing Equipment item that names the model (PS3.3
C.12.1.1.5; IHE AI Results: every result says which algorithm and version
made it).

The series and equipment arguments that highdicom's ``SOPClass`` takes for
every object type (series and instance UIDs and numbers, General Equipment,
transfer syntax, Contributing Equipment) are made in one place,
:func:`derived_object_kwargs`, and every builder wraps its highdicom
constructor in :func:`highdicom_errors`, which turns what highdicom raises
into the builder's :class:`DerivedObjectError` with a readable reason.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass, replace
from typing import Final, Literal, TypedDict, get_args

import highdicom as hd
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from dicom_node.errors import DicomNodeError

#: PS3.5 9.1: a UID is at most 64 characters; generate_uid needs room after the root.
MAX_UID_ROOT_LENGTH = 40
#: LO (PS3.5 6.2): 64 characters at most.
MAX_LONG_STRING = 64
#: ST (PS3.5 6.2): 1024 characters at most.
MAX_SHORT_TEXT: Final = 1024
#: IS (PS3.5 6.2): series numbers are positive 32-bit integers here.
MAX_SERIES_NUMBER: Final = 2**31 - 1
#: PS3.16 CID 7005: "Processing Equipment", equipment that processed composite
#: instances to create new ones: the AI model, for every derived object.
PROCESSING_EQUIPMENT: Final = codes.DCM.ProcessingEquipment  # DCM 109102
#: Every derived object is the only instance, number 1, of its own series.
RESULT_INSTANCE_NUMBER: Final = 1
#: What highdicom raises for arguments or a source it cannot use; each builder
#: turns these into its :class:`DerivedObjectError` (:func:`highdicom_errors`).
HIGHDICOM_ERRORS: Final = (ValueError, TypeError, AttributeError, KeyError, IndexError)

#: The derived objects, as the first part of their UIDs' kinds (:meth:`Provenance.derived_uid`).
ResultKind = Literal["seg", "sc", "sr"]
RESULT_KINDS: Final[tuple[str, ...]] = get_args(ResultKind)
# Components are 0 or digits without a leading zero (PS3.5 9.1); the root ends with '.'.
_UID_ROOT = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*\.$")

#: Patient (C.7.1.1), General Study (C.7.2.1) and Patient Study (C.7.2.2)
#: attributes copied verbatim from the source, so that a derived object lands
#: in the same patient and study at the PACS (PS3.3 C.7.1, C.7.2).
PATIENT_STUDY_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "OtherPatientIDsSequence",
    "PatientComments",
    "PatientSpeciesDescription",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
    "ProcedureCodeSequence",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "AdmissionID",
)


#: Laterality of a paired body part (PS3.3 C.7.3.1 Laterality, C.8.11.2 Image Laterality).
LATERALITY_VALUES: tuple[str, ...] = ("L", "R")
#: Attributes a derived object needs from its source to reference it (PS3.3 C.7.6.1).
SOURCE_KEYWORDS: tuple[str, ...] = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "SOPClassUID",
    "Rows",
    "Columns",
)
# Patient Orientation values are letters of A, P, R, L, H, F (PS3.3 C.7.6.1.1.1).
_PATIENT_ORIENTATION_VALUE = re.compile(r"^[APRLHF]+$")
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Not handed to highdicom for a 2-D source (no Image Orientation (Patient)):
# see dicom_node.seg for why a projection's SEG has no Frame of Reference.
_SPATIAL_KEYWORDS = (
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    "PixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
)
#: Patient and study attributes highdicom reads from a reference dataset;
#: they get empty placeholders there (see :func:`reference_dataset`).
_PLACEHOLDER_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


class DerivedObjectError(DicomNodeError):
    """A SEG, SC or SR that cannot be derived from this source (the reason says why)."""


def _check_text(name: str, value: object, *, limit: int = MAX_LONG_STRING) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"Provenance.{name} must be a non-empty string")
    if len(value) > limit:
        raise ValueError(f"Provenance.{name} must be at most {limit} characters (LO)")
    if "\\" in value or any(ch in value for ch in "\r\n\f"):
        raise ValueError(f"Provenance.{name} must not contain backslashes or line breaks")


@dataclass(frozen=True, kw_only=True)
class Provenance:
    """The model and equipment behind every object the node derives.

    ``uid_root`` is the site's UID prefix (PS3.5 9), at most 40 characters and
    ending with '.', so that generated UIDs stay within 64 characters.

    ``result_key`` names one run on one source beyond its SOP Instance UID
    (the node: the content hash and the reprocess generation of the job; see
    :meth:`derived_uid`); it stays empty when there is nothing more to say.
    """

    model_name: str
    model_version: str
    algorithm_family: str = "Artificial Intelligence"
    manufacturer: str = "mammoseg project"
    software_version: str
    device_serial_number: str = "0"
    uid_root: str
    institution_name: str | None = None
    result_key: str = ""

    def __post_init__(self) -> None:
        for name in (
            "model_name",
            "model_version",
            "algorithm_family",
            "manufacturer",
            "software_version",
            "device_serial_number",
        ):
            _check_text(name, getattr(self, name))
        if self.institution_name is not None:
            _check_text("institution_name", self.institution_name)
        if not isinstance(self.uid_root, str) or not _UID_ROOT.match(self.uid_root):
            raise ValueError(
                "Provenance.uid_root must be a DICOM UID prefix ending with '.', "
                f"e.g. '1.2.826.0.1.3680043.10.1234.', got {self.uid_root!r}"
            )
        if len(self.uid_root) > MAX_UID_ROOT_LENGTH:
            raise ValueError(
                f"Provenance.uid_root must be at most {MAX_UID_ROOT_LENGTH} characters"
            )

    def new_uid(self) -> UID:
        """A fresh UID under ``uid_root`` (PS3.5 9)."""
        return generate_uid(prefix=self.uid_root)

    def for_result(self, key: str) -> Provenance:
        """This provenance for one run: ``key`` joins the result UIDs' inputs."""
        return replace(self, result_key=key)

    def derived_uid(self, source: Dataset, kind: str) -> UID:
        """The UID of one result of ``source``: the same inputs give the same UID.

        A hash (``generate_uid`` with entropy sources, PS3.5 B.2) of the
        source's SOP Instance UID, :attr:`result_key`, the model name and
        version and ``kind`` (e.g. "seg.series", "sr.instance"), under
        ``uid_root``. A source sent again therefore gives results with the
        UIDs it had, which a PACS files as the same objects, not as new ones;
        a new model version, new content or a reprocess give new UIDs. A
        source without a SOP Instance UID gets fresh random UIDs.
        """
        source_uid = str(source.get("SOPInstanceUID", "") or "")
        if not source_uid:
            return self.new_uid()
        inputs = [
            "mammoseg result",
            source_uid,
            self.result_key,
            self.model_name,
            self.model_version,
            kind,
        ]
        return generate_uid(prefix=self.uid_root, entropy_srcs=inputs)

    @property
    def device_uid(self) -> UID:
        """A stable UID for the model as an SR device observer (PS3.16 TID 1004).

        The same model, version and equipment always give the same UID under
        the site's root, so reports by one algorithm can be grouped.
        """
        identity = [
            self.manufacturer,
            self.model_name,
            self.model_version,
            self.device_serial_number,
        ]
        return generate_uid(prefix=self.uid_root, entropy_srcs=identity)


def contributing_equipment(provenance: Provenance) -> hd.ContributingEquipment:
    """The AI model as Contributing Equipment (PS3.3 C.12.1.1.5, CID 7005).

    Software Versions carries the model version, Manufacturer's Model Name
    the model name (IHE AI Results, algorithm identification); the node's
    own version is in the General Equipment module.
    """
    return hd.ContributingEquipment(
        manufacturer=provenance.manufacturer,
        purpose_of_reference=PROCESSING_EQUIPMENT,
        manufacturer_model_name=provenance.model_name,
        software_versions=provenance.model_version,
        device_serial_number=provenance.device_serial_number,
        institution_name=provenance.institution_name,
        contribution_description=(
            f"AI mass segmentation by {provenance.model_name} {provenance.model_version} "
            f"(mammoseg {provenance.software_version})"
        )[:MAX_SHORT_TEXT],
    )


class DerivedObjectKwargs(TypedDict):
    """The keyword arguments of highdicom's ``SOPClass`` that every derived object shares.

    Named as highdicom names them, so a builder passes ``**kwargs`` to any
    SOP class constructor (SEG, SC, SR) plus its object-specific arguments.
    """

    series_instance_uid: UID
    series_number: int
    series_description: str
    sop_instance_uid: UID
    instance_number: int
    manufacturer: str
    manufacturer_model_name: str
    software_versions: str
    device_serial_number: str
    institution_name: str | None
    transfer_syntax_uid: UID
    contributing_equipment: list[hd.ContributingEquipment]


def derived_object_kwargs(
    kind: ResultKind,
    provenance: Provenance,
    source: Dataset,
    *,
    series_number: int,
    series_description: str,
) -> DerivedObjectKwargs:
    """The series and equipment of the ``kind`` result of ``source`` (PS3.3 C.7.3.1, C.7.5.1).

    A new series (its UIDs derived from the source, ``"{kind}.series"`` and
    ``"{kind}.instance"``: :meth:`Provenance.derived_uid`) holding instance 1;
    General Equipment names the node (manufacturer, the model as
    Manufacturer's Model Name, the node's version as Software Versions) and
    Contributing Equipment the model (:func:`contributing_equipment`).
    highdicom encodes in Explicit VR Little Endian; a builder may re-encode.
    Call it inside :func:`highdicom_errors`, as highdicom validates the values.
    """
    if kind not in RESULT_KINDS:
        raise ValueError(f"result kind must be one of {RESULT_KINDS}, got {kind!r}")
    return DerivedObjectKwargs(
        series_instance_uid=provenance.derived_uid(source, f"{kind}.series"),
        series_number=series_number,
        series_description=series_description,
        sop_instance_uid=provenance.derived_uid(source, f"{kind}.instance"),
        instance_number=RESULT_INSTANCE_NUMBER,
        manufacturer=provenance.manufacturer,
        manufacturer_model_name=provenance.model_name,
        software_versions=provenance.software_version,
        device_serial_number=provenance.device_serial_number,
        institution_name=provenance.institution_name,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[contributing_equipment(provenance)],
    )


@contextmanager
def highdicom_errors(error: type[DerivedObjectError], what: str) -> Iterator[None]:
    """Raise ``error("cannot build {what}: ...")`` for what highdicom raises inside.

    highdicom reports a source or argument it cannot use as one of
    :data:`HIGHDICOM_ERRORS`; the node reports it as a result that cannot be
    derived, with highdicom's reason.  Other exceptions pass unchanged.
    """
    try:
        yield
    except HIGHDICOM_ERRORS as exc:
        raise error(f"cannot build {what}: {exc}") from exc


def check_series(series_number: int, series_description: str) -> None:
    """Series Number (IS) and Series Description (LO) of a new series (PS3.3 C.7.3.1)."""
    if isinstance(series_number, bool) or not isinstance(series_number, int):
        raise ValueError(f"series_number must be an int, got {type(series_number).__name__}")
    if not 1 <= series_number <= MAX_SERIES_NUMBER:
        raise ValueError(f"series_number must be in 1..2^31-1 (IS), got {series_number}")
    if not isinstance(series_description, str) or not series_description.strip():
        raise ValueError("series_description must be a non-empty string")
    if len(series_description) > MAX_LONG_STRING:
        raise ValueError("series_description must be at most 64 characters (LO)")


def copy_patient_study(
    source: Dataset, target: Dataset, keywords: Iterable[str] = PATIENT_STUDY_KEYWORDS
) -> None:
    """Copy the Patient, General Study and Patient Study attributes verbatim.

    highdicom rebuilds these from a few arguments; copying the elements
    themselves keeps values, empty Type 2 values and issuers exactly as the
    PACS sent them.  Attributes absent from the source are left as the
    builder set them.  Specific Character Set follows, so names keep their
    encoding (PS3.3 C.12.1.1.2).
    """
    for keyword in keywords:
        if keyword in source:
            element = source[keyword]
            target.add_new(element.tag, element.VR, deepcopy(element.value))
    if "SpecificCharacterSet" in source:
        target.SpecificCharacterSet = source.SpecificCharacterSet


def check_source(source: Dataset) -> None:
    """Refuse a source that a derived object could not reference (PS3.3 C.7.6.1)."""
    missing = [k for k in SOURCE_KEYWORDS if not source.get(k)]
    if missing:
        raise DerivedObjectError(
            f"the source lacks {', '.join(missing)}: a derived object could not reference it"
        )


def source_laterality(source: Dataset) -> str | None:
    """L or R from Image Laterality (C.8.11.2), else the series' Laterality (C.7.3.1)."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(source.get(keyword) or "").strip().upper()
        if value in LATERALITY_VALUES:
            return value
    return None


def patient_orientation(source: Dataset) -> tuple[str, str] | None:
    """The source's Patient Orientation if it is valid (PS3.3 C.7.6.1.1.1), else None.

    Some archives hold values such as "CC" that dciodvfy rightly refuses;
    those are not copied into derived objects.
    """
    value = source.get("PatientOrientation")
    if value is None or isinstance(value, str):
        return None
    values = [str(v).strip().upper() for v in value]
    if len(values) != 2 or not all(_PATIENT_ORIENTATION_VALUE.match(v) for v in values):
        return None
    return values[0], values[1]


def copy_patient_orientation(source: Dataset, target: Dataset) -> None:
    """Patient Orientation of the source if valid, else empty (Type 2C, PS3.3 C.7.6.1).

    highdicom 0.28 gives a SEG of a 2-D image none and refuses values such as
    A\\FR for an SC, so the builders set it afterwards.
    """
    orientation = patient_orientation(source)
    target.add_new("PatientOrientation", "CS", list(orientation) if orientation else None)


def reference_dataset(source: Dataset) -> Dataset:
    """The source's attributes without pixel data or patient identity, for highdicom.

    highdicom reads patient and study attributes from its source or reference
    dataset and logs names it finds unusual; it gets empty placeholders and
    the real values are copied afterwards (:func:`copy_patient_study`).
    Elements are shared, not copied: the result must not be modified in place.
    """
    excluded = {tag_for_keyword(k) for k in (*_PIXEL_DATA_KEYWORDS, *PATIENT_STUDY_KEYWORDS)}
    if "ImageOrientationPatient" not in source and "PlanePositionSequence" not in source:
        excluded |= {tag_for_keyword(k) for k in _SPATIAL_KEYWORDS}
    reference = Dataset()
    for tag in source.keys():
        if tag not in excluded:
            reference.add(source[tag])
    if hasattr(source, "file_meta"):
        reference.file_meta = source.file_meta
    for keyword in _PLACEHOLDER_KEYWORDS:
        setattr(reference, keyword, "")
    check_source(source)
    reference.StudyInstanceUID = source.StudyInstanceUID
    return reference
