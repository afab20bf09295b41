"""The node in one process: real SCP, worker, tiny ONNX model, a pynetdicom destination."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydicom import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import DigitalMammographyXRayImageStorageForPresentation, Verification

from dicom_node.status import Status
from service.app import NodeState, create_app
from service.node import Node, start_node
from service.settings import load_settings
from service.store import JobState
from service.testkit.synthetic import Mass, mass_mask, synthetic_mammogram
from tests.conftest import free_port
from tests.tiny_model import write_tiny_model


class Destination:
    """An in-process storage SCP that keeps what it receives."""

    def __init__(self, fail_first: int = 0) -> None:
        self.port = free_port()
        self.received: list[Dataset] = []
        self.fail_first = fail_first
        self.lock = threading.Lock()
        ae = AE(ae_title="DEST")
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self.on_store)]
        )

    def on_store(self, event: evt.Event) -> int:
        with self.lock:
            if self.fail_first > 0:
                self.fail_first -= 1
                return int(Status.OUT_OF_RESOURCES)
            ds = event.dataset
            ds.file_meta = event.file_meta
            self.received.append(ds)
        return int(Status.SUCCESS)

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def destination() -> Iterator[Destination]:
    dest = Destination()
    yield dest
    dest.close()


def make_node(tmp_path: Path, dest_port: int, **overrides: object) -> Node:
    settings = load_settings(
        data_dir=tmp_path / "data",
        dicom_port=free_port(),
        http_port=0,
        model_path=write_tiny_model(tmp_path / "tiny.onnx", level=0.6),
        destinations=[f"DEST@127.0.0.1:{dest_port}"],
        min_free_mb=0,
        poll_interval_s=0.05,
        retry_initial_s=0.2,
        retry_max_s=0.5,
        worker_processes=0,  # the workers in this process: the tests look at and patch them
        **overrides,
    )
    return start_node(settings)


def send(node: Node, ds: Dataset) -> int:
    ae = AE(ae_title="PACS")
    ae.add_requested_context(DigitalMammographyXRayImageStorageForPresentation)
    assoc = ae.associate("127.0.0.1", node.settings.dicom_port, ae_title="MAMMOSEG")
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    return int(status.Status)


def seg_matrix(seg: Dataset, source_uid: str) -> np.ndarray:
    """The "Mass" segment of a received SEG, on the source image's matrix."""
    import highdicom as hd

    pixels = hd.seg.Segmentation.from_dataset(seg).get_pixels_by_source_instance(
        source_sop_instance_uids=[source_uid], segment_numbers=[1], combine_segments=True
    )
    return np.asarray(pixels[0]).astype(bool)


def wait_for(predicate, timeout_s: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_image_goes_through_and_results_reference_the_source(
    tmp_path: Path, destination: Destination
) -> None:
    node = make_node(tmp_path, destination.port)
    try:
        mass = Mass(row=256, col=170, radius=40)
        source = synthetic_mammogram(masses=[mass], seed=3)
        assert send(node, source) == Status.SUCCESS
        job = wait_for(
            lambda: next(
                (j for j in node.store.reads.list() if j.state in (JobState.DONE, JobState.FAILED)),
                None,
            )
        )
        assert job.state is JobState.DONE, job.reason
        assert set(job.results["uids"]) == {"seg", "sc", "sr"}
        wait_for(lambda: len(destination.received) == 3)
    finally:
        node.stop()
    by_modality = {ds.Modality: ds for ds in destination.received}
    seg = by_modality["SEG"]
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
    sc = by_modality["OT"]
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    # The tiny model finds the bright mass: the SEG overlaps the truth.
    seg_mask = seg_matrix(seg, source.SOPInstanceUID)
    truth = mass_mask(source.Rows, source.Columns, [mass])
    overlap = (seg_mask & truth).sum() / truth.sum()
    assert overlap > 0.5


def test_destination_down_then_up_is_retried(tmp_path: Path) -> None:
    dest = Destination(fail_first=2)
    node = make_node(tmp_path, dest.port)
    try:
        assert send(node, synthetic_mammogram(seed=4)) == Status.SUCCESS
        job = wait_for(
            lambda: next((j for j in node.store.reads.list() if j.state is JobState.DONE), None),
            timeout_s=60,
        )
        assert job.attempts == 2
        assert len(dest.received) == len(job.results["files"]) >= 1
        assert {ds.SOPInstanceUID for ds in dest.received} == set(job.results["uids"].values())
    finally:
        node.stop()
        dest.close()


def test_skipped_and_failed_get_reasons(tmp_path: Path, destination: Destination) -> None:
    node = make_node(tmp_path, destination.port)
    try:
        processing = synthetic_mammogram(seed=5, sop_class="1.2.840.10008.5.1.4.1.1.1.2.1")
        ae = AE(ae_title="PACS")
        ae.add_requested_context(processing.SOPClassUID)
        ae.add_requested_context(DigitalMammographyXRayImageStorageForPresentation)
        assoc = ae.associate("127.0.0.1", node.settings.dicom_port, ae_title="MAMMOSEG")
        assert assoc.send_c_store(processing).Status == Status.SUCCESS
        broken = synthetic_mammogram(seed=6)
        broken.PixelData = broken.PixelData[:100]
        assert assoc.send_c_store(broken).Status == Status.SUCCESS
        assoc.release()
        jobs = wait_for(
            lambda: (
                [
                    j
                    for j in node.store.reads.list()
                    if j.state in (JobState.SKIPPED, JobState.FAILED)
                ]
                if len(node.store.reads.list(state=JobState.SKIPPED))
                + len(node.store.reads.list(state=JobState.FAILED))
                == 2
                else None
            )
        )
        states = {j.state: j.reason for j in jobs}
        assert "FOR PROCESSING" in states[JobState.SKIPPED]
        assert states[JobState.FAILED]
        # The node is still alive and answers.
        assert send(node, synthetic_mammogram(seed=7)) == Status.SUCCESS
    finally:
        node.stop()
    assert destination.received == [] or all(
        ds.Modality in ("SEG", "OT", "SR") for ds in destination.received
    )


def test_http_reports_jobs_and_readiness(tmp_path: Path, destination: Destination) -> None:
    node = make_node(tmp_path, destination.port)
    state = NodeState(
        store=node.store,
        segmenter=node.segmenter,
        scp=node.scp,
        data_dir=node.settings.data_dir,
        min_free_mb=0,
        version="test",
        settings=node.settings,
    )
    # A local client: the default read_access ("loopback") lets it read without a token.
    client = TestClient(create_app(state), client=("127.0.0.1", 50000), base_url="http://127.0.0.1")
    try:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").status_code == 200
        source = synthetic_mammogram(seed=8, masses=[Mass(row=256, col=170, radius=40)])
        send(node, source)
        job = wait_for(
            lambda: next((j for j in node.store.reads.list() if j.state is JobState.DONE), None)
        )
        body = client.get(f"/api/v1/jobs/{job.id}").json()
        assert body["state"] == "DONE" and body["sop_instance_uid"] == source.SOPInstanceUID
        assert set(body["result_uids"]) == {"seg", "sc", "sr"}
        assert {"decode_s", "infer_s", "send_s"} <= set(body["timings"])
        text = client.get("/api/v1/jobs").text + client.get("/").text
        for phi in (str(source.PatientName), source.PatientID, source.PatientBirthDate):
            assert phi not in text
        missing = client.get("/api/v1/jobs/999999")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
    finally:
        node.stop()
    # After the SCP stops, readiness must say no.
    not_ready = client.get("/readyz")
    assert not_ready.status_code == 503
    assert {c["name"]: c["ok"] for c in not_ready.json()["checks"]}["dicom"] is False


def test_broken_model_stops_start_up(tmp_path: Path) -> None:
    from service.contract import ContractError

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    settings = load_settings(data_dir=tmp_path / "d", model_path=bad, dicom_port=free_port())
    with pytest.raises(ContractError, match="cannot be loaded"):
        start_node(settings)


def test_mask_is_at_the_source_matrix(tmp_path: Path, destination: Destination) -> None:
    node = make_node(tmp_path, destination.port)
    try:
        source = synthetic_mammogram(
            rows=301, columns=203, seed=9, masses=[Mass(row=150, col=80, radius=25)]
        )
        send(node, source)
        wait_for(lambda: len(destination.received) == 3)
    finally:
        node.stop()
    seg = next(ds for ds in destination.received if ds.Modality == "SEG")
    matrix = seg_matrix(seg, source.SOPInstanceUID)
    assert matrix.shape == (301, 203)
    assert np.any(matrix)
