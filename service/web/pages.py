"""The dashboard pages: server-rendered Jinja2, live parts refreshed by ``static/app.js``.

Each live page has a fragment under ``/fragments/...`` that renders the same
partial template the page includes, so there is one piece of markup per view.
Pages need the same read access as the API; a browser without it is sent to
``/login``, which turns a token into a session cookie (see service.access).
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from service.access import SESSION_COOKIE, AccessPolicy, Role, session_value
from service.api.deps import Caller, CallerDep, NodeDep, NodeState, readiness
from service.api.jobs import BULK_RETRY_MAX, existing_job, job_detail
from service.api.schemas import JobOut, WebhookNoticeOut
from service.api.segment import read_upload, result_out, run_segmentation, upload_limit
from service.api.studies import study_detail, study_page
from service.api.system import compute_stats, destination_list, model_info
from service.store import Job, JobFilter, JobState
from service.viewer_link import viewer_url
from service.web.charts import latency_chart, throughput_chart

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).resolve().parent.parent / "templates"))
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
WINDOWS = {"15m": 900, "1h": 3600, "6h": 6 * 3600, "24h": 86400}
PAGE_SIZE = 50
SESSION_MAX_AGE_S = 12 * 3600
#: How often live parts refresh, in seconds.
REFRESH_S = 2


class LoginRequired(Exception):
    """A page was asked for without read access: the browser goes to /login."""


def _when(moment: datetime | float | None) -> str:
    """The server's local time of an API time (datetime) or a store record's (epoch)."""
    if moment is None:
        return ""
    epoch = moment.timestamp() if isinstance(moment, datetime) else moment
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _secs(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


TEMPLATES.env.filters["when"] = _when
TEMPLATES.env.filters["secs"] = _secs


def page_reader(request: Request, caller: CallerDep) -> Caller:
    policy: AccessPolicy = request.app.state.access
    if not caller.may_read(policy):
        raise LoginRequired
    return caller


PageDep = Annotated[Caller, Depends(page_reader)]
router = APIRouter(include_in_schema=False)


def render(
    request: Request, name: str, caller: Caller | None, status: int = 200, **context: Any
) -> HTMLResponse:
    node: NodeState = request.app.state.node
    policy: AccessPolicy = request.app.state.access
    response = TEMPLATES.TemplateResponse(
        request,
        name,
        {
            "version": node.version,
            "role": caller.role.name.lower() if caller else "none",
            "is_admin": bool(caller and caller.role >= Role.ADMIN),
            "actions_enabled": policy.actions_enabled,
            "logged_in": bool(caller and caller.role > Role.NONE),
            "refresh_s": REFRESH_S,
            "path": request.url.path,
            **context,
        },
        status_code=status,
    )
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-store"
    return response


# -- overview -------------------------------------------------------------
def _overview(node: NodeState, window: str) -> dict[str, Any]:
    window_s = WINDOWS.get(window, WINDOWS["1h"])
    stats = compute_stats(node, window_s)
    failures, _ = node.store.reads.find(JobFilter(states=[JobState.FAILED]), limit=8)
    return {
        "ready": readiness(node),
        "stats": stats,
        "window": window if window in WINDOWS else "1h",
        "windows": list(WINDOWS),
        "throughput": throughput_chart(
            stats.throughput.done, bucket_s=stats.throughput.bucket_s, until=stats.until.timestamp()
        ),
        "latency": latency_chart(stats.latency),
        "total_latency": next(x for x in stats.latency if x.stage == "total"),
        "failures": [JobOut.of(j) for j in failures],
        "upkeep": node.store.reads.counters(),  # retention, duplicates, quarantine
    }


@router.get("/", response_class=HTMLResponse)
def overview(request: Request, node: NodeDep, caller: PageDep, window: str = "1h") -> Response:
    return render(request, "overview.html", caller, **_overview(node, window))


@router.get("/fragments/overview", response_class=HTMLResponse)
def overview_fragment(
    request: Request, node: NodeDep, caller: PageDep, window: str = "1h"
) -> Response:
    return render(request, "_overview.html", caller, **_overview(node, window))


# -- jobs -----------------------------------------------------------------
def _local_time(text: str | None) -> float | None:
    """A datetime-local form value (browser's local time, taken as the server's)."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _jobs(node: NodeState, request: Request, caller: Caller) -> dict[str, Any]:
    params = request.query_params
    # Several states: state=A&state=B (the check boxes) or state=A,B (as in the API).
    names = [n.strip().upper() for v in params.getlist("state") for n in v.split(",")]
    states = list(dict.fromkeys(JobState(n) for n in names if n in JobState.__members__))
    # q (exact Accession Number or UID) only with a token or session, as in the API.
    may_search = caller.role >= Role.VIEWER
    q = (params.get("q") or "").strip()[:64]
    try:
        offset = max(0, int(params.get("offset", "0")))
    except ValueError:
        offset = 0
    filters = {
        "state": [s.value for s in states],
        "since": params.get("since", ""),
        "until": params.get("until", ""),
        "destination": params.get("destination", ""),
        "calling_ae": params.get("calling_ae", ""),
        "q": q,
    }
    where = JobFilter(
        states=states,
        since=_local_time(filters["since"]),  # type: ignore[arg-type]
        until=_local_time(filters["until"]),  # type: ignore[arg-type]
        destination=params.get("destination") or None,
        calling_ae_title=params.get("calling_ae") or None,
        query=q if q and may_search else None,
    )
    jobs: list[Job] = []
    total = 0
    if not q or may_search:  # a tokenless read with q: no search, nor a listing ignoring it
        jobs, total = node.store.reads.find(where, limit=PAGE_SIZE, offset=offset)
    query = [(k, v) for k, v in params.multi_items() if k != "offset" and v]
    patient_data = caller.may_see_patient_data(node.settings)

    def page_link(to: int) -> str:
        return "/jobs?" + urlencode([*query, ("offset", str(to))])

    return {
        "jobs": [JobOut.of(j, patient_data=patient_data) for j in jobs],
        "show_accession": patient_data,
        "may_search": may_search,
        "total": total,
        "offset": offset,
        "page_size": PAGE_SIZE,
        "filters": filters,
        "states": [s.value for s in JobState],
        "destinations": [d.name for d in node.settings.destination_list],
        "counts": node.store.reads.counts(),
        "fragment_url": "/fragments/jobs?" + urlencode(list(params.multi_items())),
        "previous_link": page_link(max(0, offset - PAGE_SIZE)) if offset > 0 else None,
        "next_link": page_link(offset + PAGE_SIZE) if offset + PAGE_SIZE < total else None,
        # The bulk retry takes the same filters (no state: FAILED and RETRYING).
        "bulk_retry_url": "/api/v1/jobs/retry?" + urlencode(query),
        "bulk_retry_max": BULK_RETRY_MAX,
    }


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request, node: NodeDep, caller: PageDep) -> Response:
    return render(request, "jobs.html", caller, **_jobs(node, request, caller))


@router.get("/fragments/jobs", response_class=HTMLResponse)
def jobs_fragment(request: Request, node: NodeDep, caller: PageDep) -> Response:
    return render(request, "_job_rows.html", caller, **_jobs(node, request, caller))


def _job(node: NodeState, job_id: int, caller: Caller) -> dict[str, Any]:
    job = existing_job(node, job_id)
    detail = job_detail(node, job, caller)
    link = viewer_url(
        node.settings.viewer_url_template,
        study_uid=detail.study_instance_uid,
        series_uid=detail.series_instance_uid,
        sop_uid=detail.sop_instance_uid,
    )
    return {"job": detail, "viewer_url": link}


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: int, node: NodeDep, caller: PageDep) -> Response:
    return render(request, "job.html", caller, **_job(node, job_id, caller))


@router.get("/fragments/jobs/{job_id}", response_class=HTMLResponse)
def job_fragment(request: Request, job_id: int, node: NodeDep, caller: PageDep) -> Response:
    return render(request, "_job.html", caller, **_job(node, job_id, caller))


# -- studies (exams) ------------------------------------------------------
@router.get("/studies", response_class=HTMLResponse)
def studies_page(request: Request, node: NodeDep, caller: PageDep, offset: int = 0) -> Response:
    page = study_page(node, caller, state=None, limit=50, offset=max(0, offset))
    return render(request, "studies.html", caller, page=page)


@router.get("/studies/{study_uid}", response_class=HTMLResponse)
def study_page_view(request: Request, study_uid: str, node: NodeDep, caller: PageDep) -> Response:
    return render(request, "study.html", caller, study=study_detail(node, study_uid[:64], caller))


# -- destinations, associations, model ------------------------------------
@router.get("/destinations", response_class=HTMLResponse)
def destinations_page(request: Request, node: NodeDep, caller: PageDep) -> Response:
    return render(
        request,
        "destinations.html",
        caller,
        destinations=destination_list(node),
        ae_title=node.settings.ae_title,
        webhooks=[WebhookNoticeOut.of(n) for n in node.store.notices.dead_letters(limit=50)],
        webhook_counts=node.store.notices.counts(),
        webhook_receivers=len(node.settings.webhook_urls),
    )


@router.get("/associations", response_class=HTMLResponse)
def associations_page(
    request: Request, node: NodeDep, caller: PageDep, offset: int = 0
) -> Response:
    offset = max(0, offset)
    rows, total = node.store.audit.list(limit=PAGE_SIZE, offset=offset)
    return render(
        request,
        "associations.html",
        caller,
        rows=rows,
        total=total,
        offset=offset,
        page_size=PAGE_SIZE,
        counts=node.store.audit.counts(),
    )


@router.get("/model", response_class=HTMLResponse)
def model_page(request: Request, node: NodeDep, caller: PageDep) -> Response:
    return render(request, "model.html", caller, model=model_info(node))


# -- upload ---------------------------------------------------------------
@router.get("/upload", response_class=HTMLResponse)
def upload_page(request: Request, node: NodeDep, caller: PageDep) -> Response:
    return render(request, "upload.html", caller, max_upload_mb=node.settings.max_upload_mb)


@router.post("/upload", response_class=HTMLResponse)
async def upload_submit(request: Request, node: NodeDep, caller: PageDep) -> Response:
    """The form's plain POST (works without JavaScript): the page again, with the result."""
    context: dict[str, Any] = {"max_upload_mb": node.settings.max_upload_mb}
    try:
        data, declared = await read_upload(request, upload_limit(node))
        result = await run_segmentation(request, node, data, declared, None)
    except HTTPException as exc:
        return render(request, "upload.html", caller, exc.status_code, error=exc.detail, **context)
    out = result_out(node, result, max_size=1024)
    return render(
        request,
        "upload.html",
        caller,
        result=out,
        overlay_src="data:image/png;base64," + out.overlay_png,
        mask_href="data:image/png;base64," + out.mask_png,
        **context,
    )


# -- login ----------------------------------------------------------------
def _safe_next(target: str | None) -> str:
    """Only a path on this site: never another origin (open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, caller: CallerDep, next: str = "/") -> Response:
    return render(request, "login.html", caller, next=_safe_next(next))


def _audit_sign_in(request: Request, role: Role, *, logout: bool = False) -> None:
    """User Authentication audit message (service/audit_trail.py): the role, never the token."""
    audit = request.app.state.node.audit
    if audit is not None:
        audit.user_authentication(
            role=role.name.lower() if role is not Role.NONE else None,
            host=request.client.host if request.client else None,
            ok=role is not Role.NONE,
            logout=logout,
            how="/logout" if logout else "/login",
        )


@router.post("/login", response_class=HTMLResponse)
def login_submit(
    request: Request,
    token: Annotated[str, Form()],
    next: Annotated[str, Form()] = "/",
) -> Response:
    policy: AccessPolicy = request.app.state.access
    role = policy.role_of_token(token.strip())
    _audit_sign_in(request, role)
    if role is Role.NONE:
        return render(
            request,
            "login.html",
            None,
            401,
            next=_safe_next(next),
            error="That token is not valid here.",
        )
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        session_value(token.strip()),
        max_age=SESSION_MAX_AGE_S,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    policy: AccessPolicy = request.app.state.access
    role = policy.role_of_session(request.cookies.get(SESSION_COOKIE))
    if role is not Role.NONE:
        _audit_sign_in(request, role, logout=True)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def login_redirect(request: Request) -> Response:
    """What a page asked for without access gets: /login, coming back afterwards."""
    if request.url.path.startswith("/fragments/"):
        return Response("login required", status_code=401, media_type="text/plain")
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='/')}", status_code=303)
