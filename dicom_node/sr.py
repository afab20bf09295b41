"""The measurement report: a Comprehensive 3D SR with TID 1500 (PS3.3 A.35.13, PS3.16 A.35.3).

One report per source image, in a new series of the source's study, built
with highdicom and validated by dciodvfy.  Its content tree:

- TID 1500 "Imaging Measurement Report", language, observation context with
  the model as device observer (TID 1004: its name, manufacturer, model
  name, serial number and a stable UID), procedure reported "Mammography";
- per lesion (a connected component of the mask above the minimum area,
  ``service.imaging.lesions``), two measurement groups sharing one
  tracking identifier ("Mass 1", ...) and tracking UID (TID 4108), and a
  third for viewers:

  1. TID 1410 Planar ROI referencing the SEG's "Mass" segment frame and the
     source image (Referenced Segmentation Frame + Source image for
     segmentation), with Area (SCT 42798000), Long axis (SCT 103339001, the
     largest diameter: maximum Feret diameter) and the mean probability
     (DCM 122157 "Probability", derivation SCT 373098007 "Mean", unit 1);
  2. TID 1410 Planar ROI whose region is the lesion's bounding box drawn on
     the source image (SCOORD POLYLINE, closed rectangle on pixel edges,
     geometric purpose SCT 75958009 "Bounded by", CID 219), with its Width
     (SCT 103355008) and Height (DCM 121207);
  3. TID 1501 with the Long axis again, inferred from (TID 300/320) its line on
     the source image: a SCOORD POLYLINE of two points, the ends of the
     Feret diameter.  OHIF 3 rebuilds only its own tools from an SR, found by
     the Tracking Identifier (``Cornerstone3DTools@^0.1.0:Length...``) and a
     SCOORD under the group's first NUM; so this group has that identifier
     and its own tracking UID, and OHIF shows it as a length (its Planar ROI
     siblings cannot carry a SCOORD under a NUM: TID 1419).

  All lesions lie in the one "Mass" segment of the SEG (the SEG has a single
  segment, see :mod:`dicom_node.seg`): the tracking identifier and the box
  tell them apart.  All three groups carry finding type Mass, finding category
  "Morphologically abnormal structure", finding site Breast with laterality
  and the algorithm (TID 4019: model name and version).
- "no mass found" is recorded as such: one TID 1501 group for the source
  image (Source of measurement group) with finding type Mass and the
  qualitative evaluation Mass (SCT 4147007) = Absent (SCT 272519000,
  CID 240), and no SEG is referenced (none is made for an empty mask).

Lengths and areas are in mm and mm2 (UCUM) from Pixel Spacing, else Imager
Pixel Spacing (the detector plane, PS3.3 10.7.1.3); each such measurement
says which in its Measurement Method (SCT 370129005), coded in the local
scheme ``99MAMMOSEG`` (declared in the Coding Scheme Identification Sequence,
PS3.3 C.12.1.1.4).  Without either attribute (e.g. digitised film) the
values are in pixels (UCUM ``{pixels}``) with method "No pixel spacing".

The SR has no Image Library (TID 1600 is optional): highdicom's only knows
modality-specific descriptors that a digitised-film Secondary Capture lacks;
every group references the source image itself, and the Current Requested
Procedure Evidence Sequence lists the source and the SEG.  The report is
COMPLETE, PRELIMINARY and UNVERIFIED (PS3.3 C.17.2): nobody has signed it.
As in the other builders highdicom sees no patient identity; the patient
and study are copied verbatim afterwards, and series and equipment are those
of every derived object (:func:`dicom_node.provenance.derived_object_kwargs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, Protocol, runtime_checkable

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import SegmentationStorage

from dicom_node.provenance import (
    DerivedObjectError,
    Provenance,
    check_series,
    check_source,
    copy_patient_study,
    derived_object_kwargs,
    highdicom_errors,
    reference_dataset,
    source_laterality,
)
from dicom_node.seg import (
    BREAST,
    LATERALITY_CODES,
    MASS,
    MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
    SEGMENT_NUMBER,
)
from dicom_node.spacing import PixelSpacing

DEFAULT_SR_SERIES_DESCRIPTION: Final = "AI mass measurements (not for diagnostic use)"
#: TID 1500 row 4, Procedure reported.
MAMMOGRAPHY: Final[Code] = codes.SCT.Mammography  # SCT 71651007

AREA: Final[Code] = codes.SCT.Area  # SCT 42798000, CID 7469
LONG_AXIS: Final[Code] = codes.SCT.LongAxis  # SCT 103339001, CID 7470
WIDTH: Final[Code] = codes.SCT.Width  # SCT 103355008, CID 7470
HEIGHT: Final[Code] = codes.DCM.Height  # DCM 121207, CID 7470
PROBABILITY: Final[Code] = codes.DCM.Probability  # DCM 122157
MEAN: Final[Code] = codes.SCT.Mean  # SCT 373098007, CID 7464
BOUNDED_BY: Final[Code] = codes.SCT.BoundedBy  # SCT 75958009, CID 219
ABSENT: Final[Code] = codes.SCT.Absent  # SCT 272519000, CID 240

MILLIMETRE: Final[Code] = codes.UCUM.Millimeter
SQUARE_MILLIMETRE: Final[Code] = codes.UCUM.SquareMillimeter
NO_UNITS: Final = Code("1", "UCUM", "no units")
PIXELS: Final = Code("{pixels}", "UCUM", "Pixels")

#: Local coding scheme for how lengths were obtained (PS3.16 8.2: "99" prefix).
LOCAL_SCHEME: Final = "99MAMMOSEG"
LOCAL_SCHEME_NAME: Final = "mammoseg local codes"
SPACING_METHODS: Final[dict[str | None, Code]] = {
    "PixelSpacing": Code("PixelSpacing", LOCAL_SCHEME, "Pixel Spacing (0028,0030)"),
    "ImagerPixelSpacing": Code(
        "ImagerPixSpacing", LOCAL_SCHEME, "Imager Pixel Spacing (0018,1164), detector plane"
    ),
    None: Code("NoPixelSpacing", LOCAL_SCHEME, "No pixel spacing: values in pixels"),
}
#: Decimals kept in the report: 0.01 mm or mm2, and 0.001 for a probability.
LENGTH_DECIMALS: Final = 2
PROBABILITY_DECIMALS: Final = 3
NO_MASS_IDENTIFIER: Final = "No mass"
LESION_IDENTIFIER: Final = "Mass {number}"
#: The long-axis line's group: Cornerstone3D's tag and tool first (what OHIF 3's SR
#: hydration matches, by prefix), then the lesion it measures.
LONG_AXIS_IDENTIFIER: Final = "Cornerstone3DTools@^0.1.0:Length:Mass {number}"


class _Box(Protocol):
    @property
    def top(self) -> int: ...
    @property
    def left(self) -> int: ...
    @property
    def bottom(self) -> int: ...
    @property
    def right(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def width(self) -> int: ...


@runtime_checkable
class Lesion(Protocol):
    """What the report reads of a measured lesion (``service.imaging.lesions.Lesion``).

    A protocol, so that this DICOM package does not import the array code above it.
    """

    @property
    def number(self) -> int: ...
    @property
    def pixel_count(self) -> int: ...
    @property
    def area_mm2(self) -> float | None: ...
    @property
    def diameter_px(self) -> float: ...
    @property
    def diameter_mm(self) -> float | None: ...
    @property
    def bbox(self) -> _Box: ...
    @property
    def height_mm(self) -> float | None: ...
    @property
    def width_mm(self) -> float | None: ...
    @property
    def mean_probability(self) -> float: ...
    @property
    def long_axis(self) -> tuple[tuple[float, float], tuple[float, float]] | None: ...


class ReportError(DerivedObjectError):
    """A measurement report that cannot be built (the reason says why)."""


def build_measurement_report(
    *,
    source: Dataset,
    lesions: Sequence[Lesion],
    spacing: PixelSpacing | None,
    segmentation: Dataset | None,
    provenance: Provenance,
    series_number: int,
    series_description: str = DEFAULT_SR_SERIES_DESCRIPTION,
) -> Dataset:
    """A Comprehensive 3D SR (TID 1500) of ``lesions``, or "no mass" if there are none.

    ``lesions`` come from ``measure_lesions`` (``service.imaging.lesions``) on
    the source matrix with ``spacing`` (None: pixel units); ``segmentation``
    is the SEG they were cut from, required when there is a lesion.
    """
    check_series(series_number, series_description)
    check_source(source)
    _check_lesions(source, lesions, spacing, segmentation)
    algorithm = hd.sr.AlgorithmIdentification(
        name=provenance.model_name, version=provenance.model_version
    )
    context = _context(source, algorithm)
    if lesions and segmentation is not None:
        groups: list[
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
            | hd.sr.MeasurementsAndQualitativeEvaluations
        ] = []
        for lesion in lesions:
            groups.extend(
                _lesion_groups(source, lesion, spacing, segmentation, provenance, context)
            )
    else:
        groups = [_no_mass_group(source, provenance, context)]
    with highdicom_errors(ReportError, "the measurement report"):
        report = hd.sr.MeasurementReport(
            observation_context=observation_context(provenance),
            procedure_reported=MAMMOGRAPHY,
            imaging_measurements=groups,
        )
        evidence = [reference_dataset(source)]
        if segmentation is not None and lesions:
            evidence.append(evidence_of(segmentation))
        sr = report_document(
            evidence=evidence,
            content=report[0],
            is_complete=True,
            is_final=False,
            is_verified=False,
            **derived_object_kwargs(
                "sr",
                provenance,
                source,
                series_number=series_number,
                series_description=series_description,
            ),
        )
    copy_patient_study(source, sr)
    sr.CodingSchemeIdentificationSequence = [local_scheme(provenance)]
    return sr


def report_document(*, content: Dataset, **kwargs: Any) -> hd.sr.Comprehensive3DSR:
    """``hd.sr.Comprehensive3DSR(content=content, **kwargs)``, without copying the tree.

    highdicom deep-copies the content tree and walks it twice (to parse its copy
    and to look for references): two thirds of the SR's build time, which grows
    by about 20 ms a lesion. It is given the root container with an empty
    Content Sequence instead; the tree then goes into the dataset as highdicom
    puts it there (the root's own elements, shared, not copied), and becomes its
    ``content``. The dataset is the same (tested against plain highdicom). The
    references highdicom would have checked against the evidence are the
    source and the SEG, which are always in it.
    """
    shell = Dataset()
    for element in content:
        if element.keyword != "ContentSequence":
            shell.add(element)
    shell.ContentSequence = []
    sr = hd.sr.Comprehensive3DSR(content=shell, **kwargs)
    sr.ContentSequence = content.ContentSequence
    sr._content = hd.sr.ContentSequence([content], is_root=True)
    return sr


class _Context:
    """What every group of one report shares: algorithm, finding site, source reference."""

    def __init__(self, algorithm: hd.sr.AlgorithmIdentification, site: hd.sr.FindingSite):
        self.algorithm = algorithm
        self.site = site


def _context(source: Dataset, algorithm: hd.sr.AlgorithmIdentification) -> _Context:
    laterality = source_laterality(source)
    site = hd.sr.FindingSite(
        anatomic_location=BREAST,
        laterality=LATERALITY_CODES[laterality] if laterality else None,
    )
    return _Context(algorithm, site)


def observation_context(provenance: Provenance) -> hd.sr.ObservationContext:
    """The model as the device observer (PS3.16 TID 1002/1004)."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=provenance.device_uid,
        name=provenance.model_name,
        manufacturer_name=provenance.manufacturer,
        model_name=f"{provenance.model_name} {provenance.model_version}",
        serial_number=provenance.device_serial_number,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def _lesion_groups(
    source: Dataset,
    lesion: Lesion,
    spacing: PixelSpacing | None,
    segmentation: Dataset,
    provenance: Provenance,
    context: _Context,
) -> list[
    hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
]:
    """The segment group, the bounding-box group (TID 1410 twice) and the long-axis group."""
    tracking_uid = provenance.derived_uid(source, f"sr.lesion.{lesion.number}.tracking")
    identifier = LESION_IDENTIFIER.format(number=lesion.number)
    method = SPACING_METHODS[spacing.source if spacing else None]
    length_unit = MILLIMETRE if spacing else PIXELS
    area, diameter, width, height = _values(lesion, spacing)
    common = {
        "finding_type": MASS,
        "finding_category": MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        "finding_sites": [context.site],
        "algorithm_id": context.algorithm,
    }
    segment = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(identifier=identifier, uid=tracking_uid),
        referenced_segment=_segment_reference(source, segmentation),
        measurements=[
            measurement(AREA, area, SQUARE_MILLIMETRE if spacing else PIXELS, method),
            measurement(LONG_AXIS, diameter, length_unit, method),
            hd.sr.Measurement(
                name=PROBABILITY,
                value=round(lesion.mean_probability, PROBABILITY_DECIMALS),
                unit=NO_UNITS,
                derivation=MEAN,
            ),
        ],
        **common,  # type: ignore[arg-type]
    )
    box = lesion.bbox
    # Pixel edges in (column, row), the top-left corner of the image at 0\0 (PS3.3 C.18.6.1.1).
    rectangle = np.array(
        [
            [box.left, box.top],
            [box.right, box.top],
            [box.right, box.bottom],
            [box.left, box.bottom],
            [box.left, box.top],
        ],
        dtype=np.float64,
    )
    bounding_box = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(identifier=identifier, uid=tracking_uid),
        referenced_region=hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=rectangle,
            source_image=hd.sr.SourceImageForRegion(source.SOPClassUID, source.SOPInstanceUID),
        ),
        geometric_purpose=BOUNDED_BY,
        measurements=[
            measurement(WIDTH, width, length_unit, method),
            measurement(HEIGHT, height, length_unit, method),
        ],
        **common,  # type: ignore[arg-type]
    )
    return [segment, bounding_box, _long_axis_group(source, lesion, spacing, provenance, common)]


def _long_axis_group(
    source: Dataset,
    lesion: Lesion,
    spacing: PixelSpacing | None,
    provenance: Provenance,
    common: dict[str, Any],
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501: the largest diameter again, inferred from its line on the source image.

    TID 300 lets a measurement name the coordinates it was inferred from (TID 320):
    a 2-point POLYLINE between the ends of the diameter, in (column, row) on pixel
    edges. A viewer that only rebuilds its own tools from an SR (OHIF 3, whose
    Cornerstone adapters look for the tool in the Tracking Identifier and then for a
    SCOORD under the group's first NUM) draws it as a length measurement: the
    identifier names its Length tool, so the group has a tracking UID of its own.
    """
    if lesion.long_axis is None:
        raise ReportError(f"lesion {lesion.number} was measured without its long axis")
    (row_a, col_a), (row_b, col_b) = lesion.long_axis
    line = np.array([[col_a, row_a], [col_b, row_b]], dtype=np.float64)
    diameter = _values(lesion, spacing)[1]
    method = SPACING_METHODS[spacing.source if spacing else None]
    long_axis = hd.sr.Measurement(
        name=LONG_AXIS,
        value=round(float(diameter), LENGTH_DECIMALS),
        unit=MILLIMETRE if spacing else PIXELS,
        method=method,
        referenced_coordinates=[
            hd.sr.CoordinatesForMeasurement(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                graphic_data=line,
                source_image=hd.sr.SourceImageForRegion(source.SOPClassUID, source.SOPInstanceUID),
            )
        ],
    )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            identifier=LONG_AXIS_IDENTIFIER.format(number=lesion.number),
            uid=provenance.derived_uid(source, f"sr.lesion.{lesion.number}.long-axis.tracking"),
        ),
        measurements=[long_axis],
        **common,
    )


def _values(lesion: Lesion, spacing: PixelSpacing | None) -> tuple[float, float, float, float]:
    """Area, largest diameter, box width and height: in mm if spacing, else in pixels."""
    if spacing is None:
        box = lesion.bbox
        return float(lesion.pixel_count), lesion.diameter_px, float(box.width), float(box.height)
    values = (lesion.area_mm2, lesion.diameter_mm, lesion.width_mm, lesion.height_mm)
    if any(value is None for value in values):
        raise ReportError(f"lesion {lesion.number} was measured without a pixel spacing")
    return tuple(float(value) for value in values)  # type: ignore[return-value, arg-type]


def measurement(name: Code, value: float, unit: Code, method: Code) -> hd.sr.Measurement:
    rounded = round(float(value), LENGTH_DECIMALS)
    return hd.sr.Measurement(name=name, value=rounded, unit=unit, method=method)


def _no_mass_group(
    source: Dataset, provenance: Provenance, context: _Context
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 for the whole image: Mass = Absent."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            identifier=NO_MASS_IDENTIFIER, uid=provenance.derived_uid(source, "sr.no-mass.tracking")
        ),
        finding_type=MASS,
        finding_category=MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        finding_sites=[context.site],
        algorithm_id=context.algorithm,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=MASS, value=ABSENT)],
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(source.SOPClassUID, source.SOPInstanceUID)
        ],
    )


def _segment_reference(source: Dataset, segmentation: Dataset) -> hd.sr.ReferencedSegmentationFrame:
    """The "Mass" segment of the SEG and the source it segments (TID 1410 row 8).

    The Image SOP Instance Reference Macro (PS3.3 Table 10-3) takes Referenced
    Frame Number or Referenced Segment Number, not both (dciodvfy enforces
    it).  The node's SEG has one frame, which holds the one segment: the
    reference names the segment, and it applies to all (one) frames.  A SEG
    with several frames is referenced by the segment's frame instead.
    """
    frame = _segment_frame(segmentation)
    reference = hd.sr.ReferencedSegmentationFrame(
        sop_class_uid=segmentation.SOPClassUID,
        sop_instance_uid=segmentation.SOPInstanceUID,
        frame_number=frame,
        segment_number=SEGMENT_NUMBER,
        source_image=hd.sr.SourceImageForSegmentation(source.SOPClassUID, source.SOPInstanceUID),
    )
    sop_reference = reference[0].ReferencedSOPSequence[0]
    if int(segmentation.get("NumberOfFrames", 1)) == 1:
        del sop_reference.ReferencedFrameNumber
    else:
        del sop_reference.ReferencedSegmentNumber
    return reference


def _segment_frame(segmentation: Dataset) -> int:
    """The first SEG frame (1-based) that holds the "Mass" segment (PS3.3 C.8.20.3).

    Segment Identification is per frame, or shared when every frame holds the
    same segment (PS3.3 C.7.6.16.1).
    """
    shared = segmentation.get("SharedFunctionalGroupsSequence") or [Dataset()]
    shared_items = shared[0].get("SegmentIdentificationSequence", [])
    frames = segmentation.get("PerFrameFunctionalGroupsSequence", [])
    for number, group in enumerate(frames, start=1):
        for item in group.get("SegmentIdentificationSequence", shared_items):
            if int(item.ReferencedSegmentNumber) == SEGMENT_NUMBER:
                return number
    raise ReportError(f"the SEG has no frame of segment {SEGMENT_NUMBER}")


def evidence_of(segmentation: Dataset) -> Dataset:
    """The SEG's UIDs only: evidence needs no patient data (PS3.3 C.17.2.3)."""
    evidence = Dataset()
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID"):
        setattr(evidence, keyword, segmentation[keyword].value)
    return evidence


def local_scheme(provenance: Provenance) -> Dataset:
    """Coding Scheme Identification item for the local scheme (PS3.3 C.12.1.1.4)."""
    item = Dataset()
    item.CodingSchemeDesignator = LOCAL_SCHEME
    item.CodingSchemeName = LOCAL_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = provenance.manufacturer
    return item


def _check_lesions(
    source: Dataset,
    lesions: Sequence[Lesion],
    spacing: PixelSpacing | None,
    segmentation: Dataset | None,
) -> None:
    if spacing is not None and not isinstance(spacing, PixelSpacing):
        raise ValueError("spacing must be a dicom_node.spacing.PixelSpacing or None")
    rows, columns = int(source.Rows), int(source.Columns)
    numbers = [lesion.number for lesion in lesions]
    if len(set(numbers)) != len(numbers):
        raise ValueError("lesion numbers must be unique")
    for lesion in lesions:
        if not isinstance(lesion, Lesion):
            raise ValueError("lesions must be measured lesions (service.imaging.lesions.Lesion)")
        if lesion.bbox.bottom > rows or lesion.bbox.right > columns:
            raise ValueError(f"lesion {lesion.number}'s box lies outside the source matrix")
        in_mm = (lesion.area_mm2, lesion.diameter_mm, lesion.width_mm, lesion.height_mm)
        if (spacing is None) != all(value is None for value in in_mm):
            raise ValueError(
                f"lesion {lesion.number} has mm values {'without' if spacing is None else 'but'} "
                "a pixel spacing: measure with the spacing given here"
            )
    if not lesions:
        return
    if segmentation is None:
        raise ValueError("lesions need the SEG they were measured on")
    if segmentation.get("SOPClassUID") != SegmentationStorage:
        raise ValueError("segmentation must be a Segmentation Storage instance")
    if segmentation.get("StudyInstanceUID") != source.StudyInstanceUID:
        raise ValueError("the SEG is not in the source's study")
