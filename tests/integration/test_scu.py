"""The SCU against in-process peers: compressed files as they are, or decompressed, same UID."""

from __future__ import annotations

import socket
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless
from pynetdicom import AE, evt
from pynetdicom.sop_class import DigitalMammographyXRayImageStorageForPresentation, Verification

from dicom_node.scu import Destination, SendError, association, echo, send_files
from dicom_node.status import Status
from service.testkit.synthetic import synthetic_mammogram, write
from tests.conftest import free_port

MG = DigitalMammographyXRayImageStorageForPresentation


def peer(syntaxes: list[str], received: list[Dataset]):  # type: ignore[no-untyped-def]
    port = free_port()
    ae = AE(ae_title="PEER")
    ae.add_supported_context(MG, syntaxes)
    ae.add_supported_context(Verification)

    def on_store(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(ds)
        return int(Status.SUCCESS)

    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    return server, Destination("PEER", "127.0.0.1", port)


@pytest.fixture
def rle_file(tmp_path: Path) -> Path:
    return write(
        synthetic_mammogram(rows=64, columns=48, seed=77, transfer_syntax=RLELossless),
        tmp_path / "rle.dcm",
    )


@pytest.mark.parametrize(
    ("syntaxes", "arrives_as"),
    [
        ([RLELossless, ExplicitVRLittleEndian], RLELossless),
        ([ExplicitVRLittleEndian, ImplicitVRLittleEndian], None),
    ],
)
def test_compressed_file_as_is_or_decompressed_with_the_same_uid(
    rle_file: Path, syntaxes: list[str], arrives_as: str | None
) -> None:
    received: list[Dataset] = []
    server, destination = peer(syntaxes, received)
    try:
        send_files(destination, [rle_file], calling_ae="MAMMOSEG")
    finally:
        server.shutdown()
    sent = pydicom.dcmread(rle_file)
    (got,) = received
    assert got.SOPInstanceUID == sent.SOPInstanceUID
    if arrives_as:
        assert got.file_meta.TransferSyntaxUID == arrives_as
    else:
        assert not got.file_meta.TransferSyntaxUID.is_compressed
    assert (got.pixel_array == sent.pixel_array).all()


def test_unreachable_destination_is_a_send_error() -> None:
    destination = Destination("NOBODY", "127.0.0.1", free_port())
    with pytest.raises(SendError, match="not established"):
        echo(destination, calling_ae="MAMMOSEG", timeout_s=3)


def test_echo_succeeds() -> None:
    server, destination = peer([ExplicitVRLittleEndian], [])
    try:
        assert echo(destination, calling_ae="MAMMOSEG") is Status.SUCCESS
    finally:
        server.shutdown()


def test_the_sender_turns_off_nagle_on_its_association() -> None:
    # pynetdicom's default socket waits for a delayed ACK before the last small write
    # of each message: about 40 ms per C-STORE (docs/performance.md, "No Nagle delay").
    server, destination = peer([ExplicitVRLittleEndian], [])
    try:
        assoc = association(
            destination, "MAMMOSEG", {(str(Verification), str(ImplicitVRLittleEndian))}, 5.0
        )
        try:
            sock = assoc.dul.socket.socket
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        finally:
            assoc.release()
    finally:
        server.shutdown()


def test_the_sender_acknowledges_every_read_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # A peer with Nagle on (Debian's DCMTK) holds the rest of its answer until our ACK,
    # which Linux delays by 40 ms (docs/performance.md, "Delayed ACKs").
    import dicom_node.transport as transport

    asked: list[int] = []
    quick_ack = transport.quick_ack
    monkeypatch.setattr(transport, "quick_ack", lambda sock: (asked.append(1), quick_ack(sock)))
    server, destination = peer([ExplicitVRLittleEndian], [])
    try:
        assoc = association(
            destination, "MAMMOSEG", {(str(Verification), str(ImplicitVRLittleEndian))}, 5.0
        )
        try:
            assert isinstance(assoc.dul.socket.recv, transport._QuickAckRecv)
            before = len(asked)  # the A-ASSOCIATE-AC was read so
            assert assoc.send_c_echo().Status == Status.SUCCESS
            assert len(asked) > before >= 1
        finally:
            assoc.release()
    finally:
        server.shutdown()
