"""What every route depends on: the node's state, the caller's role, problem errors.

Routes read like sentences: ``def retry(job_id: int, node: NodeDep, _: AdminDep)``.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import Depends, HTTPException, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from service.access import ACTION_HEADER, PROXIED, SESSION_COOKIE, AccessPolicy, Role
from service.audit_trail import AuditTrail
from service.inference import Segmenter
from service.settings import Settings
from service.store import JobStore
from service.supervisor import WorkerHealth

PROBLEM_JSON = "application/problem+json"
_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="mammoseg"'}


class Listening(Protocol):
    @property
    def listening(self) -> bool: ...


class Workers(Protocol):
    """The node's workers: child processes of serve, or threads (service/supervisor.py)."""

    def worker_health(self) -> WorkerHealth: ...


@dataclass
class NodeState:
    """What the HTTP side may look at; built by the wiring in service.node."""

    store: JobStore
    segmenter: Segmenter | None
    scp: Listening | None
    data_dir: Path
    min_free_mb: int
    version: str
    settings: Settings
    #: None: no workers to report (an app without them, in tests).
    workers: Workers | None = None
    #: The DICOM audit trail (service/audit_trail.py); None: admin actions are not audited.
    audit: AuditTrail | None = None


class Check(BaseModel):
    name: str
    ok: bool
    detail: str


class Readiness(BaseModel):
    ready: bool
    checks: list[Check]


def readiness(node: NodeState) -> Readiness:
    """Model loaded, store writable, SCP listening, disk above the watermark, workers up."""
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
    if node.workers is not None:
        # A worker process being restarted (after a crash) is "not ready" for that while:
        # the SCP still receives, the jobs wait in the store.
        health = node.workers.worker_health()
        checks.append(Check(name="workers", ok=health.ok, detail=health.detail))
    return Readiness(ready=all(c.ok for c in checks), checks=checks)


def problem(status: int, detail: str, *, title: str | None = None, **extra: Any) -> JSONResponse:
    """An RFC 9457 problem document."""
    return JSONResponse(
        status_code=status,
        media_type=PROBLEM_JSON,
        content={
            "type": "about:blank",
            "title": title or HTTPStatus(status).phrase,
            "status": status,
            "detail": detail,
            **extra,
        },
    )


def get_node(request: Request) -> NodeState:
    node: NodeState = request.app.state.node
    return node


NodeDep = Annotated[NodeState, Depends(get_node)]

_bearer = HTTPBearer(auto_error=False, description="viewer_token or admin_token")


@dataclass(frozen=True)
class Caller:
    """Who is asking: the role a token or session gives, how it came, from where.

    ``host`` is the client address (a trusted proxy's X-Forwarded-For already
    applied, ``service.http_edge``); ``proxied``: the request came through a proxy.
    """

    role: Role
    via_cookie: bool
    host: str | None
    proxied: bool = True

    def may_read(self, policy: AccessPolicy) -> bool:
        return policy.may_read(self.role, self.host, proxied=self.proxied)

    def may_see_patient_data(self, settings: Settings) -> bool:
        """``show_patient_data`` applies to a token or a session, never to a tokenless read."""
        return AccessPolicy.may_see_patient_data(self.role, settings.show_patient_data)


def get_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Caller:
    """A bearer token wins over the session cookie; a token that is wrong is refused at once."""
    policy: AccessPolicy = request.app.state.access
    host = request.client.host if request.client else None
    # Not marked (no service.http_edge in front): taken as proxied, so never loopback.
    proxied = bool(request.scope.get(PROXIED, True))
    if credentials is not None:
        role = policy.role_of_token(credentials.credentials)
        if role is Role.NONE:
            audit = request.app.state.node.audit
            if audit is not None:
                audit.user_authentication(role=None, host=host, ok=False, how="bearer token")
            raise HTTPException(401, "the bearer token is not valid", headers=_AUTHENTICATE)
        return Caller(role=role, via_cookie=False, host=host, proxied=proxied)
    role = policy.role_of_session(request.cookies.get(SESSION_COOKIE))
    return Caller(role=role, via_cookie=role is not Role.NONE, host=host, proxied=proxied)


CallerDep = Annotated[Caller, Depends(get_caller)]


def require_reader(request: Request, caller: CallerDep) -> Caller:
    policy: AccessPolicy = request.app.state.access
    if not caller.may_read(policy):
        raise HTTPException(
            401,
            "a viewer or admin token is needed (Authorization: Bearer ...)",
            headers=_AUTHENTICATE,
        )
    return caller


def require_admin(request: Request, caller: CallerDep) -> Caller:
    policy: AccessPolicy = request.app.state.access
    if caller.role < Role.ADMIN:
        detail = "an admin token is needed (Authorization: Bearer ...)"
        if not policy.actions_enabled:
            detail += "; this node has no admin_token configured, so actions are disabled"
        audit = request.app.state.node.audit
        if audit is not None:
            audit.admin_action(
                action=f"{request.method} {request.url.path}",
                uri=request.url.path,
                role=caller.role.name.lower(),
                host=caller.host,
                ok=False,
                detail="refused: no admin token",
            )
        raise HTTPException(401, detail, headers=_AUTHENTICATE)
    if caller.via_cookie and request.headers.get(ACTION_HEADER) is None:
        # SameSite=Strict already keeps the cookie off cross-site requests; belt and braces.
        raise HTTPException(403, f"actions from a browser session need the {ACTION_HEADER} header")
    return caller


ReaderDep = Annotated[Caller, Depends(require_reader)]
AdminDep = Annotated[Caller, Depends(require_admin)]
