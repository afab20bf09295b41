"""What the job store keeps and hands out: states, jobs, events, associations, errors.

Plain values, no SQL; the role modules beside this one (service/store/) read and
write them. A job's life is drawn in docs/architecture.md.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from service.db import Row
from service.times import iso_utc


class StoreError(Exception):
    """The job store cannot be used (open, write or schema problems)."""


class JobNotFound(LookupError):
    """No job has this id."""


class NoticeNotFound(LookupError):
    """No webhook notice has this id."""


class JobConflict(Exception):
    """The job is not in a state that allows the requested transition (the message says why)."""


class JobState(StrEnum):
    RECEIVED = "RECEIVED"
    PROCESSING = "PROCESSING"
    SENDING = "SENDING"
    RETRYING = "RETRYING"
    #: Results stored at every destination; waiting for a destination's storage commitment.
    COMMIT_PENDING = "COMMIT_PENDING"
    DONE = "DONE"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"


TERMINAL = frozenset({JobState.DONE, JobState.FAILED, JobState.SKIPPED})
OPEN = tuple(s for s in JobState if s not in TERMINAL)
#: The reason of a quarantined job starts with this (FAILED, never claimed again).
QUARANTINE_REASON = "quarantined after {n} crashed attempts"
QUARANTINE_PREFIX = "quarantined after "
#: What ``JobQueue.admit`` (service/store/claims.py) did with a received instance.
Outcome = Literal["created", "open", "duplicate"]
#: States from which an administrator may ask for the results to be sent again now.
RETRYABLE = frozenset({JobState.FAILED, JobState.RETRYING})


@dataclass(frozen=True)
class NewJob:
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    calling_ae_title: str
    association_id: str
    path: str
    content_hash: str = ""  # SHA-256 of the dataset (file meta excluded); "" when unknown
    accession_number: str = ""  # (0008,0050); patient-adjacent: searchable, never logged
    laterality: str = ""  # "L", "R" or "" (dicom_node/views.py)
    image_view: str = ""  # "CC", "MLO", another view's short name ("XCCL"), or ""


@dataclass(frozen=True)
class Admission:
    """What ``JobQueue.admit`` did: a new job, the open one, or a duplicate ignored.

    ``files_purged``: the job it names has had its files deleted by retention
    (a duplicate's fresh spool file then belongs to no job).
    """

    job_id: int
    outcome: Outcome
    files_purged: bool = False


@dataclass(frozen=True)
class Job:
    id: int
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    calling_ae_title: str
    association_id: str
    path: str
    state: JobState
    reason: str
    attempts: int
    next_attempt_at: float | None
    first_send_failure_at: float | None
    created_at: float
    updated_at: float
    timings: dict[str, float] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    delivered: list[str] = field(default_factory=list)
    owner: str = ""  # the worker process holding a PROCESSING/SENDING job
    crashes: int = 0  # claims taken back unfinished (the process died meanwhile)
    heartbeat_at: float | None = None  # the holder's last sign of life
    content_hash: str = ""
    generation: int = 0  # times it was reprocessed (keys the result UIDs)
    purged_at: float | None = None  # when retention deleted its files
    accession_number: str = ""  # patient-adjacent: shown only where patient data may be
    laterality: str = ""  # "L", "R" or "" (read at admission, dicom_node/views.py)
    image_view: str = ""  # "CC", "MLO", another view ("XCCL", "ML", ...) or ""
    kind: str = "image"  # "image": a received instance; "exam": the node's exam SR (sent only)

    @property
    def quarantined(self) -> bool:
        return self.state is JobState.FAILED and self.reason.startswith(QUARANTINE_PREFIX)

    @property
    def result_key(self) -> str:
        """What, besides the source UID and the model, keys this job's result UIDs."""
        return f"{self.content_hash}/{self.generation}"


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a listing wants; every part is optional and they combine with AND.

    ``since``/``until`` bound the time the job was received (``created_at``,
    half-open: since <= t < until). ``destination`` keeps jobs whose results
    were delivered to that destination (``AET@HOST:PORT``). ``query``: an exact
    Accession Number, Study Instance UID or SOP Instance UID (any of the three).
    """

    states: Sequence[JobState] = ()
    since: float | None = None
    until: float | None = None
    destination: str | None = None
    calling_ae_title: str | None = None
    query: str | None = None


@dataclass(frozen=True)
class JobEvent:
    """One state change of a job (``detail`` says who or why, e.g. a retry request)."""

    id: int
    job_id: int
    at: float
    state: JobState
    detail: str


#: Outcomes of one storage commitment request (``commitments.outcome``).
CommitmentOutcome = Literal["pending", "committed", "failed"]


@dataclass(frozen=True)
class Commitment:
    """One Storage Commitment request (N-ACTION) for a job's results at one destination.

    ``generation``: the job's generation the results belong to (a reprocessed job's
    new results need their own commitment). ``reason``: why it failed, UIDs and
    statuses only (``2 of 3 instances not committed (0x0110 processing failure)``).
    """

    id: int
    job_id: int
    generation: int
    destination: str
    transaction_uid: str
    instances: int
    requested_at: float
    answered_at: float | None
    outcome: CommitmentOutcome
    failed: int
    reason: str


@dataclass(frozen=True)
class Association:
    """One DICOM association as the audit sees it (no patient data)."""

    id: int
    association_id: str
    calling_ae_title: str
    address: str
    started_at: float
    ended_at: float | None
    instances: int
    outcome: str  # open, released, aborted, rejected


class ExamState(StrEnum):
    """An exam (one study): images arriving, the exam SR due, the exam SR written."""

    OPEN = "OPEN"
    COMPLETE = "COMPLETE"
    WRITTEN = "WRITTEN"


#: Job kinds: a received image, or the exam-level SR the node wrote (service/exams.py).
JOB_KINDS = ("image", "exam")


@dataclass(frozen=True)
class Exam:
    """One study as an exam (service/exams.py): no patient data, UIDs and times.

    ``version`` counts the exam SRs written for the study (a late image after
    WRITTEN reopens it as the next version); ``trigger`` says why the last one
    became due ("complete": all four standard views finished; "stable": no
    image arrived for ``exam_stable_s``).
    """

    id: int
    study_instance_uid: str
    state: ExamState
    version: int
    trigger: str
    sr_uid: str
    sr_job_id: int | None
    reason: str
    created_at: float
    updated_at: float
    last_arrival_at: float
    complete_at: float | None
    written_at: float | None


def row_to_exam(row: Row) -> Exam:
    values = dict(row)
    values["state"] = ExamState(values["state"])
    return Exam(**values)


#: Outcomes of an association in the audit table.
ASSOCIATION_OUTCOMES = ("open", "released", "aborted", "rejected")


#: The webhook events (README "Webhooks"): a job reached DONE or FAILED; every instance
#: of an exam is finished (emitted by the code that knows the exam, via ``store.notices.notify``).
JOB_DONE = "job.done"
JOB_FAILED = "job.failed"
EXAM_COMPLETE = "exam.complete"
WEBHOOK_EVENTS = (JOB_DONE, JOB_FAILED, EXAM_COMPLETE)
#: The job states that raise an event, and which.
STATE_EVENTS = {"DONE": JOB_DONE, "FAILED": JOB_FAILED}


class NoticeState(StrEnum):
    """A webhook notice: waiting to be sent (or retried), sent, or given up (a dead letter)."""

    PENDING = "PENDING"
    DELIVERED = "DELIVERED"
    DEAD = "DEAD"


@dataclass(frozen=True)
class Notice:
    """One event for one receiver URL; ``body`` is the exact JSON text sent (and signed)."""

    id: int
    delivery_id: str
    event: str
    url: str
    job_id: int | None
    body: str
    state: NoticeState
    attempts: int
    created_at: float
    updated_at: float
    next_attempt_at: float | None
    last_error: str


def job_notice_body(job: Job, event: str, at: float) -> dict[str, Any]:
    """What a receiver learns of a job that finished: identifiers, never patient data.

    UIDs, the state and (FAILED) the reason, the result objects by kind, the model that made
    them (None when the job failed before it ran), the time in ISO 8601 UTC. No name, ID,
    birth date or Accession Number: those stay in the node (docs/security.md).
    """
    uids = job.results.get("uids") or {}
    model = job.results.get("model")
    return {
        "event": event,
        "job_id": job.id,
        "state": job.state.value,
        "reason": job.reason if job.state is JobState.FAILED else None,
        "sop_instance_uid": job.sop_instance_uid,
        "study_instance_uid": job.study_instance_uid,
        "series_instance_uid": job.series_instance_uid,
        "results": [{"kind": kind, "sop_instance_uid": uid} for kind, uid in sorted(uids.items())],
        "model": model if isinstance(model, dict) else None,
        "time": iso_utc(at),
    }


def event_body(event: str, payload: Mapping[str, Any], at: float) -> dict[str, Any]:
    """The body of an event other code raises: its payload, the event and the time."""
    return {**payload, "event": event, "time": iso_utc(at)}


def row_to_notice(row: Row) -> Notice:
    values = dict(row)
    values["state"] = NoticeState(values["state"])
    return Notice(**values)


# The schema lives in Alembic migrations: service/migrations/versions/.
_JSON_COLUMNS = ("timings", "results", "delivered")


def row_to_job(row: Row) -> Job:
    values = dict(row)
    for column in _JSON_COLUMNS:
        values[column] = json.loads(values[column])
    values["state"] = JobState(values["state"])
    return Job(**values)


def row_to_commitment(row: Row) -> Commitment:
    return Commitment(**dict(row))


def row_to_association(row: Row) -> Association:
    return Association(**dict(row))
