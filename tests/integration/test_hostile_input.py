"""Hostile peers against the storage SCP on 127.0.0.1 (issue 12, findings 1, 3, 4 and 5).

Each test prints its figure (RSS growth sampled while the attack runs, bytes
the peer got to send before the refusal, connections closed or refused) and
then shows the SCP still answering C-ECHO and accepting a normal C-STORE.
None asserts a time.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import DigitalMammographyXRayImageStorageForPresentation, Verification

from dicom_node.scp import ScpConfig, StorageSCP, TlsConfig
from dicom_node.status import Status
from service.pipeline import JobFailed, read_instance
from service.upload import ImageTooLarge, decode
from tests.conftest import free_port
from tests.hostile import RssSampler, deflate_bomb
from tests.integration.test_scp import Sink, small_image
from tests.integration.test_tls import client_context, pki, tls_associate  # noqa: F401

MG = DigitalMammographyXRayImageStorageForPresentation
RSS_LIMIT_MB = 250
BOMB_BYTES = 600 << 20
A_ABORT_INVALID_PARAMETER = b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x06"


@pytest.fixture
def start(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    started: list[StorageSCP] = []

    def make(sink: Sink | None = None, **kw: object) -> StorageSCP:
        config = ScpConfig(
            ae_title="MAMMOSEG",
            host="127.0.0.1",
            port=free_port(),
            spool_dir=tmp_path / "spool",
            **kw,
        )  # type: ignore[arg-type]
        scp = StorageSCP(config, sink or Sink())
        scp.start()
        started.append(scp)
        return scp

    yield make
    for scp in started:
        scp.stop()


def associate(port: int, *, deflate: bool = False):  # type: ignore[no-untyped-def]
    ae = AE(ae_title="PACS")
    ae.add_requested_context(Verification)
    syntaxes = [DeflatedExplicitVRLittleEndian] if deflate else [ExplicitVRLittleEndian]
    ae.add_requested_context(MG, syntaxes)
    return ae.associate("127.0.0.1", port, ae_title="MAMMOSEG")


def still_serving(port: int) -> None:
    """The node answers C-ECHO and accepts a normal C-STORE."""
    assoc = associate(port)
    assert assoc.is_established, "the SCP no longer accepts associations"
    try:
        assert assoc.send_c_echo().Status == Status.SUCCESS
        assert assoc.send_c_store(small_image()).Status == Status.SUCCESS
    finally:
        assoc.release()


# --- finding 1: deflate bomb --------------------------------------------------------


@pytest.fixture(scope="module")
def bomb_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.dcm"
    path.write_bytes(deflate_bomb(BOMB_BYTES))
    return path


def test_deflate_bomb_c_store_is_refused_with_a700(  # type: ignore[no-untyped-def]
    start, bomb_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The SCU sends the file's bytes as they are (it would otherwise inflate them itself).
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    sink = Sink()
    scp = start(sink)
    assoc = associate(scp.config.port, deflate=True)
    assert assoc.is_established
    with RssSampler() as rss:
        status = assoc.send_c_store(bomb_file)
    assoc.release()
    print(
        f"\ndeflate bomb over C-STORE: {bomb_file.stat().st_size} bytes claiming "
        f"{BOMB_BYTES >> 20} MiB; status 0x{int(status.Status):04X} "
        f"({status.get('ErrorComment', '')}); SCP RSS growth {rss.growth_mb:.1f} MB"
    )
    assert status.Status == Status.OUT_OF_RESOURCES
    assert "inflated" in str(status.get("ErrorComment", ""))
    assert sink.received == [] and not list(scp.config.spool_dir.glob("*.dcm"))
    assert rss.growth_mb < RSS_LIMIT_MB
    still_serving(scp.config.port)


def test_deflate_bomb_in_the_worker_and_the_upload(bomb_file: Path) -> None:
    with RssSampler() as rss, pytest.raises(JobFailed, match="inflates to more than"):
        read_instance(bomb_file)
    with pytest.raises(ImageTooLarge, match="inflates to more than"):
        decode(bomb_file.read_bytes(), "application/dicom", max_pixels=1_000_000)
    print(f"\ndeflate bomb in the worker read and the upload: RSS growth {rss.growth_mb:.1f} MB")
    assert rss.growth_mb < RSS_LIMIT_MB


# --- finding 3: PDU length ----------------------------------------------------------


def stream_body(sock: socket.socket, length: int) -> int:
    """Stream a PDU body of ``length`` zero bytes until the SCP stops taking it."""
    sock.setblocking(False)
    sent = 0
    chunk = bytes(64 << 10)
    try:
        while sent < length:
            sent += sock.send(chunk[: min(len(chunk), length - sent)])
    except OSError:
        pass  # reset, broken pipe, or it would block: the SCP is not reading
    return sent


def test_400_mb_associate_rq_is_aborted_unread(start) -> None:  # type: ignore[no-untyped-def]
    scp = start()
    port = scp.config.port
    length = 400 << 20
    with RssSampler() as rss:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.settimeout(5.0)
        sock.sendall(struct.pack(">BBL", 0x01, 0, length))
        answer = b""
        try:
            while len(answer) < len(A_ABORT_INVALID_PARAMETER):
                part = sock.recv(64)
                if not part:
                    break
                answer += part
        except OSError:
            pass
        sent = stream_body(sock, length)  # what the kernel takes after the abort
        sock.close()
    print(
        f"\n400 MB A-ASSOCIATE-RQ: answered {answer.hex()} (A-ABORT) before any body byte; "
        f"{sent} body bytes accepted afterwards by the closed socket's buffers; "
        f"SCP RSS growth {rss.growth_mb:.1f} MB; "
        f"guard {scp.guard.counts}"
    )
    assert answer == A_ABORT_INVALID_PARAMETER
    assert scp.guard.counts.pdu_refused == 1
    assert rss.growth_mb < RSS_LIMIT_MB
    still_serving(port)


def test_refused_requests_do_not_hold_association_slots(start) -> None:  # type: ignore[no-untyped-def]
    """12 oversized A-ASSOCIATE-RQs with max_associations 10, then a real association."""
    scp = start(max_associations=10)
    port = scp.config.port
    answers = 0
    for _ in range(12):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.settimeout(5.0)
            sock.sendall(struct.pack(">BBL", 0x01, 0, 400 << 20))
            answers += sock.recv(10) == A_ABORT_INVALID_PARAMETER
    print(
        f"\n12 oversized A-ASSOCIATE-RQs (max_associations 10): {answers} A-ABORTs; "
        f"association threads right after: {len(scp.guard.active_associations)}"
    )
    assert answers == 12
    still_serving(port)


def test_oversized_p_data_pdu_on_an_association_is_aborted(start) -> None:  # type: ignore[no-untyped-def]
    scp = start()
    assoc = associate(scp.config.port)
    assert assoc.is_established
    raw = assoc.dul.socket.socket
    with RssSampler() as rss:
        raw.sendall(struct.pack(">BBL", 0x04, 0, 100 << 20) + bytes(1 << 20))
        for _ in range(500):
            if assoc.is_aborted or not assoc.is_alive():
                break
            time.sleep(0.01)
    print(
        f"\n100 MB P-DATA-TF on an association: aborted={assoc.is_aborted}; "
        f"largest refused PDU {scp.guard.counts.largest_refused_pdu} bytes; "
        f"SCP RSS growth {rss.growth_mb:.1f} MB"
    )
    assert assoc.is_aborted
    assert scp.guard.counts.pdu_refused == 1
    still_serving(scp.config.port)


# --- finding 5: idle connections ------------------------------------------------------


def test_idle_sockets_do_not_hold_association_slots(start) -> None:  # type: ignore[no-untyped-def]
    """20 idle sockets, reopened as they are closed, with max_associations 10."""
    scp = start(max_associations=10, request_timeout_s=1.0)
    port = scp.config.port
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
    accepted_during = 0
    try:
        for _ in range(2):  # a real association while the idle sockets are open
            still_serving(port)
            accepted_during += 1
        time.sleep(1.5)  # past request_timeout_s: the node closes them
        closed = 0
        for sock in idle:
            sock.settimeout(1.0)
            try:
                closed += sock.recv(1) == b""
            except OSError:
                closed += 1
        for sock in idle:
            sock.close()
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]  # reopened
        still_serving(port)
        accepted_during += 1
    finally:
        for sock in idle:
            sock.close()
    print(
        f"\n20 idle sockets (max_associations 10): {accepted_during} real associations "
        f"accepted during the attack; {closed} of 20 idle sockets closed by the node; "
        f"guard {scp.guard.counts}"
    )
    assert accepted_during == 3 and closed == 20


def test_trickled_requests_do_not_hold_association_slots(start) -> None:  # type: ignore[no-untyped-def]
    """12 connections that send one byte of an A-ASSOCIATE-RQ, then nothing (max 10)."""
    scp = start(max_associations=10, acse_timeout_s=1.0)
    port = scp.config.port
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(12)]
    try:
        for sock in socks:
            sock.sendall(b"\x01")
        time.sleep(2.0)  # past acse_timeout_s (network_timeout_s is 60)
        closed = 0
        for sock in socks:
            sock.settimeout(1.0)
            try:
                closed += sock.recv(1) == b""
            except OSError:
                closed += 1
        threads = len(scp.guard.active_associations)
        still_serving(port)
    finally:
        for sock in socks:
            sock.close()
    print(
        f"\n12 trickled A-ASSOCIATE-RQs (max_associations 10, acse_timeout_s 1): "
        f"{closed} of 12 closed by the node; association threads left {threads}"
    )
    assert closed == 12


def test_pending_connections_are_capped_per_peer(start) -> None:  # type: ignore[no-untyped-def]
    scp = start(max_pending_per_peer=4, request_timeout_s=2.0)
    port = scp.config.port
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(6)]
    try:
        refused = 0
        time.sleep(0.3)
        for sock in socks:
            sock.settimeout(0.2)
            try:
                refused += sock.recv(1) == b""
            except TimeoutError:
                pass
            except OSError:
                refused += 1
    finally:
        for sock in socks:
            sock.close()
    print(
        f"\n6 idle sockets, max_pending_per_peer 4: {refused} refused at accept; "
        f"guard {scp.guard.counts}"
    )
    assert refused == 2 and scp.guard.counts.pending_refused == 2


def test_associations_per_peer_are_capped(start) -> None:  # type: ignore[no-untyped-def]
    scp = start(max_associations=10, max_associations_per_peer=2)
    held = [associate(scp.config.port) for _ in range(2)]
    third = associate(scp.config.port)
    try:
        rejected = third.is_rejected
        rj = third.acceptor.primitive
        reason = (rj.result, rj.result_source, rj.diagnostic) if rejected else None
    finally:
        for assoc in held:
            assoc.release()
    print(
        f"\nthird association from one address with max_associations_per_peer 2: "
        f"rejected={rejected} (result, source, reason)={reason}"
    )
    assert all(a.is_released for a in held)
    assert rejected and reason == (0x02, 0x03, 0x02)
    still_serving(scp.config.port)


# --- finding 4: TLS handshake off the accept loop ---------------------------------------


def test_idle_tls_socket_does_not_block_other_tls_associations(start, pki: Path) -> None:  # noqa: F811
    tls = TlsConfig(cert_file=pki / "server.crt", key_file=pki / "server.key")
    scp = start(tls=tls, tls_handshake_timeout_s=2.0)
    port = scp.config.port
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]  # no ClientHello
    try:
        time.sleep(0.2)
        assoc = tls_associate(port, client_context(pki, with_cert=False))
        established = assoc.is_established
        echo = assoc.send_c_echo().Status if established else None
        store = assoc.send_c_store(small_image()).Status if established else None
        if established:
            assoc.release()
        time.sleep(2.5)  # past tls_handshake_timeout_s
        closed = 0
        for sock in idle:
            sock.settimeout(1.0)
            try:
                closed += sock.recv(1) == b""
            except OSError:
                closed += 1
    finally:
        for sock in idle:
            sock.close()
    print(
        f"\n3 idle TLS sockets: TLS association during the attack established={established}, "
        f"C-ECHO 0x{int(echo or 0):04X}, C-STORE 0x{int(store or 0):04X}; "
        f"{closed} of 3 idle sockets closed after the handshake timeout; "
        f"TLS failures counted {scp.guard.counts.tls_failed}"
    )
    assert established and echo == Status.SUCCESS and store == Status.SUCCESS
    assert closed == 3


def test_tls_context_is_still_built_from_config(pki: Path) -> None:  # noqa: F811
    tls = TlsConfig(cert_file=pki / "server.crt", key_file=pki / "server.key")
    assert tls.server_context().minimum_version == ssl.TLSVersion.TLSv1_2
