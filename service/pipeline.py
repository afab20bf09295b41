"""What happens to one received instance: policy, pixels, model, results on disk.

Each step is a small function; :func:`process_instance` is the list of them
in order (docs/architecture.md, "One image through the node"), with timing
and file writing around the steps rather than inside them. Errors a person
should read become :class:`JobFailed` or :class:`JobSkipped`; anything else is
caught by the worker loop.

The input policy (README, "What the node accepts"): Digital Mammography For
Presentation and Secondary Captures with Modality MG (digitised film) are
segmented; For Processing images are SKIPPED unless ``process_for_processing``;
Breast Tomosynthesis and anything else the SCP stored are SKIPPED or FAILED
as ``tomosynthesis_policy`` / ``other_modality_policy`` say; pixel data that
cannot be decoded FAIL with the decoder's reason.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Final, Literal

from pydicom import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    BreastTomosynthesisImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)

from dicom_node.capture import (
    DEFAULT_SC_SERIES_DESCRIPTION,
    OverlayGray,
    build_overlay_capture,
    overlay_gray,
)
from dicom_node.limits import read_dataset
from dicom_node.pixels import DisplayImage, PixelDataError, display_image
from dicom_node.provenance import DerivedObjectError, Provenance
from dicom_node.seg import DEFAULT_SEG_SERIES_DESCRIPTION, build_segmentation
from dicom_node.spacing import pixel_spacing
from dicom_node.spool import write_together
from dicom_node.sr import DEFAULT_SR_SERIES_DESCRIPTION, build_measurement_report
from service import faults
from service.inference import Segmenter
from service.segmentation import LesionRules, Segmentation, segment_image, segment_prediction

#: What to do with an instance the node stores but does not segment.
Policy = Literal["skip", "fail"]
POLICIES: Final[tuple[Policy, ...]] = ("skip", "fail")
ScCompression = Literal["deflate", "jpeg", "rle", "none"]


class JobFailed(Exception):
    """Bad input: terminal, with a reason a person can read."""


class JobSkipped(Exception):
    """Not applicable (e.g. FOR PROCESSING, another modality), with the reason."""


@dataclass(frozen=True, kw_only=True)
class PipelineOptions:
    provenance: Provenance
    outbox_dir: Path
    seg_series_number: int
    sc_series_number: int
    sc_max_size: int
    min_lesion_area_mm2: float
    threshold: float
    process_for_processing: bool
    sr_series_number: int = 9903
    seg_series_description: str = DEFAULT_SEG_SERIES_DESCRIPTION
    sc_series_description: str = DEFAULT_SC_SERIES_DESCRIPTION
    sr_series_description: str = DEFAULT_SR_SERIES_DESCRIPTION
    sc_compression: ScCompression = "jpeg"
    voi_index: int = 0
    tomosynthesis_policy: Policy = "skip"
    other_modality_policy: Policy = "skip"

    def __post_init__(self) -> None:
        for name in ("tomosynthesis_policy", "other_modality_policy"):
            if getattr(self, name) not in POLICIES:
                raise ValueError(f"{name} must be one of {POLICIES}, got {getattr(self, name)!r}")
        if self.voi_index < 0:
            raise ValueError(f"voi_index must be >= 0, got {self.voi_index}")

    @property
    def rules(self) -> LesionRules:
        return LesionRules(threshold=self.threshold, min_lesion_area_mm2=self.min_lesion_area_mm2)


@dataclass(frozen=True)
class Results:
    files_by_kind: dict[str, Path]  # "seg", "sr", "sc" -> file, in the order they are sent
    uids: dict[str, str]  # kind -> SOP Instance UID
    segmentation: Segmentation
    timings: dict[str, float]
    #: kind -> {"class": SOP Class UID, "series": Series Instance UID}: the exam SR's evidence
    references: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def files(self) -> list[Path]:
        return list(self.files_by_kind.values())

    @property
    def overlay(self) -> Path | None:
        """The overlay Secondary Capture."""
        return self.files_by_kind.get("sc")

    @property
    def lesion_pixels(self) -> int:
        return int(self.segmentation.mask.sum())


def read_instance(path: Path) -> Dataset:
    """The stored instance; a deflated one is inflated under the node's cap (dicom_node.limits)."""
    try:
        return read_dataset(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise JobFailed(f"the stored file cannot be read as DICOM: {exc}") from exc


def _not_segmented(reason: str, policy: Policy, setting: str) -> Exception:
    if policy == "fail":
        return JobFailed(f"{reason} ({setting} = fail)")
    return JobSkipped(reason)


def check_policy(ds: Dataset, options: PipelineOptions) -> None:
    """Which images the node segments (README, "What the node accepts")."""
    sop_class = ds.get("SOPClassUID")
    modality = str(ds.get("Modality", "")).strip()
    if sop_class == DigitalMammographyXRayImageStorageForPresentation:
        return
    if sop_class == DigitalMammographyXRayImageStorageForProcessing:
        if options.process_for_processing:
            return
        raise JobSkipped(
            "FOR PROCESSING image (raw detector data): only FOR PRESENTATION "
            "images are segmented unless process_for_processing is set"
        )
    if sop_class == SecondaryCaptureImageStorage:
        if modality == "MG":
            return
        raise _not_segmented(
            f"Secondary Capture with Modality '{modality or 'none'}' is not a "
            "digitised mammogram (Modality MG)",
            options.other_modality_policy,
            "other_modality_policy",
        )
    if sop_class == BreastTomosynthesisImageStorage:
        raise _not_segmented(
            "Breast Tomosynthesis image: the model segments 2-D mammograms only",
            options.tomosynthesis_policy,
            "tomosynthesis_policy",
        )
    raise _not_segmented(
        f"SOP class {str(sop_class or 'none')[:64]} (Modality '{modality[:16] or 'none'}') "
        "is not segmented",
        options.other_modality_policy,
        "other_modality_policy",
    )


def decode_pixels(ds: Dataset, options: PipelineOptions) -> DisplayImage:
    """The display-ready image (dicom_node.pixels); undecodable pixel data FAILS with the reason."""
    faults.before_decode(ds.get("SOPInstanceUID"))  # tests only (service/faults.py)
    try:
        return display_image(ds, voi_index=options.voi_index)
    except PixelDataError as exc:
        raise JobFailed(str(exc)) from exc


def segment_instance(
    ds: Dataset, display: DisplayImage, segmenter: Segmenter, options: PipelineOptions
) -> Segmentation:
    """:func:`service.segmentation.segment_image` with the instance's own pixel spacing."""
    spacing = pixel_spacing(ds)
    return segment_image(
        display.pixels,
        segmenter,
        options.rules,
        padding=display.padding,
        spacing_mm=(spacing.row_mm, spacing.column_mm) if spacing else None,
    )


def build_capture(
    ds: Dataset,
    image: DisplayImage | OverlayGray,
    segmentation: Segmentation,
    options: PipelineOptions,
) -> Dataset:
    """The overlay SC, from the display image or its gray picture made beforehand."""
    try:
        return build_overlay_capture(
            source=ds,
            image=image.pixels if isinstance(image, DisplayImage) else image,
            mask=segmentation.mask,
            provenance=options.provenance,
            series_number=options.sc_series_number,
            series_description=options.sc_series_description,
            max_size=options.sc_max_size,
            compression=options.sc_compression,
        )
    except DerivedObjectError as exc:
        raise JobFailed(str(exc)) from exc


def build_results(
    ds: Dataset,
    display: DisplayImage | None,
    segmentation: Segmentation,
    options: PipelineOptions,
    *,
    capture: Dataset | None = None,
) -> dict[str, Dataset]:
    """SEG (none for an empty mask), SR and SC, in the order they are written and sent.

    ``capture`` is the SC if :func:`build_capture` has made it already (then
    ``display`` may be None); otherwise it is made here from ``display``.
    """
    if capture is None:
        if display is None:
            raise ValueError("build_results needs the display image or the capture")
        capture = build_capture(ds, display, segmentation, options)
    spacing = pixel_spacing(ds)
    try:
        seg = build_segmentation(
            source=ds,
            mask=segmentation.mask,
            provenance=options.provenance,
            series_number=options.seg_series_number,
            series_description=options.seg_series_description,
        )
        sr = build_measurement_report(
            source=ds,
            lesions=segmentation.lesions,
            spacing=spacing,
            segmentation=seg,
            provenance=options.provenance,
            series_number=options.sr_series_number,
            series_description=options.sr_series_description,
        )
    except DerivedObjectError as exc:
        raise JobFailed(str(exc)) from exc
    # The SR right after the SEG it references; the SC, which nothing references, last.
    built = {"seg": seg, "sr": sr, "sc": capture}
    return {kind: result for kind, result in built.items() if result is not None}


def write_results(results: dict[str, Dataset], folder: Path) -> dict[str, Path]:
    """Each result as ``folder/<kind>.dcm``, written atomically; a crash's leftovers go first."""
    if folder.exists():  # left by a crash before the job reached SENDING
        shutil.rmtree(folder)
    files = {kind: folder / f"{kind}.dcm" for kind in results}
    # One fsync per file and one for the folder (and its entry in the outbox), not a
    # folder fsync per file: 31.6 -> 22.5 ms for the three (docs/performance.md).
    write_together(
        {
            files[kind]: partial(result.save_as, enforce_file_format=True)
            for kind, result in results.items()
        }
    )
    return files


class _Stages:
    """Wall time of each named step, measured around it (stage name -> seconds)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start


def process_instance(
    path: Path, job_id: int, segmenter: Segmenter, options: PipelineOptions
) -> Results:
    """Read, check, segment, measure and write the SEG, SC and SR of one instance."""
    stage = _Stages()
    with stage("decode_s"):
        ds = read_instance(path)
        check_policy(ds, options)
        display = decode_pixels(ds, options)
        # The builders read attributes only: the stored pixels (27 MB at full size) go now.
        for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            if keyword in ds:
                delattr(ds, keyword)
    # segment_instance in two halves, so that the full-size display image (54 MB at
    # full size) goes once the model and the SC's picture are made from it: no two
    # full-size float arrays are then alive at once.
    spacing = pixel_spacing(ds)
    prediction = segmenter.predict(display.pixels)
    with stage("postprocess_build_s"):
        gray = overlay_gray(display.pixels, options.sc_max_size)
    padding = display.padding
    del display
    segmentation = segment_prediction(
        prediction,
        options.rules,
        padding=padding,
        spacing_mm=(spacing.row_mm, spacing.column_mm) if spacing else None,
    )
    del prediction, padding
    with stage("postprocess_build_s"):
        capture = build_capture(ds, gray, segmentation, options)
        results = build_results(ds, None, segmentation, options, capture=capture)
        files = write_results(results, options.outbox_dir / str(job_id))
    timings = stage.timings
    timings["preprocess_s"] = segmentation.seconds_preprocess
    timings["infer_s"] = segmentation.seconds_infer
    timings["postprocess_build_s"] += segmentation.seconds_lesions
    return Results(
        files_by_kind=files,
        uids={kind: str(result.SOPInstanceUID) for kind, result in results.items()},
        segmentation=segmentation,
        timings=timings,
        references={
            kind: {"class": str(result.SOPClassUID), "series": str(result.SeriesInstanceUID)}
            for kind, result in results.items()
        },
    )
