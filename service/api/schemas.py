"""What the REST API answers (pydantic at the edge). No patient data unless allowed.

Absolute times are ISO 8601 UTC timestamps ("2026-12-06T20:15:03.123456Z", the form
the ``since``/``until`` query parameters take), durations are seconds (numbers). The
one exception is ``JobOut.timings``: raw epoch seconds and durations, as stored.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from service.stats import ALL_STAGES, StageLatency, stage_durations, stage_end_times
from service.store import Association, Commitment, Job, JobEvent, JobState, Notice, NoticeState
from service.times import utc


class JobOut(BaseModel):
    id: int
    state: JobState
    reason: str
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    calling_ae_title: str
    attempts: int = Field(description="Failed delivery attempts so far")
    next_attempt_at: datetime | None
    created_at: datetime
    updated_at: datetime
    timings: dict[str, float] = Field(
        description="Raw epoch seconds (*_at) and durations (*_s), as stored"
    )
    result_uids: dict[str, str] = Field(description="Kind of result (seg, sc, ...) -> SOP UID")
    lesion_pixels: int | None
    delivered_to: list[str]
    crashes: int = Field(
        default=0, description="Processing attempts cut short by the process dying (quarantine)"
    )
    files_deleted_at: datetime | None = Field(
        default=None, description="When retention deleted the job's spool and outbox files"
    )
    accession_number: str | None = Field(
        default=None,
        description="Accession Number of the received instance: only with show_patient_data "
        "and a token or session (patient-adjacent), else null",
    )
    kind: str = Field(default="image", description="image (received) or exam (the exam SR)")
    laterality: str = Field(default="", description="L, R or empty (Image Laterality)")
    view: str = Field(default="", description="CC, MLO, another view (XCCL, ML, ...) or empty")

    @classmethod
    def of(cls, job: Job, *, patient_data: bool = False) -> JobOut:
        """``patient_data``: the caller may see patient data (``Caller.may_see_patient_data``)."""
        return cls(
            id=job.id,
            state=job.state,
            reason=job.reason,
            sop_instance_uid=job.sop_instance_uid,
            sop_class_uid=job.sop_class_uid,
            study_instance_uid=job.study_instance_uid,
            series_instance_uid=job.series_instance_uid,
            transfer_syntax_uid=job.transfer_syntax_uid,
            calling_ae_title=job.calling_ae_title,
            attempts=job.attempts,
            next_attempt_at=utc(job.next_attempt_at),
            created_at=utc(job.created_at),
            updated_at=utc(job.updated_at),
            timings=job.timings,
            result_uids=job.results.get("uids", {}),
            lesion_pixels=job.results.get("lesion_pixels"),
            delivered_to=job.delivered,
            crashes=job.crashes,
            files_deleted_at=utc(job.purged_at),
            accession_number=job.accession_number if patient_data else None,
            kind=job.kind,
            laterality=job.laterality,
            view=job.image_view,
        )


class JobPage(BaseModel):
    items: list[JobOut]
    total: int = Field(description="Jobs matching the filter, over all pages")
    limit: int
    offset: int
    counts: dict[str, int] = Field(description="All jobs per state, whatever the filter")


class StageOut(BaseModel):
    stage: str = Field(description="received (queue wait), decoded, inferred, built, sent")
    seconds: float | None
    ended_at: datetime | None


class EventOut(BaseModel):
    at: datetime
    state: JobState
    detail: str

    @classmethod
    def of(cls, event: JobEvent) -> EventOut:
        return cls(at=utc(event.at), state=event.state, detail=event.detail)


class CommitmentOut(BaseModel):
    """One storage commitment request (PS3.4 J) for the job's current results."""

    destination: str
    transaction_uid: str
    instances: int
    requested_at: datetime
    answered_at: datetime | None
    outcome: Literal["pending", "committed", "failed"]
    failed: int = Field(description="Instances the destination reported as not committed")
    reason: str

    @classmethod
    def of(cls, row: Commitment) -> CommitmentOut:
        return cls(
            destination=row.destination,
            transaction_uid=row.transaction_uid,
            instances=row.instances,
            requested_at=utc(row.requested_at),
            answered_at=utc(row.answered_at),
            outcome=row.outcome,
            failed=row.failed,
            reason=row.reason,
        )


class PatientOut(BaseModel):
    """Only with ``show_patient_data`` (trusted networks)."""

    name: str
    id: str
    birth_date: str


class JobDetail(JobOut):
    stages: list[StageOut]
    total_s: float | None = Field(description="Received to DONE")
    retries: int = Field(description="Times the job went to RETRYING (automatic and by hand)")
    events: list[EventOut]
    commitments: list[CommitmentOut] = Field(
        default_factory=list,
        description="Storage commitment requests to destinations with commit=1, oldest first",
    )
    can_retry: bool
    can_reprocess: bool
    patient: PatientOut | None = None

    @classmethod
    def detail(
        cls,
        job: Job,
        events: list[JobEvent],
        *,
        patient: PatientOut | None = None,
        patient_data: bool = False,
        commitments: list[Commitment] | None = None,
    ) -> JobDetail:
        from service.store import RETRYABLE, TERMINAL

        durations = stage_durations(job.timings)
        ends = stage_end_times(job.timings)
        return cls(
            **JobOut.of(job, patient_data=patient_data).model_dump(),
            stages=[
                StageOut(stage=s, seconds=durations.get(s), ended_at=utc(ends.get(s)))
                for s in ALL_STAGES
                if s != "total"
            ],
            total_s=durations.get("total"),
            retries=sum(1 for e in events if e.state is JobState.RETRYING),
            events=[EventOut.of(e) for e in events],
            commitments=[CommitmentOut.of(c) for c in commitments or []],
            can_retry=job.state in RETRYABLE and bool(job.results.get("files")),
            can_reprocess=job.state in TERMINAL and job.purged_at is None,
            patient=patient,
        )


class SkippedJob(BaseModel):
    id: int
    reason: str


class BulkRetryOut(BaseModel):
    matched: int = Field(description="Jobs the filter matched (at most the bound)")
    retried: int = Field(description="How many were set to RETRYING, due now")
    retried_ids: list[int]
    skipped: list[SkippedJob] = Field(description="Matched but not retried, and why")


class StageLatencyOut(BaseModel):
    stage: str
    count: int
    p50_s: float | None
    p95_s: float | None

    @classmethod
    def of(cls, latency: StageLatency) -> StageLatencyOut:
        return cls(**latency.__dict__)


class Throughput(BaseModel):
    bucket_s: float
    done: list[int] = Field(description="Jobs DONE per bucket, oldest first")


class StatsOut(BaseModel):
    window_s: float
    since: datetime
    until: datetime
    counts: dict[str, int] = Field(description="All jobs per state now")
    queue_depth: int
    received: int = Field(description="Jobs received in the window")
    done: int
    failed: int
    skipped: int
    retries: int
    images_per_minute: float = Field(description="Jobs DONE per minute over the window")
    latency: list[StageLatencyOut]
    throughput: Throughput


class DestinationOut(BaseModel):
    name: str
    ae_title: str
    host: str
    port: int
    delivered_jobs: int


class EchoOut(BaseModel):
    destination: str
    ok: bool
    status: int | None = Field(description="DIMSE status of the C-ECHO response")
    detail: str
    seconds: float


class AssociationOut(BaseModel):
    id: int
    association_id: str
    calling_ae_title: str
    address: str
    started_at: datetime
    ended_at: datetime | None
    instances: int
    outcome: str

    @classmethod
    def of(cls, row: Association) -> AssociationOut:
        return cls(
            id=row.id,
            association_id=row.association_id,
            calling_ae_title=row.calling_ae_title,
            address=row.address,
            started_at=utc(row.started_at),
            ended_at=utc(row.ended_at),
            instances=row.instances,
            outcome=row.outcome,
        )


class AssociationPage(BaseModel):
    items: list[AssociationOut]
    total: int
    limit: int
    offset: int
    counts: dict[str, int]


class ModelOut(BaseModel):
    name: str
    version: str
    sha256: str
    file_name: str
    file_bytes: int
    threshold_in_use: float
    contract: dict[str, Any]


class BoundingBox(BaseModel):
    top: int
    left: int
    bottom: int = Field(description="Exclusive")
    right: int = Field(description="Exclusive")


class LesionOut(BaseModel):
    number: int
    area_px: int
    area_mm2: float | None
    bbox: BoundingBox
    width_mm: float | None
    height_mm: float | None
    diameter_px: float = Field(description="Largest (Feret) diameter in pixels")
    diameter_mm: float | None = Field(description="Largest (Feret) diameter in mm")
    centroid_row: float
    centroid_col: float
    mean_probability: float
    max_probability: float


class ImageInfo(BaseModel):
    format: str
    width: int
    height: int
    pixel_spacing_mm: list[float] | None
    spacing_source: str | None = Field(
        description="PixelSpacing, ImagerPixelSpacing, parameter, or null (areas in pixels)"
    )


class SegmentOut(BaseModel):
    model: str
    model_version: str
    threshold: float
    image: ImageInfo
    lesions: list[LesionOut]
    mask_area_px: int
    mask_area_mm2: float | None
    max_probability: float
    seconds: dict[str, float]
    mask_png: str = Field(description="Base64 PNG at the image matrix, 255 inside the mask")
    overlay_png: str = Field(description="Base64 PNG, red overlay at alpha 0.4, downscaled")
    warning: str


class StudyViewJob(BaseModel):
    """One image job of a study, as the study view lists it."""

    job_id: int
    state: JobState
    sop_instance_uid: str
    view: str = Field(description="L-CC ... R-MLO, R-XCCL, ?-MLO, or empty when unknown")


class BreastOut(BaseModel):
    images: int
    segmented: int = Field(description="Images of the breast with results")
    mass_found: bool | None = Field(description="null: no image of the breast was segmented")
    lesion_count: int
    largest_diameter_mm: float | None = Field(description="The largest lesion's diameter")
    largest_diameter_px: float | None = Field(description="When the image had no pixel spacing")
    largest_in_job: int | None = Field(description="The job of the image it was found on")
    missing_views: list[str] = Field(description="CC, MLO: not received or not segmented")


class StudyOut(BaseModel):
    """A study as an exam (README "Exams"); no patient data unless the jobs would show it."""

    study_instance_uid: str
    state: str = Field(description="OPEN, COMPLETE, WRITTEN; UNKNOWN for studies before 0007")
    version: int
    trigger: str = Field(description="complete (all four views) or stable (exam_stable_s)")
    exam_sr_uid: str | None
    exam_sr_job_id: int | None
    reason: str
    last_arrival_at: datetime | None
    complete_at: datetime | None
    written_at: datetime | None
    views: dict[str, list[StudyViewJob]] = Field(description="L-CC, L-MLO, R-CC, R-MLO")
    other_views: list[StudyViewJob]
    missing_views: list[str] = Field(description="Standard views with no job")
    breasts: dict[str, BreastOut] = Field(description="L and R")
    accession_number: str | None = Field(
        default=None, description="As in the job listing: only where patient data may be shown"
    )


class StudyDetail(StudyOut):
    jobs: list[JobOut]
    patient: PatientOut | None = None


class StudyPage(BaseModel):
    items: list[StudyOut]
    total: int
    limit: int
    offset: int


class WebhookNoticeOut(BaseModel):
    """A webhook notice (README "Webhooks"); the receiver by origin only (a path may hold
    its token)."""

    id: int
    delivery_id: str = Field(description="X-Mammoseg-Delivery of every attempt")
    event: str = Field(description="job.done, job.failed or exam.complete")
    receiver: str = Field(description="Scheme, host and port of the URL")
    job_id: int | None
    state: NoticeState
    attempts: int
    last_error: str = Field(description="Why the last attempt failed (status or exception)")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, notice: Notice) -> WebhookNoticeOut:
        parts = urlsplit(notice.url)
        return cls(
            id=notice.id,
            delivery_id=notice.delivery_id,
            event=notice.event,
            receiver=f"{parts.scheme}://{parts.netloc}",
            job_id=notice.job_id,
            state=notice.state,
            attempts=notice.attempts,
            last_error=notice.last_error,
            created_at=utc(notice.created_at),
            updated_at=utc(notice.updated_at),
        )


class DeadLettersOut(BaseModel):
    counts: dict[str, int] = Field(description="Notices by state: PENDING, DELIVERED, DEAD")
    items: list[WebhookNoticeOut] = Field(description="Dead letters, newest first")
