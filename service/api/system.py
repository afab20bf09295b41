"""Health, statistics, destinations (with C-ECHO), the association audit, the model, metrics."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from dicom_node.scu import Destination, SendError, echo
from dicom_node.status import Status
from service.api.deps import AdminDep, NodeDep, NodeState, ReaderDep, Readiness, readiness
from service.api.problems import problem_responses
from service.api.schemas import (
    AssociationOut,
    AssociationPage,
    DestinationOut,
    EchoOut,
    ModelOut,
    StageLatencyOut,
    StatsOut,
    Throughput,
    utc,
)
from service.audit_trail import audited
from service.segmentation import LesionRules
from service.stats import per_bucket, stage_latencies
from service.store import ASSOCIATION_OUTCOMES, JobState

router = APIRouter()
_ERRORS = problem_responses({401: "Missing or wrong token"})
_ECHO_ERRORS = problem_responses(
    {
        401: "Missing or wrong token, or not the admin token",
        403: "A browser session without the action header",
        404: "No such destination",
        409: "Several destinations have that AE title: use AET@HOST:PORT",
    }
)
ECHO_TIMEOUT_S = 10.0
THROUGHPUT_BUCKETS = 30


@router.get("/healthz", tags=["health"])
def healthz() -> dict[str, str]:
    """The process answers (liveness)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    tags=["health"],
    responses={503: {"model": Readiness, "description": "Not ready: the failing checks say why"}},
)
def readyz(node: NodeDep) -> Any:
    """Model loaded, store writable, SCP listening, disk above the watermark (503 if not)."""
    ready = readiness(node)
    return JSONResponse(status_code=200 if ready.ready else 503, content=ready.model_dump())


def compute_stats(node: NodeState, window_s: float, *, now: float | None = None) -> StatsOut:
    until = time.time() if now is None else now
    since = until - window_s
    store = node.store
    done_times = store.reads.event_times(JobState.DONE, since=since)
    return StatsOut(
        window_s=window_s,
        since=utc(since),
        until=utc(until),
        counts=store.reads.counts(),
        queue_depth=store.queue.queue_depth(now=until),
        received=len(store.reads.event_times(JobState.RECEIVED, since=since)),
        done=len(done_times),
        failed=len(store.reads.event_times(JobState.FAILED, since=since)),
        skipped=len(store.reads.event_times(JobState.SKIPPED, since=since)),
        retries=len(store.reads.event_times(JobState.RETRYING, since=since)),
        images_per_minute=len(done_times) / (window_s / 60.0),
        latency=[
            StageLatencyOut.of(x)
            for x in stage_latencies(store.reads.finished_timings(since=since))
        ],
        throughput=Throughput(
            bucket_s=window_s / THROUGHPUT_BUCKETS,
            done=per_bucket(done_times, since=since, until=until, buckets=THROUGHPUT_BUCKETS),
        ),
    )


@router.get("/api/v1/stats", response_model=StatsOut, tags=["stats"], responses=_ERRORS)
def stats(
    node: NodeDep,
    _: ReaderDep,
    window_s: Annotated[float, Query(ge=60, le=30 * 86400, description="Seconds back")] = 3600,
) -> StatsOut:
    """Counts per state, throughput and p50/p95 latency per stage over the window."""
    return compute_stats(node, window_s)


def destination_list(node: NodeState) -> list[DestinationOut]:
    return [
        DestinationOut(
            name=d.name,
            ae_title=d.ae_title,
            host=d.host,
            port=d.port,
            delivered_jobs=node.store.reads.delivered_count(d.name),
        )
        for d in node.settings.destination_list
    ]


def find_destination(node: NodeState, name: str) -> Destination:
    """By full name (AET@HOST:PORT) or by AE title when only one has it."""
    destinations = node.settings.destination_list
    exact = [d for d in destinations if d.name == name]
    by_title = [d for d in destinations if d.ae_title == name]
    if exact:
        return exact[0]
    if len(by_title) == 1:
        return by_title[0]
    if by_title:
        raise HTTPException(409, f"several destinations have AE title {name}: use AET@HOST:PORT")
    raise HTTPException(404, f"no destination {name} is configured")


@router.get(
    "/api/v1/destinations",
    response_model=list[DestinationOut],
    tags=["destinations"],
    responses=_ERRORS,
)
def list_destinations(node: NodeDep, _: ReaderDep) -> list[DestinationOut]:
    return destination_list(node)


def echo_destination(node: NodeState, destination: Destination) -> EchoOut:
    start = time.perf_counter()
    try:
        status = echo(
            destination,
            calling_ae=node.settings.ae_title,
            timeout_s=min(ECHO_TIMEOUT_S, node.settings.send_timeout_s),
        )
    except (SendError, OSError, RuntimeError) as exc:
        return EchoOut(
            destination=destination.name,
            ok=False,
            status=None,
            detail=str(exc),
            seconds=time.perf_counter() - start,
        )
    ok = status is Status.SUCCESS
    return EchoOut(
        destination=destination.name,
        ok=ok,
        status=int(status),
        detail=f"{status.name} (0x{int(status):04X})",
        seconds=time.perf_counter() - start,
    )


@router.post(
    "/api/v1/destinations/{name}/echo",
    response_model=EchoOut,
    tags=["destinations"],
    responses=_ECHO_ERRORS,
)
def echo_test(name: str, node: NodeDep, caller: AdminDep) -> EchoOut:
    """C-ECHO the destination (PS3.7 9.1.5); ``ok`` false says why it failed."""
    with audited(
        node.audit,
        action="echo",
        uri=f"/api/v1/destinations/{name}/echo",
        role=caller.role.name.lower(),
        host=caller.host,
    ) as action:
        answer = echo_destination(node, find_destination(node, name))
        action.detail = f"C-ECHO {answer.destination}: {'ok' if answer.ok else answer.detail}"
    return answer


@router.get(
    "/api/v1/associations", response_model=AssociationPage, tags=["audit"], responses=_ERRORS
)
def list_associations(
    node: NodeDep,
    _: ReaderDep,
    since: datetime | None = None,
    until: datetime | None = None,
    calling_ae: str | None = None,
    outcome: Annotated[
        str | None, Query(pattern="^(" + "|".join(ASSOCIATION_OUTCOMES) + ")$")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> AssociationPage:
    """Who called the node, from where, when, how many instances, and how it ended."""
    rows, total = node.store.audit.list(
        since=since.timestamp() if since else None,
        until=until.timestamp() if until else None,
        calling_ae_title=calling_ae or None,
        outcome=outcome,
        limit=limit,
        offset=offset,
    )
    return AssociationPage(
        items=[AssociationOut.of(r) for r in rows],
        total=total,
        limit=limit,
        offset=offset,
        counts=node.store.audit.counts(),
    )


def model_info(node: NodeState) -> ModelOut:
    segmenter = node.segmenter
    if segmenter is None:
        raise HTTPException(503, "no model is loaded")
    contract = segmenter.contract
    return ModelOut(
        name=contract.model_name,
        version=contract.model_version,
        sha256=segmenter.sha256,
        file_name=segmenter.path.name,
        file_bytes=segmenter.path.stat().st_size if segmenter.path.exists() else 0,
        threshold_in_use=LesionRules.of(node.settings, contract).threshold,
        contract=contract.model_dump(),
    )


@router.get(
    "/api/v1/model",
    response_model=ModelOut,
    tags=["model"],
    responses={**_ERRORS, **problem_responses({503: "No model is loaded"})},
)
def get_model(node: NodeDep, _: ReaderDep) -> ModelOut:
    """The loaded model: its contract (input, normalisation, training data, metrics), sha256."""
    return model_info(node)


@router.get(
    "/metrics",
    response_class=Response,
    tags=["metrics"],
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, **_ERRORS},
)
def metrics(request: Request, _: ReaderDep) -> Response:
    """Prometheus text format: jobs by state, stage histograms, associations, retries, disk."""
    registry: CollectorRegistry = request.app.state.metrics
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
