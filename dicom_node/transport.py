"""The SCP's socket side, bounded: PDU lengths, idle connections, peers, TLS handshakes.

pynetdicom reads each PDU whole (its 32-bit length field allows 4 GiB) before
anything looks at it, counts a TCP connection that never sent an
A-ASSOCIATE-RQ as an association for up to the ACSE timeout, and does the TLS
handshake on its accept loop, so one idle TLS socket stops every other. This
module wraps its server:

- **PDU length at the socket.** Each PDU header is read before its body; a
  length over :attr:`ConnectionLimits.max_pdu_bytes` (P-DATA-TF: a multiple of
  the Maximum Length we advertise, PS3.8 D.3.3.1; A-ASSOCIATE-RQ: its own cap)
  is answered with an A-ABORT (source: service provider, reason: invalid PDU
  parameter value, PS3.8 9.3.8) and the connection is closed; the body is never
  read.
- **Connections before their association.** A connection is accepted on the
  accept loop and handed to its own thread, which does the TLS handshake under
  ``tls_handshake_timeout_s`` and waits ``request_timeout_s`` for the first
  byte of an A-ASSOCIATE-RQ. Only then does it become an association (and count
  towards ``max_associations``); a connection that sends nothing is closed.
  Pending connections are capped in all and per peer address.
- **No Nagle delay.** Every association socket, accepted here or opened by the SCU
  (:func:`no_delay`), has ``TCP_NODELAY`` set: pynetdicom writes a DIMSE message as
  several small sends and then waits for the answer, so with Nagle's algorithm each
  message waits for the peer's delayed ACK (about 40 ms on Linux; a C-STORE to DCMTK's
  storescp took 90 ms on loopback whatever its size, 47 ms with it set).
- **No delayed ACK.** Before every read of an association socket (both ways:
  :class:`_BoundedRecv` on the SCP, :func:`low_latency_on_open` on the SCU) the
  kernel is asked to acknowledge at once (``TCP_QUICKACK``, Linux; it is not sticky,
  hence before every read). A peer that leaves Nagle's algorithm on, as Debian's DCMTK
  does, holds the second small write of its answer until the first is acknowledged,
  and Linux delays that ACK by 40 ms: a C-STORE to storescp took 46 ms, 3.5 ms with
  quick ACKs (docs/performance.md, "Delayed ACKs").
- **Associations per peer.** An A-ASSOCIATE-RQ from an address that already
  has ``max_associations_per_peer`` associations is rejected: A-ASSOCIATE-RJ,
  rejected-transient, service provider (presentation), local limit exceeded
  (PS3.8 9.3.4).
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, cast

from pynetdicom import evt
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from dicom_node.tls import describe_tls_error

log = logging.getLogger(__name__)

PDU_HEADER_BYTES: Final = 6
#: PDU types (PS3.8 9.3.1): the two that carry variable amounts of data.
A_ASSOCIATE_RQ: Final = 0x01
P_DATA_TF: Final = 0x04
#: A-ABORT source 0x02 (service provider), reason 0x06 (invalid PDU parameter value).
_ABORT_SOURCE_PROVIDER: Final = 0x02
_ABORT_INVALID_PARAMETER: Final = 0x06
#: A-ASSOCIATE-RJ: rejected-transient, service provider (presentation), local limit exceeded.
REJECT_LOCAL_LIMIT: Final = (0x02, 0x03, 0x02)
#: A-ASSOCIATE-RJ: rejected-permanent, service user, calling AE title not recognised.
REJECT_CALLING_AE: Final = (0x01, 0x01, 0x03)


def reject_association(assoc: Any, result_source_diagnostic: tuple[int, int, int]) -> None:
    """Answer an A-ASSOCIATE-RQ with A-ASSOCIATE-RJ from an EVT_REQUESTED handler.

    The requestor's AE title is taken from the request first (pynetdicom sets it
    only when it negotiates), so EVT_REJECTED handlers and the audit see it.
    """
    primitive = getattr(assoc.requestor, "primitive", None)
    if primitive is not None and primitive.calling_ae_title:
        assoc.requestor.ae_title = primitive.calling_ae_title
    assoc.acse.send_reject(*result_source_diagnostic)
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()


@dataclass(frozen=True, kw_only=True)
class ConnectionLimits:
    """The socket-side limits and timeouts of the SCP (docs/security.md lists them)."""

    #: Maximum Length we advertise (PS3.8 D.3.3.1); 0 would mean unlimited.
    max_pdu_length: int = 1 << 20
    #: P-DATA-TF PDUs up to this multiple of max_pdu_length are read (peers that round up).
    pdu_slack: int = 4
    #: An A-ASSOCIATE-RQ: 128 presentation contexts and a user identity fit in far less.
    max_associate_rq_bytes: int = 1 << 20
    #: Any other PDU (release, abort, and types a requestor should not send).
    max_other_pdu_bytes: int = 64 << 10
    #: Seconds from accept (after TLS) to the first byte of the A-ASSOCIATE-RQ.
    request_timeout_s: float = 5.0
    #: Seconds from the first byte to the complete A-ASSOCIATE-RQ (the SCP's ACSE timeout).
    request_complete_timeout_s: float = 10.0
    #: Seconds for the whole TLS handshake, off the accept loop.
    tls_handshake_timeout_s: float = 5.0
    #: Socket timeout for every read once associated: a silent peer is dropped.
    network_timeout_s: float = 60.0
    #: Connections accepted but not yet associated, in all and per peer address.
    max_pending: int = 64
    max_pending_per_peer: int = 32
    #: Associations at once from one peer address (0: no cap beyond max_associations).
    max_associations_per_peer: int = 0

    def __post_init__(self) -> None:
        for name in (
            "request_timeout_s",
            "request_complete_timeout_s",
            "tls_handshake_timeout_s",
            "network_timeout_s",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.max_pending < 1 or self.max_pending_per_peer < 1:
            raise ValueError("max_pending and max_pending_per_peer must be >= 1")

    def max_pdu_bytes(self, pdu_type: int) -> int:
        """The largest PDU length field accepted for ``pdu_type``."""
        if pdu_type == P_DATA_TF:
            if self.max_pdu_length <= 0:
                return 16 << 20
            return self.max_pdu_length * self.pdu_slack
        if pdu_type == A_ASSOCIATE_RQ:
            return self.max_associate_rq_bytes
        return self.max_other_pdu_bytes


#: The most one ``recv_into`` asks for: a whole 1 MiB PDU body when the socket has it.
_RECV_CHUNK: Final = 1 << 20


def recv_exactly(sock: socket.socket, nr_bytes: int) -> bytearray:
    """``nr_bytes`` from ``sock`` into one buffer, or fewer if the connection ends first.

    What pynetdicom's ``AssociationSocket.recv`` does (blocking until all is read, short
    when the peer closes, the socket's own timeout and errors raised as they are), but
    with ``recv_into`` a preallocated buffer instead of 4 KB ``recv`` calls appended to a
    ``bytearray``: a 27 MB data set was about 6,600 calls and half of the receiving
    thread's time (docs/performance.md, "Receive").
    """
    buffer = bytearray(nr_bytes)
    view = memoryview(buffer)
    received = 0
    while received < nr_bytes:
        quick_ack(sock)
        count = sock.recv_into(view[received:], min(nr_bytes - received, _RECV_CHUNK))
        if count == 0:
            del view
            del buffer[received:]
            return buffer
        received += count
    return buffer


class PduTooLarge(OSError):
    """A PDU length field over the cap; pynetdicom treats it as the connection closing."""


class _BoundedRecv:
    """Replaces one AssociationSocket's ``recv``: PDU headers are checked before bodies.

    pynetdicom's DUL reads a PDU as ``recv(6)`` then ``recv(length)``; the
    length is checked here, between the two, so the body of an oversized PDU is
    never read or allocated.
    """

    def __init__(
        self, sock: AssociationSocket, limits: ConnectionLimits, peer: str, on_refused: Callable
    ) -> None:
        self._sock = sock
        self._recv = sock.recv
        self._limits = limits
        self._peer = peer
        self._on_refused = on_refused
        self._body: int | None = None

    def __call__(self, nr_bytes: int) -> bytearray:
        if self._body is not None and nr_bytes == self._body:
            self._body = None
            raw = self._sock.socket
            if raw is None:
                return self._recv(nr_bytes)
            return recv_exactly(raw, nr_bytes)
        quick_ack(self._sock.socket)
        data = self._recv(nr_bytes)
        if nr_bytes == PDU_HEADER_BYTES and len(data) == PDU_HEADER_BYTES:
            pdu_type, _, length = struct.unpack(">BBL", bytes(data))
            self._body = length if 0x01 <= pdu_type <= 0x07 else None
            cap = self._limits.max_pdu_bytes(pdu_type)
            if self._body is not None and length > cap:
                self._refuse(pdu_type, length, cap)
        return data

    def _refuse(self, pdu_type: int, length: int, cap: int) -> None:
        log.warning(
            "A-ABORT to %s: PDU type 0x%02X claims %d bytes, more than %d",
            self._peer,
            pdu_type,
            length,
            cap,
            extra={"event": "pdu_refused"},
        )
        self._on_refused(length)
        raw = self._sock.socket
        if raw is not None:
            abort = A_ABORT_RQ()
            abort.source = _ABORT_SOURCE_PROVIDER
            abort.reason_diagnostic = _ABORT_INVALID_PARAMETER
            try:
                raw.sendall(abort.encode())
                raw.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._end_wait_for_request()
        raise PduTooLarge(f"PDU of {length} bytes refused (limit {cap})")

    def _end_wait_for_request(self) -> None:
        """Before the A-ASSOCIATE-RQ (Sta1/2), wake the acceptor waiting for it, so it ends.

        pynetdicom's acceptor thread waits up to the ACSE timeout for the request and
        counts as an association meanwhile; an empty item is what its wait returns on a
        timeout, so it closes now instead of holding the slot.
        """
        assoc = getattr(self._sock, "assoc", None)
        dul = getattr(assoc, "dul", None)
        if assoc is None or dul is None or assoc.is_established:
            return
        # Sta1 too: the first PDU can be read before the connection event (Evt5) is handled.
        if dul.state_machine.current_state in ("Sta1", "Sta2"):
            dul.to_user_queue.put(None)


@dataclass
class GuardCounts:
    """What the guard refused, for tests and metrics."""

    pending_refused: int = 0
    idle_closed: int = 0
    tls_failed: int = 0
    pdu_refused: int = 0
    peer_rejected: int = 0
    largest_refused_pdu: int = 0


class GuardedRequestHandler(RequestHandler):
    """One accepted connection: TLS handshake and the wait for data, then the association."""

    server: GuardedAssociationServer
    request: socket.socket

    def handle(self) -> None:
        server = self.server
        peer = str(self.client_address[0])
        raw = self.request
        handed_over = False
        try:
            sock = self._handshake(raw, peer)
            if sock is None or not self._wait_for_request(sock, peer):
                _close(sock or raw)
                return
            sock.settimeout(server.limits.network_timeout_s)
            self.request = sock
            assoc = self._create_association()
            guarded = assoc.dul.socket
            if guarded is not None:
                guarded.recv = _BoundedRecv(  # type: ignore[method-assign]
                    guarded, server.limits, peer, server._pdu_refused
                )
            requested = threading.Event()
            assoc._mammoseg_requested = requested  # set by the server's EVT_REQUESTED handler
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            handed_over = True
            server._release_pending(peer, raw)
            assoc.start()
            self._watch_request(assoc, requested, sock, peer)
        finally:
            if not handed_over:
                server._release_pending(peer, raw)

    def _watch_request(
        self, assoc: Any, requested: threading.Event, sock: socket.socket, peer: str
    ) -> None:
        """Close a connection whose A-ASSOCIATE-RQ is not complete within the ACSE timeout.

        pynetdicom's own wait ends then, but its reader stays blocked in ``recv``
        (a peer trickling one byte at a time) and the association keeps its slot
        until the network timeout; shutting the socket down ends both now.
        """
        deadline = time.monotonic() + self.server.limits.request_complete_timeout_s
        while assoc.is_alive() and not requested.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                self.server.counts.idle_closed += 1
                log.info(
                    "connection from %s closed: A-ASSOCIATE-RQ incomplete after %g s",
                    peer,
                    self.server.limits.request_complete_timeout_s,
                    extra={"event": "connection_idle_closed"},
                )
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            requested.wait(min(left, 0.1))

    def _handshake(self, raw: socket.socket, peer: str) -> socket.socket | None:
        context = self.server.ssl_context
        if context is None:
            return raw
        raw.settimeout(self.server.limits.tls_handshake_timeout_s)
        try:
            return context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.server.counts.tls_failed += 1
            log.warning(
                "TLS handshake with %s failed: %s",
                peer,
                describe_tls_error(exc),
                extra={"event": "tls_handshake_failed"},
            )
            return None

    def _wait_for_request(self, sock: socket.socket, peer: str) -> bool:
        if isinstance(sock, ssl.SSLSocket) and sock.pending():
            return True
        try:
            ready, _, _ = select.select([sock], [], [], self.server.limits.request_timeout_s)
        except (OSError, ValueError):
            return False
        if not ready:
            self.server.counts.idle_closed += 1
            log.info(
                "connection from %s closed: no A-ASSOCIATE-RQ within %g s",
                peer,
                self.server.limits.request_timeout_s,
                extra={"event": "connection_idle_closed"},
            )
        return bool(ready)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


_TCP_FAMILIES: Final = (socket.AF_INET, socket.AF_INET6)
#: Linux only; elsewhere :func:`quick_ack` does nothing.
_TCP_QUICKACK: Final = getattr(socket, "TCP_QUICKACK", None)


def no_delay(sock: socket.socket | None) -> None:
    """Send small writes at once (``TCP_NODELAY``); a socket that is not TCP is left alone."""
    if sock is None or sock.family not in _TCP_FAMILIES:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:  # closed already: the association fails on its own
        pass


def quick_ack(sock: Any) -> None:
    """Acknowledge what arrives next at once (``TCP_QUICKACK``); not TCP: left alone.

    Linux leaves quick-ACK mode again on its own, so this is asked before every read.
    """
    if _TCP_QUICKACK is None or getattr(sock, "family", None) not in _TCP_FAMILIES:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
    except OSError:  # closed already: the read that follows fails on its own
        pass


class _QuickAckRecv:
    """Replaces an SCU AssociationSocket's ``recv``: :func:`quick_ack`, then pynetdicom's."""

    def __init__(self, sock: AssociationSocket) -> None:
        self._sock = sock
        self._recv = sock.recv

    def __call__(self, nr_bytes: int) -> bytearray:
        quick_ack(self._sock.socket)
        return self._recv(nr_bytes)


def low_latency_on_open(event: evt.Event) -> None:
    """EVT_CONN_OPEN handler of the SCU: :func:`no_delay`, and quick ACKs before every read."""
    sock = event.assoc.dul.socket
    no_delay(getattr(sock, "socket", None))
    if sock is not None and not isinstance(sock.recv, _QuickAckRecv):
        sock.recv = _QuickAckRecv(sock)  # type: ignore[method-assign]


class GuardedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the limits of :class:`ConnectionLimits`."""

    daemon_threads = True
    block_on_close = False  # stop() does not wait for connections still in their handshake

    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        self.limits = limits
        self.counts = GuardCounts()
        self._pending: Counter[str] = Counter()
        self._pending_sockets: set[socket.socket] = set()
        self._guard_lock = threading.Lock()
        kwargs.setdefault("request_handler", GuardedRequestHandler)
        super().__init__(*args, **kwargs)
        self.bind(evt.EVT_REQUESTED, self._on_requested)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept only; the TLS handshake happens in the connection's own thread."""
        listener = cast(socket.socket, self.socket)
        client, address = listener.accept()
        no_delay(client)
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Refuse (close) a connection beyond the pending caps, on the accept loop, cheaply."""
        peer = str(client_address[0])
        with self._guard_lock:
            total = sum(self._pending.values())
            if total >= self.limits.max_pending or (
                self._pending[peer] >= self.limits.max_pending_per_peer
            ):
                self.counts.pending_refused += 1
                refused = True
            else:
                self._pending[peer] += 1
                self._pending_sockets.add(request)
                refused = False
        if refused:
            log.warning(
                "connection from %s refused: too many connections without an association",
                peer,
                extra={"event": "connection_refused"},
            )
        return not refused

    def _release_pending(self, peer: str, raw: socket.socket) -> None:
        with self._guard_lock:
            if raw in self._pending_sockets:
                self._pending_sockets.discard(raw)
                self._pending[peer] -= 1
                if self._pending[peer] <= 0:
                    del self._pending[peer]

    def _pdu_refused(self, length: int) -> None:
        with self._guard_lock:
            self.counts.pdu_refused += 1
            self.counts.largest_refused_pdu = max(self.counts.largest_refused_pdu, length)

    @property
    def pending_connections(self) -> int:
        with self._guard_lock:
            return sum(self._pending.values())

    def _on_requested(self, event: evt.Event) -> None:
        """Reject an A-ASSOCIATE-RQ beyond ``max_associations_per_peer`` (PS3.8 9.3.4)."""
        assoc = event.assoc
        requested = getattr(assoc, "_mammoseg_requested", None)
        if requested is not None:
            requested.set()
        cap = self.limits.max_associations_per_peer
        if cap <= 0 or assoc.is_rejected or assoc.is_aborted:
            return
        peer = assoc.requestor.address
        others = [
            other
            for other in self.active_associations
            if other is not assoc
            and other.requestor.address == peer
            and not (other.is_released or other.is_aborted or other.is_rejected)
        ]
        if len(others) < cap:
            return
        with self._guard_lock:
            self.counts.peer_rejected += 1
        log.warning(
            "association from %s rejected: %d associations from that address already",
            peer,
            len(others),
            extra={"event": "association_rejected_peer_limit"},
        )
        reject_association(assoc, REJECT_LOCAL_LIMIT)

    def server_close(self) -> None:
        super().server_close()
        with self._guard_lock:
            pending = list(self._pending_sockets)
        for sock in pending:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
