"""The HTTP side: health, readiness, the jobs API and a first HTML page.

Routes return their schema types; errors are RFC 9457 problem JSON. No
patient names, IDs or birth dates appear in any response.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.inference import Segmenter
from service.store import Job, JobState, JobStore

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


class Listening(Protocol):
    @property
    def listening(self) -> bool: ...


@dataclass
class NodeState:
    """What the HTTP side may look at; built by the wiring in service.node."""

    store: JobStore
    segmenter: Segmenter | None
    scp: Listening | None
    data_dir: Path
    min_free_mb: int
    version: str


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
    attempts: int
    next_attempt_at: float | None
    created_at: float
    updated_at: float
    timings: dict[str, float]
    result_uids: dict[str, str]
    lesion_pixels: int | None
    delivered_to: list[str]

    @classmethod
    def of(cls, job: Job) -> JobOut:
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
            next_attempt_at=job.next_attempt_at,
            created_at=job.created_at,
            updated_at=job.updated_at,
            timings=job.timings,
            result_uids=job.results.get("uids", {}),
            lesion_pixels=job.results.get("lesion_pixels"),
            delivered_to=job.delivered,
        )


class JobPage(BaseModel):
    items: list[JobOut]
    limit: int
    offset: int
    counts: dict[str, int]


class Check(BaseModel):
    name: str
    ok: bool
    detail: str


class Readiness(BaseModel):
    ready: bool
    checks: list[Check]


def readiness(node: NodeState) -> Readiness:
    """Model loaded, store writable, SCP listening, disk above the watermark."""
    free_mb = shutil.disk_usage(node.data_dir).free // (1 << 20) if node.data_dir.exists() else 0
    model = node.segmenter
    checks = [
        Check(
            name="model",
            ok=model is not None,
            detail=f"{model.contract.model_name} {model.contract.model_version}"
            if model
            else "no model loaded",
        ),
        Check(name="store", ok=node.store.is_writable(), detail=str(node.store.path.name)),
        Check(
            name="dicom",
            ok=bool(node.scp and node.scp.listening),
            detail="listening" if node.scp and node.scp.listening else "not listening",
        ),
        Check(
            name="disk",
            ok=free_mb >= node.min_free_mb,
            detail=f"{free_mb} MB free, watermark {node.min_free_mb} MB",
        ),
    ]
    return Readiness(ready=all(c.ok for c in checks), checks=checks)


def get_node(request: Request) -> NodeState:
    node: NodeState = request.app.state.node
    return node


NodeDep = Annotated[NodeState, Depends(get_node)]


def problem(status: int, title: str, detail: str) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        media_type="application/problem+json",
        content={"type": "about:blank", "title": title, "status": status, "detail": detail},
    )


def create_app(node: NodeState) -> FastAPI:
    app = FastAPI(
        title="mammoseg",
        version=node.version,
        description="Breast mass segmentation DICOM node: jobs, health and results",
    )

    app.state.node = node

    @app.exception_handler(StarletteHTTPException)
    async def _http_problem(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(
            exc.status_code, str(exc.detail) if exc.status_code < 500 else "error", str(exc.detail)
        )

    @app.exception_handler(Exception)
    async def _internal_problem(request: Request, exc: Exception) -> JSONResponse:
        return problem(500, "Internal Server Error", type(exc).__name__)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", response_model=Readiness)
    def readyz(node: NodeDep) -> Any:
        ready = readiness(node)
        return JSONResponse(status_code=200 if ready.ready else 503, content=ready.model_dump())

    @app.get("/api/v1/jobs", response_model=JobPage)
    def list_jobs(
        node: NodeDep,
        state: JobState | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> JobPage:
        jobs = node.store.list(state=state, limit=limit, offset=offset)
        return JobPage(
            items=[JobOut.of(j) for j in jobs],
            limit=limit,
            offset=offset,
            counts=node.store.counts(),
        )

    @app.get("/api/v1/jobs/{job_id}", response_model=JobOut)
    def get_job(job_id: int, node: NodeDep) -> JobOut:
        job = node.store.get(job_id)
        if job is None:
            raise HTTPException(status_code=404, detail=f"job {job_id} does not exist")
        return JobOut.of(job)

    @app.get("/", response_class=HTMLResponse)
    def jobs_page(request: Request, node: NodeDep) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(
            request,
            "jobs.html",
            {
                "jobs": [JobOut.of(j) for j in node.store.list(limit=100)],
                "counts": node.store.counts(),
                "ready": readiness(node),
                "version": node.version,
            },
        )

    return app
