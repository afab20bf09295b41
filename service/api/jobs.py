"""Jobs: list with filters, search and paging, detail with stage timings, retry (one or a
filtered set), reprocess, images and the result files."""

from __future__ import annotations

import shutil
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response
from pydicom.errors import InvalidDicomError

from dicom_node.limits import HEADER_ALLOWANCE_BYTES, read_dataset
from service.access import Role
from service.api.deps import AdminDep, Caller, NodeDep, NodeState, ReaderDep
from service.api.images import ImageUnavailable, thumbnail
from service.api.problems import problem_responses
from service.api.schemas import (
    BulkRetryOut,
    JobDetail,
    JobOut,
    JobPage,
    PatientOut,
    SkippedJob,
)
from service.audit_trail import AdminAction, audited
from service.store import RETRYABLE, Job, JobConflict, JobFilter, JobNotFound, JobState

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])

_LIST_ERRORS = problem_responses(
    {
        401: "Missing or wrong token; or q without a token or session",
        422: "A parameter is not valid (e.g. an unknown state)",
    }
)
#: The most jobs one bulk retry may touch; a filter matching more is refused (422).
BULK_RETRY_MAX = 200
_BULK_ERRORS: dict[int | str, dict[str, Any]] = {
    **_LIST_ERRORS,
    **problem_responses(
        {
            401: "Missing or wrong token, or not the admin token",
            403: "A browser session without the action header",
            422: f"A parameter is not valid, or the filter matches more than {BULK_RETRY_MAX} jobs",
        }
    ),
}
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
#: Result files a job's page and the API hand out (application/dicom).
RESULT_KINDS = ("seg", "sc", "sr")
_RESULT_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    **problem_responses(
        {
            401: "Missing or wrong token (a tokenless read never gets result files)",
            404: "No such job, or it has no such result (not built, or deleted by retention)",
            422: "Not a result kind (seg, sc, sr)",
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
    return JobDetail.detail(
        job,
        node.store.reads.events(job.id),
        commitments=node.store.commitments.for_job(job.id, job.generation),
        patient=patient,
        patient_data=caller.may_see_patient_data(node.settings),
    )


def parse_states(values: list[str] | None) -> tuple[JobState, ...]:
    """``state=FAILED&state=RETRYING`` or ``state=FAILED,RETRYING`` (or both); 422 if unknown."""
    names = [name.strip().upper() for value in values or () for name in value.split(",")]
    unknown = [name for name in names if name and name not in JobState.__members__]
    if unknown:
        raise HTTPException(
            422,
            f"unknown state {', '.join(unknown)}; states are {', '.join(JobState)}",
        )
    return tuple(dict.fromkeys(JobState(name) for name in names if name))


def searching_allowed(caller: Caller, q: str | None) -> str | None:
    """``q`` (exact Accession Number or UID) needs a token or session: 401 for a tokenless read.

    The Accession Number is patient-adjacent, so a tokenless (loopback or open)
    read must not be able to test whether one is on this node.
    """
    q = (q or "").strip() or None
    if q is not None and caller.role < Role.VIEWER:
        raise HTTPException(
            401,
            "searching (q) needs a viewer or admin token, or a session",
            headers={"WWW-Authenticate": 'Bearer realm="mammoseg"'},
        )
    return q


def job_filter(
    state: list[str] | None,
    since: datetime | None,
    until: datetime | None,
    destination: str | None,
    calling_ae: str | None,
    q: str | None = None,
) -> JobFilter:
    return JobFilter(
        states=parse_states(state),
        since=epoch(since),
        until=epoch(until),
        destination=destination or None,
        calling_ae_title=calling_ae or None,
        query=q or None,
    )


_STATES_DOC = (
    "Any of these states (" + ", ".join(JobState) + "): repeat the parameter, "
    "or give a comma-separated list"
)
StateQuery = Annotated[list[str] | None, Query(description=_STATES_DOC)]
SinceQuery = Annotated[datetime | None, Query(description="Received at or after (ISO 8601)")]
UntilQuery = Annotated[datetime | None, Query(description="Received before (ISO 8601)")]
DestinationQuery = Annotated[str | None, Query(description="Delivered to AET@HOST:PORT")]
CallingQuery = Annotated[str | None, Query(description="Sent by this AE title")]
SearchQuery = Annotated[
    str | None,
    Query(
        max_length=64,
        description="Exact Accession Number, Study Instance UID or SOP Instance UID (no "
        "wildcards, no prefixes); needs a viewer or admin token or a session",
    ),
]


@router.get("", response_model=JobPage, responses=_LIST_ERRORS)
def list_jobs(
    node: NodeDep,
    caller: ReaderDep,
    state: StateQuery = None,
    since: SinceQuery = None,
    until: UntilQuery = None,
    destination: DestinationQuery = None,
    calling_ae: CallingQuery = None,
    q: SearchQuery = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> JobPage:
    """Newest first. ``accession_number`` is null unless the caller may see patient data."""
    where = job_filter(state, since, until, destination, calling_ae, searching_allowed(caller, q))
    jobs, total = node.store.reads.find(where, limit=limit, offset=offset)
    patient_data = caller.may_see_patient_data(node.settings)
    return JobPage(
        items=[JobOut.of(j, patient_data=patient_data) for j in jobs],
        total=total,
        limit=limit,
        offset=offset,
        counts=node.store.reads.counts(),
    )


@router.post("/retry", response_model=BulkRetryOut, responses=_BULK_ERRORS)
def retry_jobs(
    node: NodeDep,
    caller: AdminDep,
    state: StateQuery = None,
    since: SinceQuery = None,
    until: UntilQuery = None,
    destination: DestinationQuery = None,
    calling_ae: CallingQuery = None,
    q: SearchQuery = None,
) -> BulkRetryOut:
    """Retry every job the listing's filters match (no state given: FAILED and RETRYING).

    At most ``BULK_RETRY_MAX`` (200) jobs at once: a filter matching more is
    refused, nothing retried. Each job is retried as ``POST /{job_id}/retry``
    would (and audited the same way, one message per job); those that cannot be
    (another state, no result files, changed meanwhile) are listed as skipped.
    """
    where = job_filter(state, since, until, destination, calling_ae, searching_allowed(caller, q))
    if not where.states:
        where = replace(where, states=tuple(sorted(RETRYABLE)))
    uri = "/api/v1/jobs/retry"
    role = caller.role.name.lower()
    with audited(node.audit, action="retry", uri=uri, role=role, host=caller.host) as whole:
        jobs, total = node.store.reads.find(where, limit=BULK_RETRY_MAX)
        if total > BULK_RETRY_MAX:
            raise HTTPException(
                422,
                f"{total} jobs match; at most {BULK_RETRY_MAX} can be retried at once: "
                "narrow the filter",
            )
        whole.detail = f"bulk retry of {total} matching jobs"
    retried: list[int] = []
    skipped: list[SkippedJob] = []
    for candidate in reversed(jobs):  # oldest first
        try:
            with audited(node.audit, action="retry", uri=uri, role=role, host=caller.host) as one:
                one.of_job(candidate)  # refused ones name their study too
                job = node.store.admin.retry(
                    candidate.id, detail="retry requested by an admin (bulk)"
                )
                one.of_job(job)
        except (JobConflict, JobNotFound) as exc:
            skipped.append(SkippedJob(id=candidate.id, reason=str(exc)))
            continue
        retried.append(job.id)
    return BulkRetryOut(matched=total, retried=len(retried), retried_ids=retried, skipped=skipped)


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


def result_file(node: NodeState, job: Job, kind: str) -> Path:
    """The job's ``kind`` result in the outbox; 404 when never built or deleted by retention."""
    if job.purged_at is not None:
        raise HTTPException(404, f"job {job.id}'s files were deleted by retention")
    by_kind = dict(zip(job.results.get("uids", {}), job.results.get("files", []), strict=False))
    if kind not in by_kind:
        raise HTTPException(404, f"job {job.id} has no {kind.upper()} result ({job.state.value})")
    path = Path(by_kind[kind])
    folder = (node.settings.outbox_dir / str(job.id)).resolve()
    if path.resolve().parent != folder or not path.is_file():
        raise HTTPException(404, f"job {job.id}'s {kind.upper()} file is no longer in the outbox")
    return path


@router.get(
    "/{job_id}/results/{kind}",
    response_class=FileResponse,
    responses={200: {"content": {"application/dicom": {}}}, **_RESULT_ERRORS},
)
def job_result(
    job_id: int, kind: Literal["seg", "sc", "sr"], node: NodeDep, caller: ReaderDep
) -> FileResponse:
    """The SEG, SC or SR as sent to the destinations (application/dicom, PS3.10 file).

    Needs a viewer or admin token or a session, never a tokenless read: the
    files carry the patient module of the received image, as the PACS gets it.
    """
    if caller.role < Role.VIEWER:
        raise HTTPException(
            401,
            "result files need a viewer or admin token, or a session",
            headers={"WWW-Authenticate": 'Bearer realm="mammoseg"'},
        )
    path = result_file(node, existing_job(node, job_id), kind)
    return FileResponse(
        path,
        media_type="application/dicom",
        filename=f"job-{job_id}-{kind}.dcm",
        headers={"Cache-Control": "private, no-store"},
    )
