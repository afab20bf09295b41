"""What happens to one received instance: policy, pixels, model, results on disk.

Each step is a small function; :func:`process_instance` reads like the data
flow in DESIGN.md. Errors a person should read become :class:`JobFailed` or
:class:`JobSkipped`; anything else is caught by the worker loop.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)

from dicom_node.capture import build_overlay_capture
from dicom_node.provenance import Provenance
from dicom_node.seg import build_segmentation
from dicom_node.spacing import pixel_spacing
from dicom_node.spool import write_atomically
from service.inference import Segmenter
from service.preprocess import threshold_mask

# Used for the minimum lesion area when an image has no pixel spacing at all.
FALLBACK_SPACING_MM = 0.1


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


@dataclass(frozen=True)
class Results:
    files: list[Path]
    uids: dict[str, str]  # kind -> SOP Instance UID
    lesion_pixels: int
    timings: dict[str, float]


def read_instance(path: Path) -> Dataset:
    try:
        return dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise JobFailed(f"the stored file cannot be read as DICOM: {exc}") from exc


def check_policy(ds: Dataset, options: PipelineOptions) -> None:
    """Which images the node segments (README, "Input policy")."""
    sop_class = ds.get("SOPClassUID")
    modality = str(ds.get("Modality", ""))
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
        raise JobSkipped(
            f"Secondary Capture with Modality '{modality or 'none'}' is not a "
            "digitised mammogram (Modality MG)"
        )
    raise JobSkipped(f"SOP class {sop_class} (Modality '{modality or 'none'}') is not segmented")


def minimum_area_px(ds: Dataset, options: PipelineOptions) -> int:
    spacing = pixel_spacing(ds)
    area = spacing.pixel_area_mm2 if spacing else FALLBACK_SPACING_MM**2
    return int(np.ceil(options.min_lesion_area_mm2 / area))


def process_instance(
    path: Path, job_id: int, segmenter: Segmenter, options: PipelineOptions
) -> Results:
    """Read, check, segment and write the SEG and SC of one instance to the outbox."""
    from dicom_node.pixels import PixelDataError, display_image

    timings: dict[str, float] = {}
    start = time.perf_counter()
    ds = read_instance(path)
    check_policy(ds, options)
    try:
        display = display_image(ds)
    except PixelDataError as exc:
        raise JobFailed(str(exc)) from exc
    timings["decode_s"] = time.perf_counter() - start

    prediction = segmenter.predict(display.pixels)
    timings["preprocess_s"] = prediction.seconds_preprocess
    timings["infer_s"] = prediction.seconds_infer
    mark = time.perf_counter()
    mask = threshold_mask(
        prediction.probability, options.threshold, min_area_px=minimum_area_px(ds, options)
    )
    if display.padding is not None:
        mask &= ~display.padding

    seg = build_segmentation(
        source=ds, mask=mask, provenance=options.provenance, series_number=options.seg_series_number
    )
    sc = build_overlay_capture(
        source=ds,
        image=display.pixels,
        mask=mask,
        provenance=options.provenance,
        series_number=options.sc_series_number,
        max_size=options.sc_max_size,
    )
    folder = options.outbox_dir / str(job_id)
    if folder.exists():  # left by a crash before the job reached SENDING
        shutil.rmtree(folder)
    files: list[Path] = []
    uids: dict[str, str] = {}
    for kind, result in (("seg", seg), ("sc", sc)):
        if result is None:
            continue
        target = folder / f"{kind}.dcm"
        write_atomically(target, partial(result.save_as, enforce_file_format=True))
        files.append(target)
        uids[kind] = str(result.SOPInstanceUID)
    timings["postprocess_build_s"] = time.perf_counter() - mark
    return Results(files=files, uids=uids, lesion_pixels=int(mask.sum()), timings=timings)
