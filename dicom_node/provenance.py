"""Who made a derived object, and how it joins the source's patient and study.

Every SEG, Secondary Capture and SR the node writes carries the same
provenance: the AI model (Algorithm Identification, PS3.3 C.8.20.2 /
CID 7162), the equipment that ran it (General and Enhanced General Equipment,
PS3.3 C.7.5.1, C.7.5.2), and UIDs under the site's root (PS3.5 9).  Nothing
here is defaulted that a site must decide: model name and version, software
version and UID root are required.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from copy import deepcopy
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid

#: PS3.5 9.1: a UID is at most 64 characters; generate_uid needs room after the root.
MAX_UID_ROOT_LENGTH = 40
#: LO (PS3.5 6.2): 64 characters at most.
MAX_LONG_STRING = 64
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
    """

    model_name: str
    model_version: str
    algorithm_family: str = "Artificial Intelligence"
    manufacturer: str = "mammoseg project"
    software_version: str
    device_serial_number: str = "0"
    uid_root: str
    institution_name: str | None = None

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
