"""The HTTP side: the REST API (``service.api``), the dashboard (``service.web``), docs.

``create_app(node)`` is what the wiring calls. Routes return their schema
types; every error is RFC 9457 problem JSON (pages send the browser to
``/login`` instead of a 401). No patient names, IDs or birth dates appear in
any response unless ``show_patient_data`` is set, and then only to a caller
with a token or a session. Before any route, ``service.http_edge`` checks the
Host header and applies a trusted proxy's X-Forwarded-For, and
``service.body_limit`` bounds the body. Static assets, the API docs included,
are served from ``service/static``: nothing comes from a CDN.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.access import AccessPolicy
from service.api import dicomweb, jobs, segment, studies, system, webhooks
from service.api.deps import (
    Check,
    Listening,
    NodeDep,
    NodeState,
    Readiness,
    get_node,
    problem,
    readiness,
)
from service.api.problems import problem_openapi
from service.api.schemas import JobOut, JobPage
from service.api.segment import CONCURRENT_UPLOADS, MULTIPART_OVERHEAD, upload_limit
from service.body_limit import DEFAULT_MAX_BODY_BYTES, BodyLimitMiddleware
from service.http_edge import ForwardedMiddleware, HostAllowListMiddleware, networks
from service.metrics import AuditCollector, build_registry
from service.web import pages

__all__ = [
    "Check",
    "JobOut",
    "JobPage",
    "Listening",
    "NodeDep",
    "NodeState",
    "Readiness",
    "create_app",
    "get_node",
    "problem",
    "readiness",
]

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: Routes that take an image upload (max_upload_mb); every other body is small.
UPLOAD_PATHS = frozenset({"/api/v1/segment", "/upload"})
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def _install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def _http_problem(request: Request, exc: StarletteHTTPException) -> Response:
        response = problem(exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", ""))}
            for err in exc.errors()
        ]
        detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors)
        return problem(422, detail or "invalid request", errors=errors)

    @app.exception_handler(pages.LoginRequired)
    async def _login(request: Request, exc: pages.LoginRequired) -> Response:
        return pages.login_redirect(request)

    @app.exception_handler(Exception)
    async def _internal_problem(request: Request, exc: Exception) -> JSONResponse:
        # Boundary: the type only; the message could carry data from a file.
        return problem(500, type(exc).__name__)


def create_app(
    node: NodeState,
    *,
    body_idle_timeout_s: float | None = None,
    body_total_timeout_s: float | None = None,
) -> FastAPI:
    """The app; request bodies must keep coming within the two timeouts (408 otherwise).

    The timeouts are the settings' (``http_body_idle_timeout_s``,
    ``http_body_total_timeout_s``) unless given here.
    """
    settings = node.settings
    app = FastAPI(
        title="mammoseg",
        version=node.version,
        description="Breast mass segmentation DICOM node: jobs, statistics, destinations, "
        "association audit, model, metrics, and segmentation of uploaded images. "
        "Not for diagnostic use.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.node = node
    app.state.access = AccessPolicy.from_settings(node.settings)
    segmenter = node.segmenter
    app.state.metrics = build_registry(
        node.store,
        node.data_dir,
        {
            "name": segmenter.contract.model_name,
            "version": segmenter.contract.model_version,
            "sha256": segmenter.sha256,
        }
        if segmenter
        else None,
        workers=node.workers,
    )
    if node.audit is not None:
        app.state.metrics.register(AuditCollector(node.audit))
    app.state.upload_slots = asyncio.Semaphore(CONCURRENT_UPLOADS)
    _install_problem_handlers(app)
    # Bodies are bounded while they stream (service.body_limit); added before the security
    # headers so that its 413/408 answers carry them too.
    upload_bytes = upload_limit(node) + MULTIPART_OVERHEAD
    stow_bytes = settings.max_stow_mb << 20  # STOW-RS, all parts (service/api/dicomweb.py)

    def body_limit(path: str) -> int:
        if path.startswith(dicomweb.STOW_PREFIX):
            return stow_bytes
        return upload_bytes if path in UPLOAD_PATHS else DEFAULT_MAX_BODY_BYTES

    app.add_middleware(
        BodyLimitMiddleware,
        limit_for=body_limit,
        idle_timeout_s=body_idle_timeout_s or settings.http_body_idle_timeout_s,
        total_timeout_s=body_total_timeout_s or settings.http_body_total_timeout_s,
    )
    # Outside the body limit (the last added runs first): the client is known (a trusted
    # proxy's X-Forwarded-For applied) before the Host check logs a refusal.
    app.add_middleware(HostAllowListMiddleware, allowed=settings.host_allow_list)
    app.add_middleware(ForwardedMiddleware, trusted=networks(settings.trusted_proxies))

    @app.middleware("http")
    async def _security_headers(request: Request, call_next):  # type: ignore[no-untyped-def]
        response = await call_next(request)
        for name, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="mammoseg API",
            swagger_js_url="/static/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
            # No validator badge: it would call validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(system.router)
    app.include_router(jobs.router)
    app.include_router(studies.router)
    app.include_router(webhooks.router)
    app.include_router(segment.router)
    app.include_router(dicomweb.router)
    app.include_router(pages.router)
    app.openapi = problem_openapi(app)  # type: ignore[method-assign]
    return app
