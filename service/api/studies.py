"""Studies as exams: which of the four views arrived, their states, lesions per breast.

The same access rules as the job reads (service/api/jobs.py): a reader role;
the Accession Number and the patient only where the job views show them
(``Caller.may_see_patient_data``). The logic is service/exams.py, shared with
the dashboard.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query

from service.api.deps import Caller, NodeDep, NodeState, ReaderDep
from service.api.jobs import patient_of
from service.api.problems import problem_responses
from service.api.schemas import (
    BreastOut,
    JobOut,
    StudyDetail,
    StudyOut,
    StudyPage,
    StudyViewJob,
    utc,
)
from service.exams import StudyView, grouped, study_view, view_of_job
from service.store import ExamState, Job

router = APIRouter(prefix="/api/v1/studies", tags=["studies"])

_LIST_ERRORS = problem_responses(
    {401: "Missing or wrong token", 422: "A parameter is not valid (e.g. an unknown state)"}
)
_ERRORS = problem_responses({401: "Missing or wrong token", 404: "No such study"})


def _view_job(job: Job) -> StudyViewJob:
    return StudyViewJob(
        job_id=job.id,
        state=job.state,
        sop_instance_uid=job.sop_instance_uid,
        view=view_of_job(job).label,
    )


def study_out(view: StudyView, *, patient_data: bool) -> StudyOut:
    exam = view.exam
    jobs_by_uid = {j.sop_instance_uid: j for j in view.jobs}
    breasts = {}
    for finding in view.breasts:
        largest = finding.largest
        image = finding.largest_image
        breasts[finding.laterality] = BreastOut(
            images=finding.images,
            segmented=finding.segmented,
            mass_found=finding.mass_found,
            lesion_count=finding.lesion_count,
            largest_diameter_mm=largest.diameter if largest and largest.in_mm else None,
            largest_diameter_px=largest.diameter if largest and not largest.in_mm else None,
            largest_in_job=jobs_by_uid[image.sop_instance_uid].id if image else None,
            missing_views=list(finding.missing_views),
        )
    accession = next((j.accession_number for j in view.jobs if j.accession_number), "")
    return StudyOut(
        study_instance_uid=view.study_instance_uid,
        state=exam.state.value if exam else "UNKNOWN",
        version=exam.version if exam else 0,
        trigger=exam.trigger if exam else "",
        exam_sr_uid=(exam.sr_uid or None) if exam else None,
        exam_sr_job_id=exam.sr_job_id if exam else None,
        reason=exam.reason if exam else "",
        last_arrival_at=utc(exam.last_arrival_at) if exam else None,
        complete_at=utc(exam.complete_at) if exam else None,
        written_at=utc(exam.written_at) if exam else None,
        views={slot: [_view_job(j) for j in jobs] for slot, jobs in view.views.items()},
        other_views=[_view_job(j) for j in view.other],
        missing_views=view.missing,
        breasts=breasts,
        accession_number=accession if patient_data else None,
    )


def study_detail(node: NodeState, study_uid: str, caller: Caller) -> StudyDetail:
    """The study with its jobs; 404 when the node has no image of it."""
    view = study_view(node.store, study_uid)
    if view is None:
        raise HTTPException(404, f"no study {study_uid[:64]} on this node")
    patient_data = caller.may_see_patient_data(node.settings)
    summary = study_out(view, patient_data=patient_data)
    return StudyDetail(
        **summary.model_dump(),
        jobs=[JobOut.of(j, patient_data=patient_data) for j in view.jobs],
        patient=patient_of(view.jobs[0]) if patient_data and view.jobs else None,
    )


def study_page(
    node: NodeState, caller: Caller, *, state: str | None, limit: int, offset: int
) -> StudyPage:
    states: tuple[ExamState, ...] = ()
    if state:
        names = [s.strip().upper() for s in state.split(",") if s.strip()]
        unknown = [n for n in names if n not in ExamState.__members__]
        if unknown:
            raise HTTPException(
                422, f"unknown state {', '.join(unknown)}; states are {', '.join(ExamState)}"
            )
        states = tuple(ExamState(n) for n in names)
    exams, total = node.store.exams.find(states=states, limit=limit, offset=offset)
    patient_data = caller.may_see_patient_data(node.settings)
    # One query for the jobs of the whole page, not one per study.
    jobs = node.store.exams.images_of([exam.study_instance_uid for exam in exams])
    items = []
    for exam in exams:
        view = grouped(exam.study_instance_uid, exam, jobs.get(exam.study_instance_uid, []))
        if view is not None:
            items.append(study_out(view, patient_data=patient_data))
    return StudyPage(items=items, total=total, limit=limit, offset=offset)


@router.get("", response_model=StudyPage, responses=_LIST_ERRORS)
def list_studies(
    node: NodeDep,
    caller: ReaderDep,
    state: Annotated[
        str | None, Query(description="OPEN, COMPLETE, WRITTEN (comma-separated)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> StudyPage:
    """Studies the node received images of (since migration 0007), latest arrival first."""
    return study_page(node, caller, state=state, limit=limit, offset=offset)


@router.get("/{study_uid}", response_model=StudyDetail, responses=_ERRORS)
def get_study(
    study_uid: Annotated[str, Path(max_length=64)], node: NodeDep, caller: ReaderDep
) -> StudyDetail:
    """The four views, other views, job states and lesions per breast of one study."""
    return study_detail(node, study_uid, caller)
