"""Thumbnails of a job's input image and of its overlay Secondary Capture (PNG).

Images whose source declares Burned In Annotation (0028,0301) YES (PS3.3
C.7.6.1, General Image module) may show patient data in their pixels: they are shown only when
``show_patient_data`` allows it. Thumbnails are cached in memory, keyed by the
file and its modification time, so a reprocessed job shows its new overlay.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.errors import InvalidDicomError

from dicom_node.limits import HEADER_ALLOWANCE_BYTES, read_dataset
from dicom_node.pixels import PixelDataError, display_image
from service.store import Job

THUMBNAIL_SIZE = 512


class ImageUnavailable(Exception):
    """No such image for this job (the reason says why); ``status`` is the HTTP status."""

    def __init__(self, detail: str, status: int = 404) -> None:
        super().__init__(detail)
        self.status = status


def _burned_in(path: Path) -> bool:
    try:
        ds = read_dataset(
            path,
            stop_before_pixels=True,
            specific_tags=["BurnedInAnnotation"],
            keep_bytes=HEADER_ALLOWANCE_BYTES,
        )
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise ImageUnavailable(f"the received instance cannot be read: {exc}") from exc
    return str(ds.get("BurnedInAnnotation", "")).upper() == "YES"


def _png(pixels: np.ndarray, max_size: int) -> bytes:
    image = Image.fromarray(pixels)
    image.thumbnail((max_size, max_size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@lru_cache(maxsize=64)
def _thumbnail(path: str, mtime_ns: int, kind: str, max_size: int) -> bytes:
    try:
        ds = read_dataset(path)
        if kind == "input":
            display = display_image(ds)
            gray = np.clip(display.pixels, 0.0, 1.0) * 255.0 + 0.5
            return _png(gray.astype(np.uint8), max_size)
        pixels = np.asarray(ds.pixel_array)
    except (InvalidDicomError, OSError, ValueError, EOFError, PixelDataError) as exc:
        raise ImageUnavailable(f"the image cannot be decoded: {exc}", status=422) from exc
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise ImageUnavailable("the overlay is not an 8-bit image", status=422)
    return _png(pixels, max_size)


def _cached(path: Path, kind: str, max_size: int) -> bytes:
    try:
        mtime = path.stat().st_mtime_ns
    except OSError as exc:
        raise ImageUnavailable(f"the {kind} file is no longer on disk") from exc
    return _thumbnail(str(path), mtime, kind, max_size)


def overlay_path(job: Job) -> Path | None:
    """The overlay Secondary Capture among the job's results, if it has one.

    The worker records it by kind (``results["overlay"]``); a job processed by an
    earlier version has only ``uids`` (kind -> UID) and ``files``, written in the
    same order, which pair them.
    """
    if "overlay" in job.results:
        overlay = job.results["overlay"]
        return Path(overlay) if overlay else None
    by_kind = dict(zip(job.results.get("uids", {}), job.results.get("files", []), strict=False))
    return Path(by_kind["sc"]) if "sc" in by_kind else None


def thumbnail(
    job: Job, kind: str, *, allow_burned_in: bool, max_size: int = THUMBNAIL_SIZE
) -> bytes:
    """PNG of the job's ``input`` image or its ``overlay``; raises :class:`ImageUnavailable`."""
    source = Path(job.path)
    if not source.is_file():
        raise ImageUnavailable("the received instance is no longer in the spool")
    if not allow_burned_in and _burned_in(source):
        raise ImageUnavailable(
            "the image has burned-in annotation that may show patient data", status=403
        )
    if kind == "input":
        return _cached(source, "input", max_size)
    path = overlay_path(job)
    if path is None:
        raise ImageUnavailable(f"job {job.id} has no overlay ({job.state.value})")
    return _cached(path, "overlay", max_size)
