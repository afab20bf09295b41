"""Storage Commitment (PS3.4 J) against an in-process pynetdicom PACS.

The fake PACS stores, takes the N-ACTION and reports as told: on the N-ACTION's
own association, on a new association to the node's real SCP, with a failure
(Event Type 2), or never. The node's side is the real sender step
(``worker.deliver``), the real SCP with the service's commitment sink, and a
real SQLite store.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest
from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    DigitalMammographyXRayImageStorageForPresentation,
    StorageCommitmentPushModel,
)

from dicom_node.commitment import ALL_COMMITTED, COMMITMENT_INSTANCE_UID, SOME_FAILED
from dicom_node.scp import ScpConfig, StorageSCP
from dicom_node.scu import Destination
from dicom_node.status import Status
from service.node import commitment_sink
from service.store import JobState, JobStore
from service.testkit.synthetic import synthetic_mammogram, write
from service.worker import CommitPolicy, RetryPolicy, WorkerContext, deliver
from tests import store_jobs
from tests.conftest import free_port

MG = DigitalMammographyXRayImageStorageForPresentation


def report_dataset(transaction_uid: str, refs: list[tuple[str, str]], failed: int) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    ok, bad = refs[failed:], refs[:failed]

    def items(pairs: list[tuple[str, str]], reason: int | None) -> DicomSequence:
        out = []
        for sop_class, uid in pairs:
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = uid
            if reason is not None:
                item.FailureReason = reason
            out.append(item)
        return DicomSequence(out)

    ds.ReferencedSOPSequence = items(ok, None)
    if bad:
        ds.FailedSOPSequence = items(bad, int(Status.PROCESSING_FAILURE))
    return ds


def report_on_new_association(node_port: int, ds: Dataset, event_type: int) -> int:
    """What Orthanc does: a new association to the node, PACS as the SOP class's SCP."""
    ae = AE(ae_title="PACS")
    ae.add_requested_context(StorageCommitmentPushModel)
    role = build_role(StorageCommitmentPushModel, scp_role=True, scu_role=False)
    assoc = ae.associate("127.0.0.1", node_port, ae_title="MAMMOSEG", ext_neg=[role])
    assert assoc.is_established
    try:
        status, _ = assoc.send_n_event_report(
            ds, event_type, StorageCommitmentPushModel, COMMITMENT_INSTANCE_UID
        )
        return int(status.Status)
    finally:
        assoc.release()


class FakePacs:
    """Stores everything; answers N-ACTION with success, then reports as ``mode`` says.

    ``same``: all committed, on the N-ACTION's association; ``new``: all committed,
    on a new association to ``node_port``; ``fail``: Event Type 2 (the first
    instance failed) on a new association; ``silent``: no report ever.
    """

    def __init__(self, mode: str, node_port: int) -> None:
        self.mode = mode
        self.node_port = node_port
        self.stored: list[str] = []
        self.actions: list[str] = []
        self.report_statuses: list[int] = []
        self.port = free_port()
        ae = AE(ae_title="PACS")
        ae.add_supported_context(MG)
        ae.add_supported_context(StorageCommitmentPushModel)
        self.server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self.on_store), (evt.EVT_N_ACTION, self.on_action)],
        )

    @property
    def destination(self) -> Destination:
        return Destination("PACS", "127.0.0.1", self.port, commit=True)

    def on_store(self, event: evt.Event) -> int:
        self.stored.append(str(event.request.AffectedSOPInstanceUID))
        return int(Status.SUCCESS)

    def on_action(self, event: evt.Event) -> tuple[int, None]:
        info = event.action_information
        uid = str(info.TransactionUID)
        refs = [
            (str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID))
            for i in info.ReferencedSOPSequence
        ]
        self.actions.append(uid)
        threading.Thread(target=self.report, args=(event.assoc, uid, refs), daemon=True).start()
        return int(Status.SUCCESS), None

    def report(self, assoc: Any, uid: str, refs: list[tuple[str, str]]) -> None:
        time.sleep(0.1)  # after the N-ACTION response (PS3.4 J.3.3)
        if self.mode in ("same", "flood"):
            if self.mode == "flood":  # far more than was asked for
                refs = refs + [(MG, f"1.2.3.{n}") for n in range(500)]
            status, _ = assoc.send_n_event_report(
                report_dataset(uid, refs, 0),
                ALL_COMMITTED,
                StorageCommitmentPushModel,
                COMMITMENT_INSTANCE_UID,
            )
            self.report_statuses.append(int(getattr(status, "Status", -1)))
        elif self.mode in ("new", "fail"):
            failed = 1 if self.mode == "fail" else 0
            event_type = SOME_FAILED if failed else ALL_COMMITTED
            ds = report_dataset(uid, refs, failed)
            self.report_statuses.append(report_on_new_association(self.node_port, ds, event_type))

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs.sqlite3")


@pytest.fixture
def node_scp(tmp_path: Path, store: JobStore):  # type: ignore[no-untyped-def]
    port = free_port()
    config = ScpConfig(
        ae_title="MAMMOSEG",
        host="127.0.0.1",
        port=port,
        spool_dir=tmp_path / "spool",
        max_dataset_bytes=1 << 20,
    )
    scp = StorageSCP(config, lambda instance: None, commitments=commitment_sink(store))
    scp.start()
    yield port
    scp.stop()


@pytest.fixture
def results(tmp_path: Path) -> list[Path]:
    return [
        write(synthetic_mammogram(rows=32, columns=24, seed=seed), tmp_path / f"r{seed}.dcm")
        for seed in (1, 2)
    ]


def context(store: JobStore, pacs: FakePacs, **commit: Any) -> WorkerContext:
    return WorkerContext(
        store=store,
        segmenter=cast(Any, None),
        options=cast(Any, None),
        destinations=[pacs.destination],
        calling_ae="MAMMOSEG",
        send_timeout_s=5.0,
        retry=RetryPolicy(initial_s=0.1, max_s=0.1, give_up_s=60.0),
        poll_interval_s=0.05,
        worker_id="w1",
        commit=CommitPolicy(**{"timeout_s": 30.0, "attempts": 3, "wait_s": 0.0, **commit}),
    )


def sending_job(store: JobStore, files: list[Path]) -> int:
    return store_jobs.sending_job(
        store,
        files,
        sop_class_uid=MG,
        study_instance_uid="1.2",
        series_instance_uid="1.2.4",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )


def state_becomes(store: JobStore, job_id: int, state: JobState, timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = store.reads.get(job_id)
        if job is not None and job.state is state:
            return job
        time.sleep(0.05)
    job = store.reads.get(job_id)
    raise AssertionError(f"job is {job.state if job else None}, not {state}: {job}")


def claim_when_due(store: JobStore, timeout_s: float = 10.0) -> Any:
    """What the Sender does: take the COMMIT_PENDING job once it is due."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = store.queue.claim([JobState.COMMIT_PENDING], JobState.SENDING, owner="w1")
        if job is not None:
            return job
        time.sleep(0.05)
    raise AssertionError("the COMMIT_PENDING job never became due")


@pytest.mark.parametrize("mode", ["same", "new"])
def test_a_committed_report_on_either_association_makes_the_job_done(
    mode: str, store: JobStore, node_scp: int, results: list[Path]
) -> None:
    pacs = FakePacs(mode, node_scp)
    try:
        job_id = sending_job(store, results)
        ctx = context(store, pacs, wait_s=5.0 if mode == "same" else 0.0)
        deliver(ctx, store.reads.get(job_id))  # type: ignore[arg-type]
        job = state_becomes(store, job_id, JobState.DONE)
    finally:
        pacs.stop()
    events = store.reads.events(job_id)
    print(f"\n{mode}: " + " -> ".join(f"{e.state.value} ({e.detail})" for e in events))
    assert len(pacs.stored) == 2 and len(pacs.actions) == 1
    assert pacs.report_statuses == [int(Status.SUCCESS)]
    assert "storage commitment confirmed by PACS@127.0.0.1" in events[-1].detail
    (row,) = store.commitments.for_job(job_id, 0)
    assert row.outcome == "committed" and row.transaction_uid == pacs.actions[0]
    assert job.reason == ""


def test_a_report_too_large_on_the_same_association_is_aborted_and_left_pending(
    store: JobStore, node_scp: int, results: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dicom_node import commitment

    monkeypatch.setattr(commitment, "MAX_REPORT_BYTES", 4096)
    pacs = FakePacs("flood", node_scp)
    try:
        job_id = sending_job(store, results)
        deliver(context(store, pacs, wait_s=5.0), store.reads.get(job_id))  # type: ignore[arg-type]
        job = state_becomes(store, job_id, JobState.COMMIT_PENDING)
    finally:
        pacs.stop()
    (row,) = store.commitments.for_job(job_id, 0)
    assert row.outcome == "pending" and job.reason == ""


def test_a_failure_report_resends_then_fails_with_the_count_and_reason(
    store: JobStore, node_scp: int, results: list[Path]
) -> None:
    pacs = FakePacs("fail", node_scp)
    try:
        job_id = sending_job(store, results)
        ctx = context(store, pacs, attempts=2)
        deliver(ctx, store.reads.get(job_id))  # type: ignore[arg-type]
        state_becomes(store, job_id, JobState.COMMIT_PENDING)
        deliver(ctx, claim_when_due(store))  # the failure made it due: resend, request again
        assert len(pacs.stored) == 4 and len(pacs.actions) == 2
        deliver(ctx, claim_when_due(store))
        job = state_becomes(store, job_id, JobState.FAILED)
    finally:
        pacs.stop()
    print(f"\n{job.reason}")
    assert job.reason.startswith("storage commitment refused by PACS@127.0.0.1:")
    assert "1 of 2 instances not committed (0x0110 processing failure)" in job.reason
    assert "after 2 requests" in job.reason
    assert [r.outcome for r in store.commitments.for_job(job_id, 0)] == ["failed", "failed"]


def test_no_report_times_out_asks_again_then_fails(
    store: JobStore, node_scp: int, results: list[Path]
) -> None:
    pacs = FakePacs("silent", node_scp)
    try:
        job_id = sending_job(store, results)
        ctx = context(store, pacs, attempts=2, timeout_s=0.3)
        deliver(ctx, store.reads.get(job_id))  # type: ignore[arg-type]
        state_becomes(store, job_id, JobState.COMMIT_PENDING)
        deliver(ctx, claim_when_due(store))  # timed out: the N-ACTION again, not the instances
        assert len(pacs.stored) == 2 and len(pacs.actions) == 2
        state_becomes(store, job_id, JobState.COMMIT_PENDING)
        deliver(ctx, claim_when_due(store))
        job = state_becomes(store, job_id, JobState.FAILED)
    finally:
        pacs.stop()
    print(f"\n{job.reason}")
    assert "storage commitment of 2 instances not confirmed by PACS@127.0.0.1" in job.reason
    assert "within 0.3 s (after 2 requests)" in job.reason


def test_a_report_for_an_unknown_transaction_is_answered_and_changes_nothing(
    store: JobStore, node_scp: int, results: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    job_id = sending_job(store, results)
    ds = report_dataset("1.2.826.0.1.3680043.8.498.999", [(MG, "1.2.3.4")], 0)
    status = report_on_new_association(node_scp, ds, ALL_COMMITTED)
    assert status == int(Status.SUCCESS)
    assert "unknown transaction 1.2.826.0.1.3680043.8.498.999" in caplog.text
    job = store.reads.get(job_id)
    assert job is not None and job.state is JobState.SENDING


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_an_unreadable_report_gets_processing_failure(node_scp: int) -> None:
    ds = Dataset()
    ds.TransactionUID = "not a uid"
    assert report_on_new_association(node_scp, ds, ALL_COMMITTED) == int(Status.PROCESSING_FAILURE)
