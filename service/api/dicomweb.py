"""STOW-RS in: ``POST /dicomweb/studies[/{study}]`` (PS3.18 10.5, multipart/related).

Each ``application/dicom`` part goes through the same durable path as a C-STORE
(``dicom_node.scp.store_encoded``): read bounded (deflate capped), UIDs and SOP
class checked, free disk checked, spool file fsynced, job committed. Only then
is the part named in the response's ReferencedSOPSequence; a part that is
refused is named in FailedSOPSequence with its Failure Reason (the DIMSE status
C-STORE would have answered). The body is parsed as it streams: the request as
a whole is bounded by ``max_stow_mb`` (``service.body_limit``: 413 problem JSON),
each part by ``max_dataset_mb`` (a longer part is counted, not held, and refused
0xA700). At most one part is held in memory.

Status (PS3.18 10.5.3, the 200/202/409 convention of its Store Instances
Response): 200 every instance stored, 202 some stored and some failed, 409 none
stored. Not multipart/related with ``type="application/dicom"``: 415. Only the
admin token or ``stow_token`` may store (Bearer); without one: 401. Logs name
UIDs and job ids, never patient data.
"""

from __future__ import annotations

import hmac
import logging
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol, cast, runtime_checkable

from fastapi import APIRouter, HTTPException, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from dicom_node.scp import StoreOutcome
from dicom_node.status import Status
from service.api.deps import NodeDep, NodeState
from service.settings import Settings

log = logging.getLogger(__name__)

router = APIRouter(tags=["dicomweb"])
DICOM_JSON = "application/dicom+json"
DICOM = "application/dicom"
#: What a STOW-RS sender is recorded as (the jobs' calling AE title column).
STOW_CALLER = "STOW-RS"
STOW_PREFIX = "/dicomweb/"
_AUTHENTICATE = {"WWW-Authenticate": 'Bearer realm="mammoseg"'}
_bearer = HTTPBearer(auto_error=False, description="stow_token or admin_token")

# PS3.6 tags of the Store Instances Response Module (PS3.18 10.5.3).
_REFERENCED = "00081199"
_FAILED = "00081198"
_FAILURE_REASON = "00081197"
_SOP_CLASS = "00081150"
_SOP_INSTANCE = "00081155"


@runtime_checkable
class InstanceStore(Protocol):
    """What stores a received instance durably: the SCP (``StorageSCP.store_encoded``)."""

    def store_encoded(
        self,
        encoded: bytes,
        *,
        calling_ae_title: str,
        peer_address: str,
        association_id: str,
        study_instance_uid: str | None = None,
    ) -> StoreOutcome: ...


def stow_tokens(settings: Settings) -> list[str]:
    return [t.get_secret_value() for t in (settings.admin_token, settings.stow_token) if t]


def require_stow(
    node: NodeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> None:
    """A bearer token equal to ``admin_token`` or ``stow_token`` (constant-time)."""
    tokens = stow_tokens(node.settings)
    if not tokens:
        raise HTTPException(
            401, "this node has no stow_token or admin_token: STOW-RS is refused", _AUTHENTICATE
        )
    if credentials is None:
        raise HTTPException(401, "a stow or admin token is needed (Bearer)", _AUTHENTICATE)
    given = credentials.credentials.encode()
    if not any(hmac.compare_digest(given, t.encode()) for t in tokens):
        raise HTTPException(401, "the bearer token is not valid", _AUTHENTICATE)


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)
    size: int = 0
    too_large: bool = False


class _Parts:
    """python-multipart callbacks that collect finished parts, each bounded."""

    def __init__(self, max_part_bytes: int) -> None:
        self.max_part_bytes = max_part_bytes
        self.done: list[_Part] = []
        self._part = _Part()
        self._field = bytearray()
        self._value = bytearray()

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda d, s, e: self._field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_part_data": self._data,
            "on_part_end": lambda: self.done.append(self._part),
        }

    def _begin(self) -> None:
        self._part = _Part()

    def _header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self._part.headers[name] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        part.size += end - start
        if part.size > self.max_part_bytes:
            part.too_large = True
            part.data = bytearray()  # counted from here on, never held
            return
        part.data.extend(data[start:end])


def _media_type(value: str) -> tuple[str, dict[bytes, bytes]]:
    media, options = parse_options_header(value)
    return media.decode("latin-1").lower(), options


def _check_request_type(request: Request) -> bytes:
    """The boundary of a ``multipart/related; type="application/dicom"`` body, else 415."""
    media, options = _media_type(request.headers.get("content-type", ""))
    if media != "multipart/related":
        raise HTTPException(415, 'STOW-RS takes multipart/related; type="application/dicom"')
    kind = options.get(b"type", b"").decode("latin-1").lower()
    if kind and kind != DICOM:
        raise HTTPException(415, f"parts of type {kind[:64]} are not accepted: only {DICOM}")
    boundary = options.get(b"boundary", b"")
    if not boundary or len(boundary) > 200:
        raise HTTPException(400, "the multipart/related body has no usable boundary")
    return boundary


def _item(outcome: StoreOutcome) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if outcome.sop_class_uid:
        item[_SOP_CLASS] = {"vr": "UI", "Value": [outcome.sop_class_uid]}
    if outcome.sop_instance_uid:
        item[_SOP_INSTANCE] = {"vr": "UI", "Value": [outcome.sop_instance_uid]}
    return item


def store_response(outcomes: list[StoreOutcome]) -> JSONResponse:
    """The Store Instances Response (PS3.18 10.5.3) as application/dicom+json."""
    stored = [o for o in outcomes if o.status is Status.SUCCESS]
    failed = [o for o in outcomes if o.status is not Status.SUCCESS]
    body: dict[str, Any] = {}
    if stored:
        body[_REFERENCED] = {"vr": "SQ", "Value": [_item(o) for o in stored]}
    if failed:
        body[_FAILED] = {
            "vr": "SQ",
            "Value": [
                {**_item(o), _FAILURE_REASON: {"vr": "US", "Value": [int(o.status)]}}
                for o in failed
            ],
        }
    status = 200 if not failed else 202 if stored else 409
    return JSONResponse(body, status_code=status, media_type=DICOM_JSON)


def _store_part(
    store: InstanceStore, part: _Part, *, host: str, request_id: str, study: str | None
) -> StoreOutcome:
    if part.too_large:
        log.warning(
            "STOW-RS part refused on %s: larger than max_dataset_mb",
            request_id,
            extra={"event": "instance_refused", "association_id": request_id},
        )
        return StoreOutcome(Status.OUT_OF_RESOURCES)
    media, _ = _media_type(part.headers.get("content-type", DICOM))
    if media != DICOM:
        log.warning(
            "STOW-RS part refused on %s: content type is not %s",
            request_id,
            DICOM,
            extra={"event": "instance_refused", "association_id": request_id},
        )
        return StoreOutcome(Status.CANNOT_UNDERSTAND)
    try:
        return store.store_encoded(
            bytes(part.data),
            calling_ae_title=STOW_CALLER,
            peer_address=host,
            association_id=request_id,
            study_instance_uid=study,
        )
    except Exception:  # boundary: as the SCP answers 0xA700, the sender may retry
        log.exception(
            "STOW-RS part failed on %s",
            request_id,
            extra={"event": "store_failed", "association_id": request_id},
        )
        return StoreOutcome(Status.OUT_OF_RESOURCES)


async def stow(node: NodeState, request: Request, study: str | None) -> JSONResponse:
    store = node.scp
    if not isinstance(store, InstanceStore):
        raise HTTPException(503, "this node does not receive instances")
    boundary = _check_request_type(request)
    parts = _Parts(node.settings.max_dataset_mb << 20)
    parser = MultipartParser(boundary, cast(Any, parts.callbacks()))
    host = request.client.host if request.client else "?"
    request_id = f"stow-{uuid.uuid4().hex[:12]}"
    outcomes: list[StoreOutcome] = []

    async def store_done() -> None:
        finished, parts.done = parts.done, []
        for part in finished:
            outcomes.append(
                await run_in_threadpool(
                    _store_part, store, part, host=host, request_id=request_id, study=study
                )
            )

    try:
        async for chunk in request.stream():
            parser.write(chunk)
            await store_done()
        parser.finalize()
    except MultipartParseError as exc:
        log.warning(
            "STOW-RS body on %s is not valid multipart (%d parts stored)",
            request_id,
            sum(o.status is Status.SUCCESS for o in outcomes),
            extra={"event": "stow_refused", "association_id": request_id},
        )
        raise HTTPException(400, "the body is not valid multipart/related") from exc
    await store_done()
    if not outcomes:
        raise HTTPException(400, "the multipart/related body holds no parts")
    stored = sum(o.status is Status.SUCCESS for o in outcomes)
    log.info(
        "STOW-RS %s from %s: %d stored, %d failed",
        request_id,
        host,
        stored,
        len(outcomes) - stored,
        extra={"event": "stow_received", "association_id": request_id},
    )
    return store_response(outcomes)


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "All instances stored", "content": {DICOM_JSON: {}}},
    202: {"description": "Some instances stored, some failed", "content": {DICOM_JSON: {}}},
    409: {"description": "No instance stored", "content": {DICOM_JSON: {}}},
}


@router.post("/dicomweb/studies", responses=_RESPONSES, dependencies=[Security(require_stow)])
async def store_instances(node: NodeDep, request: Request) -> JSONResponse:
    """STOW-RS: store the instances of a multipart/related body (PS3.18 10.5)."""
    return await stow(node, request, None)


@router.post(
    "/dicomweb/studies/{study}", responses=_RESPONSES, dependencies=[Security(require_stow)]
)
async def store_study_instances(study: str, node: NodeDep, request: Request) -> JSONResponse:
    """STOW-RS into one study: an instance of another study fails with 0xA900."""
    return await stow(node, request, study)
