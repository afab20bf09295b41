"""A real pynetdicom SCU against the node's storage SCP on a free port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    Verification,
)

from dicom_node.scp import ReceivedInstance, ScpConfig, StorageSCP
from dicom_node.status import Status
from tests.conftest import free_port

MG = DigitalMammographyXRayImageStorageForPresentation


def small_image(uid: str | None = None) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = MG
    ds.SOPInstanceUID = uid or generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "MG"
    ds.Rows, ds.Columns = 8, 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.arange(64, dtype=np.uint16).tobytes()
    return ds


class Sink:
    def __init__(self, fail: bool = False) -> None:
        self.received: list[ReceivedInstance] = []
        self.fail = fail

    def __call__(self, instance: ReceivedInstance) -> None:
        if self.fail:
            raise OSError("database is locked")
        self.received.append(instance)


@pytest.fixture
def scp_factory(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    started: list[StorageSCP] = []

    def make(sink: Sink, **kw: object) -> StorageSCP:
        config = ScpConfig(
            ae_title="MAMMOSEG",
            host="127.0.0.1",
            port=free_port(),
            spool_dir=tmp_path / "spool",
            **kw,
        )  # type: ignore[arg-type]
        scp = StorageSCP(config, sink)
        scp.start()
        started.append(scp)
        return scp

    yield make
    for scp in started:
        scp.stop()


def associate(
    scp: StorageSCP,
    calling: str = "PACS",
    called: str = "MAMMOSEG",
    contexts: tuple[str, ...] = (MG, Verification),
):  # type: ignore[no-untyped-def]
    ae = AE(ae_title=calling)
    for context in contexts:
        ae.add_requested_context(context)
    return ae.associate("127.0.0.1", scp.config.port, ae_title=called)


def test_echo_and_store_is_on_disk_and_committed_before_success(scp_factory) -> None:  # type: ignore[no-untyped-def]
    sink = Sink()
    scp = scp_factory(sink)
    assoc = associate(scp)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == Status.SUCCESS
    ds = small_image()
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == Status.SUCCESS
    (instance,) = sink.received
    assert instance.path.name == f"{ds.SOPInstanceUID}.dcm"
    stored = dcmread(instance.path)
    assert stored.SOPInstanceUID == ds.SOPInstanceUID
    assert stored.PixelData == ds.PixelData
    assert instance.calling_ae_title == "PACS"
    assert instance.transfer_syntax_uid in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")


def test_sink_failure_answers_out_of_resources(scp_factory) -> None:  # type: ignore[no-untyped-def]
    scp = scp_factory(Sink(fail=True))
    assoc = associate(scp)
    status = assoc.send_c_store(small_image())
    assoc.release()
    assert status.Status == Status.OUT_OF_RESOURCES


def test_disk_watermark_answers_out_of_resources(scp_factory) -> None:  # type: ignore[no-untyped-def]
    sink = Sink()
    scp = scp_factory(sink, min_free_bytes=1 << 62)
    assoc = associate(scp)
    status = assoc.send_c_store(small_image())
    assoc.release()
    assert status.Status == Status.OUT_OF_RESOURCES and sink.received == []
    assert not any((scp.config.spool_dir).glob("*.dcm"))


@pytest.mark.parametrize("uid", ["1.2.3/../../4", "1.2..3", "1.2.3.04x"])
def test_uid_with_path_characters_is_refused(scp_factory, uid: str) -> None:  # type: ignore[no-untyped-def]
    sink = Sink()
    scp = scp_factory(sink)
    assoc = associate(scp)
    status = assoc.send_c_store(small_image(uid))
    assoc.release()
    assert status.Status == Status.CANNOT_UNDERSTAND
    assert sink.received == [] and list(scp.config.spool_dir.iterdir()) == []


def test_caller_not_allowed_is_rejected(scp_factory) -> None:  # type: ignore[no-untyped-def]
    scp = scp_factory(Sink(), allowed_callers=["ORTHANC"])
    assoc = associate(scp, calling="INTRUDER")
    assert assoc.is_rejected
    allowed = associate(scp, calling="ORTHANC")
    assert allowed.is_established
    allowed.release()


def test_wrong_called_ae_title_is_rejected(scp_factory) -> None:  # type: ignore[no-untyped-def]
    scp = scp_factory(Sink())
    assoc = associate(scp, called="SOMEONE")
    assert assoc.is_rejected


def test_unsupported_sop_class_gets_no_context(scp_factory) -> None:  # type: ignore[no-untyped-def]
    scp = scp_factory(Sink())
    assoc = associate(scp, contexts=(CTImageStorage, Verification))
    assert assoc.is_established
    accepted = [cx.abstract_syntax for cx in assoc.accepted_contexts]
    assoc.release()
    assert CTImageStorage not in accepted and Verification in accepted


def test_stop_releases_the_port(scp_factory) -> None:  # type: ignore[no-untyped-def]
    scp = scp_factory(Sink())
    assert scp.listening
    scp.stop()
    assert not scp.listening
    assoc = associate(scp)
    assert not assoc.is_established


def test_dataset_over_the_size_limit_aborts_and_stores_nothing(scp_factory) -> None:  # type: ignore[no-untyped-def]
    sink = Sink()
    scp = scp_factory(sink, max_dataset_bytes=20_000)
    assoc = associate(scp)
    small = small_image()
    assert assoc.send_c_store(small).Status == Status.SUCCESS
    big = small_image()
    big.Rows, big.Columns = 256, 256
    big.PixelData = np.zeros(256 * 256, dtype=np.uint16).tobytes()
    status = assoc.send_c_store(big)
    assert not status  # no answer: the association was aborted while the data arrived
    deadline = time.monotonic() + 5
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not assoc.is_established
    assert [i.sop_instance_uid for i in sink.received] == [small.SOPInstanceUID]
    # The part that did arrive was on disk (dicom_node/receive.py), and is gone with it.
    spool = scp.config.spool_dir
    while any(spool.glob("*.part")) and time.monotonic() < deadline + 5:
        time.sleep(0.05)
    assert sorted(p.name for p in spool.iterdir()) == [f"{small.SOPInstanceUID}.dcm"]
    again = associate(scp)  # the node still answers
    assert again.send_c_echo().Status == Status.SUCCESS
    again.release()


def _no_delay(sock: socket.socket) -> bool:
    return bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))


def test_accepted_association_sockets_send_without_nagle_delay(scp_factory) -> None:  # type: ignore[no-untyped-def]
    # With Nagle's algorithm each DIMSE answer can wait for the peer's delayed ACK
    # (docs/performance.md, "No Nagle delay"); the accepted socket must have it off.
    scp = scp_factory(Sink())
    assoc = associate(scp)
    assert assoc.is_established
    try:
        assert not _no_delay(assoc.dul.socket.socket)  # pynetdicom's own side: the default
        guard = scp.guard
        assert guard is not None
        (served,) = guard.active_associations
        assert _no_delay(served.dul.socket.socket)
    finally:
        assoc.release()


def test_an_incoming_data_set_is_streamed_to_the_spool_and_renamed_not_held(
    scp_factory, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    import dicom_node.scp as scp_module

    kept: list[tuple[Path, bool]] = []
    keep = scp_module.keep_received

    def spy(received: Path, path: Path) -> Path:
        kept.append((received, received.is_file()))
        return keep(received, path)

    monkeypatch.setattr(scp_module, "keep_received", spy)
    sink = Sink()
    scp = scp_factory(sink, writer_name="node-1")
    assoc = associate(scp)
    ds = small_image()
    assert assoc.send_c_store(ds).Status == Status.SUCCESS
    refused = small_image("1.2..3")  # refused after it arrived: never a spool file
    assert assoc.send_c_store(refused).Status == Status.CANNOT_UNDERSTAND
    assoc.release()
    ((received, was_file),) = kept
    spool = scp.config.spool_dir
    assert was_file and received.parent == spool
    assert received.name.startswith(".incoming-node-1-") and received.suffix == ".part"
    (instance,) = sink.received
    assert sorted(p.name for p in spool.iterdir()) == [instance.path.name]
    assert dcmread(instance.path).PixelData == ds.PixelData


def test_other_aes_in_the_process_still_receive_in_memory(scp_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # The streaming switch is for the node's SCP only: a peer of the same process
    # (a test's PACS, say) gets its data sets as pynetdicom gives them by default.
    scp_factory(Sink())  # the node's SCP is running, and registered
    seen: list[object] = []
    peer = AE(ae_title="PEER")
    peer.add_supported_context(MG)

    def on_store(event: evt.Event) -> int:
        seen.append(event.request._dataset_path)
        seen.append(len(event.encoded_dataset(include_meta=False)))
        return 0

    port = free_port()
    server = peer.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        ae = AE(ae_title="PACS")
        ae.add_requested_context(MG)
        assoc = ae.associate("127.0.0.1", port, ae_title="PEER")
        assert assoc.send_c_store(small_image()).Status == Status.SUCCESS
        assoc.release()
    finally:
        server.shutdown()
    assert seen[0] is None and isinstance(seen[1], int) and seen[1] > 0
    assert not list(tmp_path.glob("**/*.part"))


def test_a_data_set_cut_off_by_the_size_limit_leaves_no_partial_file(scp_factory) -> None:  # type: ignore[no-untyped-def]
    # Bigger than two 1 MiB PDUs: its first fragments are on disk when the limit aborts.
    sink = Sink()
    scp = scp_factory(sink, max_dataset_bytes=2_500_000, writer_name="node-1")
    spool = scp.config.spool_dir
    seen_parts: list[str] = []

    def watch() -> None:
        end = time.monotonic() + 10
        while time.monotonic() < end and not seen_parts:
            seen_parts.extend(p.name for p in spool.glob("*.part"))
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    assoc = associate(scp)
    big = small_image()
    big.Rows, big.Columns = 1500, 1500
    big.PixelData = np.ones(1500 * 1500, dtype=np.uint16).tobytes()
    assert not assoc.send_c_store(big)  # aborted while it arrived
    watcher.join()
    assert seen_parts and seen_parts[0].startswith(".incoming-node-1-")  # it was streaming
    deadline = time.monotonic() + 10
    while any(spool.glob("*.part")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(spool.iterdir()) == [] and sink.received == []
