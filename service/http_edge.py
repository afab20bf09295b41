"""The HTTP edge: who sent a request, for which host, and how long its head may take.

Three things happen before any route sees a request (issue 12, "HTTP behind a proxy"):

- **Trusted proxies.** ``X-Forwarded-For`` and ``X-Forwarded-Proto`` are read only
  when the direct peer is in ``trusted_proxies``; the client is then the
  right-most address of ``X-Forwarded-For`` that is not a trusted proxy (the
  left-most ones are whatever the client wrote). The scope's ``client`` (what
  ``request.client``, the access rules and the logs see) becomes that address.
  Every request is marked in the scope as proxied or not (:data:`PROXIED`): a
  request from a trusted proxy, or one that carries a forwarding header from any
  peer, is never a *loopback* caller (``service.access``), so a proxy on the
  same host cannot turn remote users into local ones. uvicorn's own proxy-header
  handling (which trusts 127.0.0.1 by default, or ``FORWARDED_ALLOW_IPS``) is off.
- **Host allow-list.** A ``Host`` that is not in ``allowed_hosts`` (plus
  ``http_host`` when it is not a wildcard) is answered 400 problem JSON: a page
  on another site whose name is re-bound to 127.0.0.1 (DNS rebinding) cannot
  read this node through the visitor's browser.
- **Slow headers.** uvicorn closes an idle keep-alive connection after
  ``timeout_keep_alive``, but it has no timeout for a request *head* that is
  still arriving: a client that sends half a request line and stalls holds its
  connection forever (Slowloris). :class:`HeadTimeoutH11` closes a connection
  whose request line and headers have not all arrived ``http_header_timeout_s``
  after it opened, or after the previous response (which also ends a body
  trickled on after an early answer).

:func:`server_config` builds the uvicorn configuration from the settings: the
head timeout, keep-alive, the largest head (``h11_max_incomplete_event_size``),
``limit_concurrency``, the listen backlog and the graceful-shutdown timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping, Sequence
from typing import Any, Final

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.access import PROXIED
from service.api.deps import problem
from service.settings import Settings

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Headers by which a proxy names the client; their presence marks a request as proxied.
FORWARDING_HEADERS: Final = frozenset({b"x-forwarded-for", b"forwarded", b"x-real-ip"})
#: Scope key: the direct peer of a request a trusted proxy forwarded (for the logs).
PROXY_PEER: Final = "mammoseg.proxy_peer"
#: A client named in X-Forwarded-For that is not an IP address (``unknown``, garbage).
UNKNOWN_CLIENT: Final = "unknown"
_MAX_ECHO = 80


def networks(values: Iterable[str]) -> tuple[Network, ...]:
    """``trusted_proxies`` as networks (a bare address is a /32 or /128)."""
    return tuple(ipaddress.ip_network(value.strip(), strict=False) for value in values)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = text.strip()
    if text.startswith("["):  # [v6]:port
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted(host: str | None, trusted: Sequence[Network]) -> bool:
    if not host or not trusted:
        return False
    address = _address(host)
    return address is not None and any(address in network for network in trusted)


def forwarded_client(forwarded_for: Sequence[str], trusted: Sequence[Network]) -> str | None:
    """The right-most ``X-Forwarded-For`` entry that is not a trusted proxy.

    ``forwarded_for`` is every X-Forwarded-For header value in order (each may list
    several addresses). An entry that is no IP address ends the walk: the client
    is then :data:`UNKNOWN_CLIENT`. When every entry is a trusted proxy, the
    left-most is the client; with no entry at all, None (the peer stays the client).
    """
    entries = [part.strip() for value in forwarded_for for part in value.split(",")]
    entries = [entry for entry in entries if entry]
    for entry in reversed(entries):
        address = _address(entry)
        if address is None:
            return UNKNOWN_CLIENT
        if not any(address in network for network in trusted):
            return str(address)
    return str(_address(entries[0])) if entries else None


def _header_values(scope: Scope, name: bytes) -> list[str]:
    return [v.decode("latin-1") for k, v in scope.get("headers", []) if k.lower() == name]


class ForwardedMiddleware:
    """Honour X-Forwarded-For/-Proto from ``trusted`` peers only; mark proxied requests."""

    def __init__(self, app: ASGIApp, *, trusted: Sequence[Network]) -> None:
        self.app = app
        self.trusted = tuple(trusted)
        self._warned = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan; no websockets are served (ws="none")
            await self.app(scope, receive, send)
            return
        peer = scope.get("client")
        peer_host = peer[0] if peer else None
        if is_trusted(peer_host, self.trusted):
            scope[PROXIED] = True
            scope[PROXY_PEER] = peer_host
            client = forwarded_client(_header_values(scope, b"x-forwarded-for"), self.trusted)
            if client is not None:
                scope["client"] = (client, 0)
            protos = _header_values(scope, b"x-forwarded-proto")
            proto = protos[-1].split(",")[-1].strip().lower() if protos else ""
            if proto in ("http", "https"):
                scope["scheme"] = proto
        else:
            names = {k.lower() for k, _ in scope.get("headers", [])}
            scope[PROXIED] = bool(names & FORWARDING_HEADERS)
            if scope[PROXIED] and not self._warned and _is_loopback(peer_host):
                self._warned = True
                log.warning(
                    "a request from %s carried a forwarding header, but %s is not in "
                    "trusted_proxies: it is not treated as local (reads need a token), and "
                    "its X-Forwarded-For is ignored; set trusted_proxies for a reverse proxy",
                    peer_host,
                    peer_host,
                    extra={"event": "untrusted_forwarding_header"},
                )
        await self.app(scope, receive, send)


def _is_loopback(host: str | None) -> bool:
    address = _address(host or "")
    return address is not None and address.is_loopback


def host_name(value: str) -> str:
    """The name of a Host header value: no port, no brackets, lower case, no final dot."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        value = value.partition(":")[0]
    return value.rstrip(".")


def host_allowed(name: str, allowed: Sequence[str]) -> bool:
    """Whether a Host name matches the allow-list: ``*``, an exact name or ``*.domain``."""
    for entry in allowed:
        if entry == "*" or entry == name:
            return True
        if entry.startswith("*.") and name.endswith(entry[1:]) and len(name) > len(entry) - 1:
            return True
    return False


class HostAllowListMiddleware:
    """Answer 400 problem JSON to a request whose Host header is not allowed."""

    def __init__(self, app: ASGIApp, *, allowed: Sequence[str]) -> None:
        self.app = app
        self.allowed = tuple(allowed)
        self.allow_all = "*" in self.allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.allow_all:
            await self.app(scope, receive, send)
            return
        hosts = _header_values(scope, b"host")
        name = host_name(hosts[0]) if len(hosts) == 1 else ""
        if name and host_allowed(name, self.allowed):
            await self.app(scope, receive, send)
            return
        shown = hosts[0][:_MAX_ECHO] if len(hosts) == 1 else f"{len(hosts)} Host headers"
        client = scope.get("client")
        log.warning(
            "refused Host %r from %s (not in allowed_hosts)",
            shown,
            client[0] if client else "?",
            extra={"event": "host_refused"},
        )
        response = problem(
            400, f"Host {shown!r} is not served here (allowed_hosts)" if hosts else "no Host"
        )
        await response(scope, receive, send)


class HeadTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head.

    The deadline starts when the connection opens and again after each response;
    it ends when h11 has parsed a whole request line and headers (the app then
    has the request, and ``service.body_limit`` times its body). Bytes that
    trickle in do not extend it: a Slowloris client sends one every few seconds,
    which also cancels uvicorn's keep-alive timer. The same deadline ends a
    connection that, after an early answer (401, say), keeps trickling a body
    nobody reads (uvicorn discards those bytes and would wait for ever).
    """

    head_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None

    def _waiting(self) -> bool:
        """No request with the app: waiting for a head, or past an answered request."""
        return self.cycle is None or self.cycle.response_complete

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._waiting():  # a whole head arrived: the request is the app's now
            self._cancel_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may already start a pipelined request
        if not self.transport.is_closing() and self._waiting():
            self._start_deadline()

    def _start_deadline(self) -> None:
        self._cancel_deadline()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._deadline_passed)

    def _cancel_deadline(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _deadline_passed(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing() and self._waiting():
            log.debug("no whole request head within %.1f s: connection closed", self.head_timeout_s)
            self.transport.close()


def head_timeout_protocol(timeout_s: float) -> type[HeadTimeoutH11]:
    """:class:`HeadTimeoutH11` with ``timeout_s`` (uvicorn builds one per connection)."""
    return type("HeadTimeoutH11", (HeadTimeoutH11,), {"head_timeout_s": timeout_s})


def server_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration ``serve`` runs with; every limit comes from the settings."""
    values: dict[str, Any] = {
        "host": settings.http_host,
        "port": settings.http_port,
        "http": head_timeout_protocol(settings.http_header_timeout_s),
        "ws": "none",
        "proxy_headers": False,  # ForwardedMiddleware does it, from trusted_proxies only
        "timeout_keep_alive": settings.http_keep_alive_timeout_s,
        "h11_max_incomplete_event_size": settings.http_max_header_bytes,
        "limit_concurrency": settings.http_limit_concurrency or None,
        "backlog": settings.http_backlog,
        "timeout_graceful_shutdown": settings.http_shutdown_timeout_s,
        "log_config": None,
        "access_log": False,
    }
    values.update(overrides)
    return uvicorn.Config(app, **values)


class NodeHttpServer(uvicorn.Server):
    """Uvicorn without its signal re-raise: run_node owns SIGTERM/SIGINT, so the node
    stops in order (SCP, workers, store) and the process exits 0."""

    #: Called with the signal: the worker processes are no longer restarted from then on
    #: (systemd's SIGTERM reaches them too, and they stop on their own).
    on_exit: Callable[[], None] | None = None

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        def request_exit(signum: int, frame: object) -> None:
            log.info("signal %d received: stopping", signum)
            self.should_exit = True
            if self.on_exit is not None:
                self.on_exit()

        previous = {
            sig: signal.signal(sig, request_exit) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
