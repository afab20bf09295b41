"""The worker's side of exactly-once: deliver never leaves SENDING, the heartbeat thread."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest

from dicom_node.scu import Destination
from service import worker
from service.store import JobState, JobStore
from service.worker import Heartbeat, RetryPolicy, WorkerContext, deliver
from tests.store_jobs import sending_job


def context(store: JobStore, heartbeat: Heartbeat | None = None) -> WorkerContext:
    return WorkerContext(
        store=store,
        segmenter=cast(Any, None),
        options=cast(Any, None),
        destinations=[Destination("DEST", "127.0.0.1", 9)],
        calling_ae="MAMMOSEG",
        send_timeout_s=1.0,
        retry=RetryPolicy(initial_s=1.0, max_s=1.0, give_up_s=60.0),
        poll_interval_s=0.05,
        worker_id="w1",
        heartbeat=heartbeat,
    )


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs.sqlite3")


def test_an_unreadable_outbox_file_fails_the_job_instead_of_leaving_it_sending(
    store: JobStore, tmp_path: Path
) -> None:
    garbage = tmp_path / "seg.dcm"
    garbage.write_bytes(b"not a DICOM file at all" * 10)
    job_id = sending_job(store, [garbage])
    deliver(context(store), store.reads.get(job_id))  # type: ignore[arg-type]
    job = store.reads.get(job_id)
    assert job is not None
    print(f"\n{job.state.value}: {job.reason}")
    assert job.state is JobState.FAILED and "unreadable" in job.reason


def test_an_unexpected_error_while_sending_fails_the_job(
    store: JobStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = sending_job(store, [])

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("a bug in the send path")

    monkeypatch.setattr(worker, "send_files", broken)
    deliver(context(store), store.reads.get(job_id))  # type: ignore[arg-type]
    job = store.reads.get(job_id)
    assert job is not None and job.state is JobState.FAILED
    assert job.reason == "internal error while sending: ValueError: a bug in the send path"


def test_the_heartbeat_thread_refreshes_the_claims_it_holds(store: JobStore) -> None:
    job_id = sending_job(store, [])
    before = store.reads.get(job_id).heartbeat_at  # type: ignore[union-attr]
    stop = threading.Event()
    beat = Heartbeat(store, "w1", 0.02, stop)
    beat.hold(job_id)
    beat.start()
    deadline = time.monotonic() + 30
    while beat.beats < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    beat.release(job_id)
    stop.set()
    beat.join()
    after = store.reads.get(job_id).heartbeat_at  # type: ignore[union-attr]
    print(f"\n{beat.beats} beats; heartbeat_at moved by {after - before:.3f} s")  # type: ignore[operator]
    assert after is not None and before is not None and after > before
    assert beat.held() == []
