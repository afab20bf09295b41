"""Which breast and which view a mammogram shows (PS3.3 C.8.11.2, C.8.11.5, CID 4014).

A screening exam is four images: left and right breast, each cranio-caudal (CC)
and medio-lateral oblique (MLO).  Modalities say so in three places, and not
all of them fill every one:

- the breast: Image Laterality (0020,0062, DX Anatomy Imaged), else the
  series' Laterality (0020,0060, a digitised-film Secondary Capture has only
  that): :func:`dicom_node.provenance.source_laterality`;
- the view: the View Code Sequence (0054,0220, CID 4014 "View for
  Mammography"), whose SNOMED CT code is the standard's answer; else View
  Position (0018,5101), a free CS value ("CC", "MLO", "XCCL", "ML", ...).

Views other than CC and MLO (XCCL, ML, LM, spot compressions, ...) keep their
short name and count as "other" for an exam: they are images of the breast,
not one of the four standard views.  Nothing here is patient data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from pydicom.dataset import Dataset

from dicom_node.provenance import source_laterality

CC: Final = "CC"
MLO: Final = "MLO"
#: The four standard screening views, in the order an exam lists them.
STANDARD_VIEWS: Final[tuple[str, ...]] = ("L-CC", "L-MLO", "R-CC", "R-MLO")
#: The tags an admission reads to know the view (the header only).
VIEW_KEYWORDS: Final[tuple[str, ...]] = (
    "ImageLaterality",
    "Laterality",
    "ViewPosition",
    "ViewCodeSequence",
)

#: CID 4014 codes (SNOMED CT, and the SNOMED-DICOM SRT codes older modalities send).
VIEW_CODES: Final[dict[tuple[str, str], str]] = {
    ("SCT", "399162004"): CC,
    ("SRT", "R-10242"): CC,
    ("SCT", "399368009"): MLO,
    ("SRT", "R-10226"): MLO,
    ("SCT", "399260004"): "ML",
    ("SRT", "R-10224"): "ML",
    ("SCT", "399352003"): "LM",
    ("SRT", "R-10228"): "LM",
    ("SCT", "399099002"): "LMO",
    ("SRT", "R-10230"): "LMO",
    ("SCT", "399192008"): "XCCL",
    ("SRT", "R-1024A"): "XCCL",
    ("SCT", "399101009"): "XCCM",
    ("SRT", "R-1024B"): "XCCM",
    ("SCT", "399196006"): "FB",
    ("SRT", "R-10244"): "FB",
    ("SCT", "399188001"): "SIO",
    ("SRT", "R-102D0"): "SIO",
    ("SCT", "441555000"): "CV",
    ("SRT", "R-40AAA"): "CV",
}
#: At most this many characters of an unknown View Position are kept (CS is 16).
MAX_VIEW_LENGTH: Final = 16


@dataclass(frozen=True)
class BreastView:
    """``laterality`` "L", "R" or "" (unknown); ``view`` "CC", "MLO", another short name, or ""."""

    laterality: str
    view: str

    @property
    def slot(self) -> str | None:
        """ "L-CC" ... "R-MLO" for a standard view of a known breast, else None ("other")."""
        name = f"{self.laterality}-{self.view}"
        return name if name in STANDARD_VIEWS else None

    @property
    def label(self) -> str:
        """What a listing shows: "L-CC", "R-XCCL", "?-MLO", "" for nothing known."""
        if not self.laterality and not self.view:
            return ""
        return f"{self.laterality or '?'}-{self.view or '?'}"


def view_of(ds: Dataset) -> str:
    """CC, MLO, another view's short name, or "" (PS3.3 C.8.11.5, C.8.11.7).

    The View Code Sequence wins: its code is defined, View Position is free text.
    """
    for item in ds.get("ViewCodeSequence") or ():
        scheme = str(item.get("CodingSchemeDesignator", "") or "").strip().upper()
        value = str(item.get("CodeValue", "") or "").strip().upper()
        if (scheme, value) in VIEW_CODES:
            return VIEW_CODES[(scheme, value)]
    position = str(ds.get("ViewPosition", "") or "").strip().upper()
    return position[:MAX_VIEW_LENGTH]


def breast_view(ds: Dataset) -> BreastView:
    """The breast and the view of a mammogram's header; "" where it does not say."""
    return BreastView(laterality=source_laterality(ds) or "", view=view_of(ds))
