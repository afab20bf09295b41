"""The PDU length guard on its own: headers checked before bodies, without a network."""

from __future__ import annotations

import socket
import struct

import pytest

from dicom_node import transport
from dicom_node.transport import ConnectionLimits, PduTooLarge, _BoundedRecv, _QuickAckRecv


class FakeRaw:
    """The raw socket: bodies are read from it with recv_into, a few bytes at a time."""

    family = socket.AF_INET

    def __init__(self, owner: FakeSocket | None = None, piece: int = 7) -> None:
        self.sent = b""
        self.shut = False
        self.owner = owner
        self.piece = piece
        self.calls = 0
        #: "ack" for each TCP_QUICKACK asked, "read" for each read, in order.
        self.events: list[str] = []

    def setsockopt(self, level: int, option: int, value: int) -> None:
        if (level, option, value) == (socket.IPPROTO_TCP, getattr(socket, "TCP_QUICKACK", -1), 1):
            self.events.append("ack")

    def recv_into(self, view: memoryview, nbytes: int) -> int:
        assert self.owner is not None
        self.calls += 1
        self.events.append("read")
        start = self.owner.read
        data = self.owner.stream[start : start + min(nbytes, self.piece, len(view))]
        view[: len(data)] = data
        self.owner.read += len(data)
        return len(data)

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def shutdown(self, how: int) -> None:
        self.shut = True


class FakeSocket:
    """An AssociationSocket stand-in: recv(n) serves from a byte stream."""

    def __init__(self, stream: bytes) -> None:
        self.stream = stream
        self.read = 0
        self.socket = FakeRaw(self)

    def recv(self, nr_bytes: int) -> bytearray:
        self.socket.events.append("read")
        data = self.stream[self.read : self.read + nr_bytes]
        self.read += len(data)
        return bytearray(data)


def pdu(pdu_type: int, body: bytes, claimed: int | None = None) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body) if claimed is None else claimed) + body


def guarded(stream: bytes, **limits: int) -> tuple[FakeSocket, _BoundedRecv, list[int]]:
    sock = FakeSocket(stream)
    refused: list[int] = []
    return (
        sock,
        _BoundedRecv(sock, ConnectionLimits(**limits), "127.0.0.1", refused.append),
        refused,
    )  # type: ignore[arg-type]


def test_pdus_within_their_limits_pass_unchanged() -> None:
    body = bytes(6)  # a body of 6 bytes is read as a body, not as a header
    stream = pdu(0x04, body) + pdu(0x05, bytes(4))
    sock, recv, refused = guarded(stream)
    assert recv(6) == stream[:6] and recv(6) == body
    assert recv(6) == stream[12:18] and recv(4) == bytes(4)
    assert refused == [] and sock.socket.sent == b""


@pytest.mark.parametrize(
    ("pdu_type", "claimed", "limit"),
    [(0x01, 400 << 20, 1 << 20), (0x04, (4 << 20) + 1, 4 << 20), (0x05, 1 << 20, 64 << 10)],
)
def test_oversized_pdu_is_aborted_before_its_body(pdu_type: int, claimed: int, limit: int) -> None:
    sock, recv, refused = guarded(pdu(pdu_type, b"", claimed) + bytes(1 << 16))
    with pytest.raises(PduTooLarge, match=f"limit {limit}"):
        recv(6)
    print(f"\nPDU type 0x{pdu_type:02X} claiming {claimed} bytes: refused after {sock.read} bytes")
    assert sock.read == 6 and refused == [claimed]
    assert sock.socket.sent == b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06" and sock.socket.shut


def test_unknown_pdu_type_is_left_to_pynetdicom() -> None:
    sock, recv, refused = guarded(pdu(0x09, b"", 1 << 30))
    assert len(recv(6)) == 6 and refused == []


def test_limits_follow_the_advertised_maximum_length() -> None:
    limits = ConnectionLimits(max_pdu_length=16384, pdu_slack=2)
    assert limits.max_pdu_bytes(0x04) == 32768
    assert ConnectionLimits(max_pdu_length=0).max_pdu_bytes(0x04) == 16 << 20
    with pytest.raises(ValueError):
        ConnectionLimits(request_timeout_s=0)


def test_a_body_is_read_whole_into_one_buffer_or_short_when_the_peer_closes() -> None:
    body = bytes(range(200)) * 3
    stream = pdu(0x04, body)
    sock, recv, _ = guarded(stream)
    assert recv(6) == stream[:6]
    got = recv(len(body))
    assert isinstance(got, bytearray) and got == body
    assert sock.socket.calls == -(
        -len(body) // sock.socket.piece
    )  # read in the raw socket's pieces
    # The connection ends mid-body: what arrived, as pynetdicom's recv returns it.
    cut = pdu(0x04, body)[: 6 + 100]
    sock, recv, _ = guarded(cut)
    assert recv(6) == cut[:6] and recv(len(body)) == body[:100]


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux's")
def test_every_read_asks_for_an_immediate_ack_first() -> None:
    # headers through pynetdicom's recv, bodies through recv_into, 7 bytes at a time
    body = bytes(20)
    sock, recv, _ = guarded(pdu(0x04, body) + pdu(0x05, bytes(4)))
    assert recv(6) and recv(20) == body and recv(6) and recv(4)
    events = sock.socket.events
    assert events.count("read") == 1 + 3 + 1 + 1
    assert all(events[i - 1] == "ack" for i, e in enumerate(events) if e == "read")
    # the SCU's reads (pynetdicom's recv, wrapped)
    scu = FakeSocket(b"abcdef")
    wrapped = _QuickAckRecv(scu)  # type: ignore[arg-type]
    assert wrapped(6) == b"abcdef" and scu.socket.events == ["ack", "read"]


def test_quick_ack_leaves_sockets_that_are_not_tcp_alone() -> None:
    unix = FakeRaw()
    unix.family = socket.AF_UNIX  # type: ignore[misc]
    transport.quick_ack(unix)
    transport.quick_ack(None)
    assert unix.events == []
    tcp = FakeRaw()
    transport.quick_ack(tcp)
    assert tcp.events == (["ack"] if hasattr(socket, "TCP_QUICKACK") else [])
