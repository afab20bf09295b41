"""Jobs: list with filters and paging, detail with stage timings, retry, reprocess, images."""

from __future__ import annotations

import shutil
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydicom.errors import InvalidDicomError

from dicom_node.limits import HEADER_ALLOWANCE_BYTES, read_dataset
from service.api.deps import AdminDep, Caller, NodeDep, NodeState, ReaderDep
from service.api.images import ImageUnavailable, thumbnail
from service.api.problems import problem_responses
from service.api.schemas import JobDetail, JobOut, JobPage, PatientOut
from service.audit_trail import AdminAction, audited
from service.store import Job, JobConflict, JobFilter, JobNotFound, JobState

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])

_LIST_ERRORS = problem_responses({401: "Missing or wrong token"})
_ERRORS = problem_responses({401: "Missing or wrong token", 404: "No such job"})
_ACTION_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    **problem_responses(
        {
            401: "Missing or wrong token, or not the admin token",
            403: "A browser session without the action header",
            409: "The job's state does not allow it",
        }
    ),
}
_IMAGE_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    **problem_responses(
        {
            403: "The image has burned-in annotation, and show_patient_data is off or the "
            "read has no token",
            404: "No such job, or no such image (yet, or any more)",
            422: "The image cannot be decoded",
        }
    ),
}


def epoch(value: datetime | None) -> float | None:
    """Seconds since the epoch; a time without a zone is the server's local time."""
    return None if value is None else value.timestamp()


def existing_job(node: NodeState, job_id: int) -> Job:
    job = node.store.reads.get(job_id)
    if job is None:
        raise HTTPException(404, f"job {job_id} does not exist")
    return job


def patient_of(job: Job) -> PatientOut | None:
    """Patient name, ID and birth date from the received file's header (trusted networks)."""
    try:
        ds = read_dataset(
            job.path,
            stop_before_pixels=True,
            specific_tags=["PatientName", "PatientID", "PatientBirthDate"],
            keep_bytes=HEADER_ALLOWANCE_BYTES,
        )
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return None
    return PatientOut(
        name=str(ds.get("PatientName", "")),
        id=str(ds.get("PatientID", "")),
        birth_date=str(ds.get("PatientBirthDate", "")),
    )


def job_detail(node: NodeState, job: Job, caller: Caller) -> JobDetail:
    """The job with its events; patient data only for a caller allowed to see it."""
    patient = patient_of(job) if caller.may_see_patient_data(node.settings) else None
    return JobDetail.detail(job, node.store.reads.events(job.id), patient=patient)


def job_filter(
    state: list[JobState] | None,
    since: datetime | None,
    until: datetime | None,
    destination: str | None,
    calling_ae: str | None,
) -> JobFilter:
    return JobFilter(
        states=tuple(state or ()),
        since=epoch(since),
        until=epoch(until),
        destination=destination or None,
        calling_ae_title=calling_ae or None,
    )


@router.get("", response_model=JobPage, responses=_LIST_ERRORS)
def list_jobs(
    node: NodeDep,
    _: ReaderDep,
    state: Annotated[list[JobState] | None, Query(description="Repeat for several")] = None,
    since: Annotated[datetime | None, Query(description="Received at or after (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(description="Received before (ISO 8601)")] = None,
    destination: Annotated[str | None, Query(description="Delivered to AET@HOST:PORT")] = None,
    calling_ae: Annotated[str | None, Query(description="Sent by this AE title")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JobPage:
    where = job_filter(state, since, until, destination, calling_ae)
    jobs, total = node.store.reads.find(where, limit=limit, offset=offset)
    return JobPage(
        items=[JobOut.of(j) for j in jobs],
        total=total,
        limit=limit,
        offset=offset,
        counts=node.store.reads.counts(),
    )


@router.get("/{job_id}", response_model=JobDetail, responses=_ERRORS)
def get_job(job_id: int, node: NodeDep, caller: ReaderDep) -> JobDetail:
    """Patient name, ID and birth date only with show_patient_data and a token or session."""
    return job_detail(node, existing_job(node, job_id), caller)


def admin_audit(
    node: NodeState, caller: Caller, job_id: int, action: str
) -> AbstractContextManager[AdminAction]:
    """The audit message of an admin action on a job (Security Alert, done or refused)."""
    return audited(
        node.audit,
        action=action,
        uri=f"/api/v1/jobs/{job_id}/{action}",
        role=caller.role.name.lower(),
        host=caller.host,
    )


@router.post("/{job_id}/retry", response_model=JobDetail, responses=_ACTION_ERRORS)
def retry_job(job_id: int, node: NodeDep, caller: AdminDep) -> JobDetail:
    """Send a FAILED or RETRYING job's results again, now (the results are not rebuilt)."""
    with admin_audit(node, caller, job_id, "retry") as action:
        try:
            job = node.store.admin.retry(job_id, detail="retry requested by an admin")
        except JobNotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        except JobConflict as exc:
            raise HTTPException(409, str(exc)) from exc
        action.of_job(job)
    return job_detail(node, job, caller)


@router.post("/{job_id}/reprocess", response_model=JobDetail, responses=_ACTION_ERRORS)
def reprocess_job(job_id: int, node: NodeDep, caller: AdminDep) -> JobDetail:
    """Run a finished job again from the received instance; its old results are deleted."""
    outbox = node.settings.outbox_dir

    def clear_outbox(job: Job) -> None:
        if not Path(job.path).is_file():
            raise JobConflict(f"job {job.id}: the received instance is no longer in the spool")
        folder = outbox / str(job.id)
        if folder.exists():
            shutil.rmtree(folder)

    with admin_audit(node, caller, job_id, "reprocess") as action:
        try:
            job = node.store.admin.reprocess(
                job_id, before_commit=clear_outbox, detail="reprocess requested by an admin"
            )
        except JobNotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        except JobConflict as exc:
            raise HTTPException(409, str(exc)) from exc
        action.of_job(job)
    return job_detail(node, job, caller)


@router.get(
    "/{job_id}/images/{kind}.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **_IMAGE_ERRORS},
)
async def job_image(
    job_id: int, kind: Literal["input", "overlay"], node: NodeDep, caller: ReaderDep
) -> Response:
    """A thumbnail (512 px) of the received image or of the overlay Secondary Capture."""
    job = existing_job(node, job_id)
    try:
        png = await run_in_threadpool(
            thumbnail, job, kind, allow_burned_in=caller.may_see_patient_data(node.settings)
        )
    except ImageUnavailable as exc:
        raise HTTPException(exc.status, str(exc)) from exc
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=10"})
