"""HTTP request bodies bounded while they stream: size and time (issue 12, finding 6).

A route's own Content-Length check is not enough: ``Content-Length: 10`` with
``Transfer-Encoding: chunked`` passed it and 100 MB was read, and multipart
bodies were spooled before their size was known. This pure-ASGI middleware
sits in front of every route:

- a declared ``Content-Length`` over the route's limit is answered 413 before
  a byte of the body is read; one sent together with ``Transfer-Encoding`` is
  refused 400 (RFC 9112 6.3: the framing is ambiguous, a smuggling vector);
- every body, chunked or not, multipart included, is counted as it arrives and
  refused 413 the moment it passes the limit;
- a body that stalls for ``idle_timeout_s`` between chunks, or takes longer
  than ``total_timeout_s`` in all, is answered 408 (``http_body_idle_timeout_s``,
  ``http_body_total_timeout_s``). A multipart body cut short this way leaves no
  spooled file behind: Starlette's form parser closes (and so deletes) its
  temporary files when ``receive`` raises.

Refusals are RFC 9457 problem JSON, as every error of the API, with
``Connection: close`` (the rest of the body is never read), and a log line with
the client's address (a trusted proxy's X-Forwarded-For applied, service.http_edge).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

from starlette.exceptions import HTTPException

from service.api.deps import problem
from service.settings import Settings

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Any route that is not an upload: forms (the login token) and small JSON bodies.
DEFAULT_MAX_BODY_BYTES: Final = 1 << 20
#: Seconds a body may pause between two chunks, and in all (the settings' defaults).
_FIELDS = Settings.model_fields
DEFAULT_BODY_IDLE_TIMEOUT_S: Final[float] = _FIELDS["http_body_idle_timeout_s"].default
DEFAULT_BODY_TOTAL_TIMEOUT_S: Final[float] = _FIELDS["http_body_total_timeout_s"].default


class _Refused(HTTPException):
    """An HTTPException, so that routes and FastAPI's form parsing pass it on unchanged.

    Raised inside ``receive``, it reaches the app's problem handler (RFC 9457) like
    any refusal; the middleware answers it itself when it escapes the app.
    """

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(status, detail, headers={"Connection": "close"})
        self.status = status


class BodyLimitMiddleware:
    """Refuse request bodies beyond ``limit_for(path)`` bytes or beyond the timeouts."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit_for: Callable[[str], int],
        idle_timeout_s: float = DEFAULT_BODY_IDLE_TIMEOUT_S,
        total_timeout_s: float = DEFAULT_BODY_TOTAL_TIMEOUT_S,
    ) -> None:
        if idle_timeout_s <= 0 or total_timeout_s <= 0:
            raise ValueError("body timeouts must be > 0")
        self.app = app
        self.limit_for = limit_for
        self.idle_timeout_s = idle_timeout_s
        self.total_timeout_s = total_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(str(scope.get("path", "")))
        try:
            _check_headers(scope, limit)
        except _Refused as refused:
            await _answer(_logged(refused, scope), scope, receive, send)
            return
        received = 0
        started = False
        deadline = time.monotonic() + self.total_timeout_s

        async def bounded_receive() -> Message:
            nonlocal received
            left = deadline - time.monotonic()
            try:
                message = await asyncio.wait_for(receive(), min(self.idle_timeout_s, max(left, 0)))
            except TimeoutError as exc:
                raise _logged(_Refused(408, "the request body arrived too slowly"), scope) from exc
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _logged(_Refused(413, _too_large(limit)), scope)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message.get("type") == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracked_send)
        except _Refused as refused:
            if started:  # too late for a status: the connection just ends
                raise
            await _answer(refused, scope, receive, send)


def _too_large(limit: int) -> str:
    size = f"{limit >> 20} MB" if limit >= 1 << 20 else f"{limit} bytes"
    return f"the request body is larger than {size}"


def _check_headers(scope: Scope, limit: int) -> None:
    headers = [(k.lower(), v) for k, v in scope.get("headers", [])]
    lengths = [v for k, v in headers if k == b"content-length"]
    chunked = any(k == b"transfer-encoding" for k, _ in headers)
    if lengths and chunked:
        raise _Refused(400, "Content-Length and Transfer-Encoding together are refused")
    if not lengths:
        return
    if len(set(lengths)) != 1:
        raise _Refused(400, "conflicting Content-Length headers")
    try:
        length = int(lengths[0])
    except ValueError as exc:
        raise _Refused(400, "Content-Length is not a number") from exc
    if length < 0:
        raise _Refused(400, "Content-Length is negative")
    if length > limit:
        raise _Refused(413, _too_large(limit))


def _logged(refused: _Refused, scope: Scope) -> _Refused:
    client = scope.get("client")
    log.info(
        "request body refused %d from %s on %s: %s",
        refused.status,
        client[0] if client else "?",
        scope.get("path", ""),
        refused.detail,
        extra={"event": "http_body_refused"},
    )
    return refused


async def _answer(refused: _Refused, scope: Scope, receive: Receive, send: Send) -> None:
    response = problem(refused.status, str(refused.detail))
    response.headers["Connection"] = "close"
    await response(scope, receive, send)
