"""The DICOM Segmentation (SEG) of a mammogram's masses (PS3.3 A.51, C.8.20).

One BINARY segment "Mass" (SCT 4147007, category SCT 49755003 "Morphologically
abnormal structure") over the source matrix, in the breast (SCT 76752008)
qualified by the source's laterality, in a new series of the source's study,
referencing the source image; the AI model is named in the Segmentation
Algorithm Identification Sequence (PS3.3 C.8.20.2, CID 7162).

Decisions:

- An empty mask gives no SEG (None).  A SEG can be valid with an empty frame,
  but its Segment Sequence would then declare a "Mass" segment that contains
  nothing; viewers list such segments as findings.  "No mass found" is said by
  the Secondary Capture and the SR instead.
- A 2-D source (no Image Orientation (Patient), e.g. every MG image) gives a
  SEG without Frame of Reference: the source's Frame of Reference locates
  nothing without image position and orientation, and carrying it would make
  Pixel Measures' Slice Thickness mandatory (PS3.3 C.7.6.16.2.1), which a
  projection has not got.  The SEG is tied to its source by the Derivation
  Image and Referenced Series Sequences.  Its Shared Functional Groups still
  carry Pixel Measures and Plane Orientation (Patient) (PS3.3 C.7.6.16.2.1,
  C.7.6.16.2.4; may be present without a Frame of Reference, A.51.5.1),
  because the OHIF Viewer (Cornerstone's SEG loader) loads no SEG without
  them: Pixel Measures has the source's spacing and, as Slice Thickness, the
  depth the projection integrates over, the source's Body Part Thickness
  (compressed breast, PS3.3 C.8.7.8); without both (digitised film) the SEG
  gets no Pixel Measures, as highdicom 0.28 reads one back only with Slice
  Thickness, and OHIF cannot show it.  Plane Orientation is the identity
  1\\0\\0\\0\\1\\0, saying only that the SEG's rows and columns run as its
  source's (no Plane Position: there is no patient position to state).
  Laterality lives in the segment's anatomic region modifier
  (PS3.3 10.2.1): dciodvfy flags General Series Laterality (Type 2C) in such
  a SEG as present although its condition is not met.
- highdicom never sees patient identity: it would log a name it finds
  unusual.  Patient and study attributes are copied verbatim afterwards.
- Every UID the SEG introduces is under the site's root: highdicom's own
  Dimension Organization UID (PS3.3 C.7.6.17) is replaced.
- Contributing Equipment (PS3.3 C.12.1.1.5) lists the source's acquisition
  equipment, the model (Processing Equipment, model version as Software
  Versions) and highdicom (IHE AI Results algorithm identification).
- Series, equipment and transfer syntax are those of every derived object
  (:func:`dicom_node.provenance.derived_object_kwargs`).
"""

from __future__ import annotations

from typing import Final

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from dicom_node.provenance import (
    DerivedObjectError,
    Provenance,
    check_series,
    check_source,
    copy_patient_orientation,
    copy_patient_study,
    derived_object_kwargs,
    highdicom_errors,
    reference_dataset,
    source_laterality,
)
from dicom_node.spacing import pixel_spacing

DEFAULT_SEG_SERIES_DESCRIPTION: Final = "AI mass segmentation (not for diagnostic use)"
SEGMENT_NUMBER: Final = 1
SEGMENT_LABEL: Final = "Mass"
#: Recommended Display CIELab Value (PS3.3 C.8.20.2): red, sRGB (255, 0, 0), as the SC's
#: overlay draws the mass. Viewers (OHIF) otherwise pick a colour of their own and say so.
DISPLAY_COLOR: Final = hd.color.CIELabColor(53.24, 80.09, 67.2)
SEG_CONTENT_LABEL: Final = "MAMMOSEG"
SEG_CONTENT_DESCRIPTION: Final = "AI mass segmentation"
MASS: Final[Code] = codes.SCT.Mass  # SCT 4147007
MORPHOLOGICALLY_ABNORMAL_STRUCTURE: Final[Code] = codes.SCT.MorphologicallyAbnormalStructure
BREAST: Final[Code] = codes.SCT.Breast  # SCT 76752008
#: CID 244 Laterality: the modifier of the anatomic region (PS3.3 10.2.1).
LATERALITY_CODES: Final[dict[str, Code]] = {
    "L": Code("7771000", "SCT", "Left"),
    "R": Code("24028007", "SCT", "Right"),
}
#: Algorithm families of CID 7162 by name; anything else is refused.
ALGORITHM_FAMILIES: Final[dict[str, Code]] = {
    "Artificial Intelligence": codes.DCM.ArtificialIntelligence,
}


class SegmentationError(DerivedObjectError):
    """A SEG that cannot be built from this source and mask (the reason says why)."""


def build_segmentation(
    *,
    source: Dataset,
    mask: np.ndarray,
    provenance: Provenance,
    series_number: int,
    series_description: str = DEFAULT_SEG_SERIES_DESCRIPTION,
) -> Dataset | None:
    """A BINARY SEG of ``mask`` (bool, source rows x columns), or None if it is empty.

    The SEG joins the source's patient and study (copied verbatim, PS3.3
    C.7.1.1, C.7.2.1), opens a new series (``series_number``), and is written
    in Explicit VR Little Endian with 1-bit packed frames (PS3.5 8.1.1).
    """
    check_series(series_number, series_description)
    check_source(source)
    _check_mask(mask, source)
    if not mask.any():
        return None
    laterality = source_laterality(source)
    anatomic_region = hd.sr.CodedConcept(BREAST.value, BREAST.scheme_designator, BREAST.meaning)
    if laterality is not None:
        modifier = LATERALITY_CODES[laterality]
        anatomic_region.AnatomicRegionModifierSequence = [
            hd.sr.CodedConcept(modifier.value, modifier.scheme_designator, modifier.meaning)
        ]
    description = hd.seg.SegmentDescription(
        segment_number=SEGMENT_NUMBER,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        segmented_property_type=MASS,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm_identification(provenance),
        anatomic_regions=[anatomic_region],
        display_color=DISPLAY_COLOR,
    )
    with highdicom_errors(SegmentationError, "the SEG from this source"):
        seg = hd.seg.Segmentation(
            source_images=[reference_dataset(source)],
            pixel_array=mask.astype(np.bool_, copy=False),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[description],
            content_label=SEG_CONTENT_LABEL,
            content_description=SEG_CONTENT_DESCRIPTION,
            **derived_object_kwargs(
                "seg",
                provenance,
                source,
                series_number=series_number,
                series_description=series_description,
            ),
        )
    _use_own_dimension_organization_uid(seg, source, provenance)
    if "ImageOrientationPatient" not in source and "PlanePositionSequence" not in source:
        _add_projection_geometry(seg, source)
    copy_patient_study(source, seg)
    copy_patient_orientation(source, seg)
    return seg


def algorithm_identification(provenance: Provenance) -> hd.AlgorithmIdentificationSequence:
    """Algorithm Identification (PS3.3 C.8.20.2) from the model contract."""
    family = ALGORITHM_FAMILIES.get(provenance.algorithm_family)
    if family is None:
        raise SegmentationError(
            f"unknown algorithm family {provenance.algorithm_family!r}: "
            f"expected one of {sorted(ALGORITHM_FAMILIES)}"
        )
    return hd.AlgorithmIdentificationSequence(
        name=provenance.model_name, family=family, version=provenance.model_version
    )


def _use_own_dimension_organization_uid(
    seg: Dataset, source: Dataset, provenance: Provenance
) -> None:
    """Replace highdicom's Dimension Organization UID by one under the site's root."""
    uid = provenance.derived_uid(source, "seg.dimension-organization")
    for keyword in ("DimensionOrganizationSequence", "DimensionIndexSequence"):
        for item in seg.get(keyword, []):
            if "DimensionOrganizationUID" in item:
                item.DimensionOrganizationUID = uid


#: Rows along +x, columns along +y: the SEG's matrix is its source's, neither turned nor flipped.
IDENTITY_ORIENTATION: Final = ["1", "0", "0", "0", "1", "0"]


def _add_projection_geometry(seg: Dataset, source: Dataset) -> None:
    """Shared Pixel Measures and Plane Orientation for the SEG of a 2-D image (see above)."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    spacing, thickness = pixel_spacing(source), _body_part_thickness(source)
    if spacing is not None and thickness is not None:
        measures = Dataset()
        measures.PixelSpacing = [f"{spacing.row_mm:.6g}", f"{spacing.column_mm:.6g}"]
        measures.SliceThickness = f"{thickness:.6g}"
        shared.PixelMeasuresSequence = [measures]
    orientation = Dataset()
    orientation.ImageOrientationPatient = IDENTITY_ORIENTATION
    shared.PlaneOrientationSequence = [orientation]


def _body_part_thickness(source: Dataset) -> float | None:
    try:
        value = float(source.get("BodyPartThickness"))
    except (TypeError, ValueError):
        return None
    return value if 0 < value < float("inf") else None


def _check_mask(mask: np.ndarray, source: Dataset) -> None:
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
        raise ValueError("mask must be a bool numpy array")
    expected = (int(source.get("Rows", 0)), int(source.get("Columns", 0)))
    if mask.shape != expected:
        raise ValueError(f"mask shape {mask.shape} does not match the source matrix {expected}")
