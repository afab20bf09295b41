"""Exams, not just images: a study's four views, its findings per breast, one exam SR.

The study view (:func:`study_view`) serves the REST API and the dashboard
alike: which of L-CC, L-MLO, R-CC and R-MLO arrived (the breast and view each
job recorded at admission, dicom_node/views.py), other views (XCCL, ML, ...),
the jobs' states, and per breast the lesions found (count, largest diameter).

:class:`ExamWriter` (``serve`` only, like retention) writes one exam-level
TID 1500 SR per study (dicom_node/exam_sr.py) once the exam is due:

- "complete": each of the four standard views has a finished job (DONE,
  FAILED or SKIPPED) and no image of the study is still open; or
- "stable": no image of the study arrived for ``exam_stable_s`` and none is
  still open (the SR then says which standard views are missing).

The SR's UIDs are derived from the study and the exam's version, so a rewrite
after a crash is the same object. It is queued as a job of kind "exam" in the
same commit that marks the exam WRITTEN, and the sender delivers it like any
result (retries, give-up, audit). An image of the study that arrives after
WRITTEN (a new job: not a duplicate) reopens the exam as version + 1; the next
exam SR has new UIDs and names the earlier one as its predecessor. A duplicate
send (same content) changes nothing. ``exam_stable_s = 0`` turns exam SRs off
(the study view still works).

Then the hook :func:`exam_complete` is called once with a payload without
patient data (event ``exam.complete``): the one place where notifications
attach, through :data:`EXAM_COMPLETE_HOOKS`; the webhook receivers are told
through ``store.notices`` (:func:`tell_receivers`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from pydicom.errors import InvalidDicomError

from dicom_node.exam_sr import (
    DEFAULT_EXAM_SR_SERIES_DESCRIPTION,
    DEFAULT_EXAM_SR_SERIES_NUMBER,
    BreastFinding,
    ExamImage,
    ExamLesion,
    breast_findings,
    build_exam_report,
)
from dicom_node.limits import read_dataset
from dicom_node.provenance import DerivedObjectError, Provenance
from dicom_node.spool import write_atomically
from dicom_node.views import STANDARD_VIEWS, BreastView
from service.store import EXAM_COMPLETE, OPEN, TERMINAL, Exam, ExamState, Job, JobStore

log = logging.getLogger(__name__)

#: Called with the payload of every exam SR written; append to attach (webhooks, tests).
EXAM_COMPLETE_HOOKS: list[Callable[[dict[str, Any]], None]] = []


def exam_complete(payload: dict[str, Any]) -> None:
    """The "exam complete" hook point: each registered callback, once, in order.

    A callback that raises is logged and does not stop the others or the writer.
    """
    for hook in list(EXAM_COMPLETE_HOOKS):
        try:
            hook(payload)
        except Exception:  # boundary: a notification never breaks the exam writer
            log.exception("exam.complete hook %r failed", hook)


def view_of_job(job: Job) -> BreastView:
    return BreastView(laterality=job.laterality, view=job.image_view)


def exam_image(job: Job) -> ExamImage:
    """What the exam SR needs of one image job: UIDs, view, lesions, result references."""
    results = job.results
    uids: dict[str, str] = results.get("uids", {})
    references: dict[str, dict[str, str]] = results.get("references", {})
    lesions = []
    for lesion in results.get("lesions", []):
        in_mm = lesion.get("diameter_mm") is not None and lesion.get("area_mm2") is not None
        lesions.append(
            ExamLesion(
                diameter=float(lesion["diameter_mm"] if in_mm else lesion["diameter_px"]),
                area=float(lesion["area_mm2"] if in_mm else lesion["area_px"]),
                mean_probability=float(lesion.get("mean_probability", 0.0)),
                in_mm=in_mm,
            )
        )
    return ExamImage(
        sop_class_uid=job.sop_class_uid,
        sop_instance_uid=job.sop_instance_uid,
        series_instance_uid=job.series_instance_uid,
        laterality=job.laterality,
        view=job.image_view,
        segmented="sr" in uids,
        lesions=lesions,
        results={
            kind: (references[kind]["class"], references[kind]["series"], uid)
            for kind, uid in uids.items()
            if kind in references
        },
    )


@dataclass(frozen=True)
class StudyView:
    """One study for the API and the dashboard (no patient data: the routes add it)."""

    study_instance_uid: str
    exam: Exam | None
    jobs: list[Job]
    views: dict[str, list[Job]]  # "L-CC" ... "R-MLO" -> the jobs of that view
    other: list[Job]  # other views (XCCL, ML, ...) or unknown breast/view
    breasts: list[BreastFinding]
    missing: list[str] = field(default_factory=list)  # standard views with no job at all

    @property
    def complete_views(self) -> bool:
        return not self.missing


def study_view(store: JobStore, study_uid: str) -> StudyView | None:
    """The study's exam row and image jobs, grouped by view; None when nothing is known."""
    return grouped(study_uid, store.exams.get(study_uid), store.exams.images(study_uid))


def grouped(study_uid: str, exam: Exam | None, jobs: list[Job]) -> StudyView | None:
    """A study's exam row and image jobs (newest per instance) as its view; None if neither."""
    if exam is None and not jobs:
        return None
    views: dict[str, list[Job]] = {slot: [] for slot in STANDARD_VIEWS}
    other: list[Job] = []
    for job in jobs:
        slot = view_of_job(job).slot
        if slot is None:
            other.append(job)
        else:
            views[slot].append(job)
    return StudyView(
        study_instance_uid=study_uid,
        exam=exam,
        jobs=jobs,
        views=views,
        other=other,
        breasts=breast_findings([exam_image(j) for j in jobs]),
        missing=[slot for slot, found in views.items() if not found],
    )


def due_trigger(jobs: list[Job], exam: Exam, stable_s: float, now: float) -> str | None:
    """ "complete", "stable" or None (not yet): see the module's docstring."""
    if not jobs or any(j.state in OPEN for j in jobs):
        return None
    finished = {view_of_job(j).slot for j in jobs if j.state in TERMINAL}
    if all(slot in finished for slot in STANDARD_VIEWS):
        return "complete"
    if now - exam.last_arrival_at >= stable_s:
        return "stable"
    return None


def exam_payload(exam: Exam, view: StudyView, *, sr_uid: str, job_id: int) -> dict[str, Any]:
    """The hook's payload: UIDs, views and findings; never patient data."""
    return {
        "event": EXAM_COMPLETE,
        "study_instance_uid": exam.study_instance_uid,
        "version": exam.version,
        "trigger": exam.trigger,
        "exam_sr_uid": sr_uid,
        "exam_sr_job_id": job_id,
        "views": {slot: [j.state.value for j in jobs] for slot, jobs in view.views.items()},
        "missing_views": list(view.missing),
        "breasts": {
            finding.laterality: {
                "images": finding.images,
                "mass_found": finding.mass_found,
                "lesion_count": finding.lesion_count,
                "largest_diameter": finding.largest.diameter if finding.largest else None,
                "largest_in_mm": finding.largest.in_mm if finding.largest else None,
                "missing_views": list(finding.missing_views),
            }
            for finding in view.breasts
        },
    }


@dataclass(frozen=True, kw_only=True)
class ExamOptions:
    provenance: Provenance
    outbox_dir: Path
    stable_s: float
    series_number: int = DEFAULT_EXAM_SR_SERIES_NUMBER
    series_description: str = DEFAULT_EXAM_SR_SERIES_DESCRIPTION


class ExamNotWritten(Exception):
    """The exam SR could not be built or written now (the reason says why; retried)."""


def write_exam(store: JobStore, exam: Exam, options: ExamOptions) -> tuple[str, int] | None:
    """Build and write a COMPLETE exam's SR, queue it; (SR UID, job id), None if it changed."""
    jobs = store.exams.images(exam.study_instance_uid)
    images = [exam_image(j) for j in jobs]
    header = None
    for job in sorted(jobs, key=lambda j: not exam_image(j).segmented):
        try:
            header = read_dataset(Path(job.path), stop_before_pixels=True)
            break
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
    if header is None:
        raise ExamNotWritten("no image of the study can be read from the spool")
    try:
        sr = build_exam_report(
            header=header,
            images=images,
            provenance=options.provenance,
            version=exam.version,
            series_number=options.series_number,
            series_description=options.series_description,
        )
    except DerivedObjectError as exc:
        raise ExamNotWritten(str(exc)) from exc
    sr_uid = str(sr.SOPInstanceUID)
    path = options.outbox_dir / "exams" / f"{sr_uid}.dcm"
    write_atomically(path, partial(sr.save_as, enforce_file_format=True))
    job_id = store.exams.written(
        exam,
        sr_uid=sr_uid,
        series_uid=str(sr.SeriesInstanceUID),
        sop_class_uid=str(sr.SOPClassUID),
        path=str(path),
    )
    return None if job_id is None else (sr_uid, job_id)


def check_exams(
    store: JobStore,
    options: ExamOptions,
    *,
    now: float | None = None,
    on_complete: Callable[[dict[str, Any]], None] = exam_complete,
) -> int:
    """One pass: mark due exams COMPLETE, write the SR of each COMPLETE one; how many written."""
    written = 0
    for exam in store.exams.unwritten():
        current = time.time() if now is None else now
        if exam.state is ExamState.OPEN:
            jobs = store.exams.images(exam.study_instance_uid)
            trigger = due_trigger(jobs, exam, options.stable_s, current)
            if trigger is None or not store.exams.complete(
                exam.study_instance_uid, exam.version, trigger, now=current
            ):
                continue
            exam = store.exams.get(exam.study_instance_uid) or exam
        try:
            done = write_exam(store, exam, options)
        except ExamNotWritten as exc:
            if exam.reason != str(exc):
                log.warning("exam SR of study %s not written: %s", exam.study_instance_uid, exc)
                store.exams.note(exam.study_instance_uid, str(exc))
            continue
        if done is None:
            continue
        sr_uid, job_id = done
        written += 1
        log.info(
            "exam SR %s written for study %s (version %d, %s): job %d",
            sr_uid,
            exam.study_instance_uid,
            exam.version,
            exam.trigger,
            job_id,
            extra={"event": "exam_written", "job_id": job_id},
        )
        view = study_view(store, exam.study_instance_uid)
        if view is not None:
            payload = exam_payload(exam, view, sr_uid=sr_uid, job_id=job_id)
            tell_receivers(store, payload, job_id)
            on_complete(payload)
    return written


def tell_receivers(store: JobStore, payload: dict[str, Any], job_id: int) -> None:
    """The webhook notice of an exam SR written (README "Webhooks"); a failure is logged.

    Written after the exam's own commit: a crash between the two loses this one notice,
    never the exam SR (which is a job, delivered like any other).
    """
    try:
        store.notices.notify(EXAM_COMPLETE, payload, job_id=job_id)
    except Exception:  # boundary: a notification never breaks the exam writer
        log.exception("exam.complete notice of job %d not written", job_id)


class ExamWriter(threading.Thread):
    """Runs :func:`check_exams` every ``interval_s`` (``serve`` only, one per store)."""

    def __init__(
        self, store: JobStore, options: ExamOptions, stop: threading.Event, interval_s: float
    ) -> None:
        super().__init__(name="exams", daemon=True)
        self.store = store
        self.options = options
        self.stop_event = stop
        self.interval_s = interval_s
        self.passes = 0

    def run(self) -> None:
        while not self.stop_event.wait(self.interval_s):
            try:
                check_exams(self.store, self.options)
            except Exception:  # boundary: a failed pass is tried again at the next interval
                log.exception("exam pass failed; next in %.1f s", self.interval_s)
            self.passes += 1


def exam_interval(stable_s: float, poll_interval_s: float) -> float:
    """How often the writer looks: a tenth of the stable time, between the poll and 10 s."""
    return max(poll_interval_s, min(10.0, stable_s / 10))
