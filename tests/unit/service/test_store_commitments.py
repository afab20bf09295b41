"""The store's side of Storage Commitment: a restart keeps the transaction, recovery leaves it."""

from __future__ import annotations

import json
from pathlib import Path

from service.store import JobState, JobStore, NewJob
from tests.store_jobs import stored_job


def pending_job(store: JobStore, uid: str = "1.2.826.0.1.3680043.8.498.7") -> int:
    job_id = stored_job(store)
    store.queue.claim([JobState.RECEIVED], JobState.PROCESSING, owner="w1")
    store.queue.update(
        job_id,
        state=JobState.SENDING,
        delivered=["PACS@h:1", "OTHER@h:2"],
        results={"files": ["/outbox/1/seg.dcm"]},
    )
    store.commitments.requested(
        job_id, generation=0, destination="PACS@h:1", transaction_uid=uid, instances=3
    )
    state = store.commitments.settle(job_id, generation=0, destinations=["PACS@h:1"], due_at=10**12)
    assert state is JobState.COMMIT_PENDING
    return job_id


def test_a_late_report_after_a_restart_still_finds_its_job(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    job_id = pending_job(store)
    store.close()
    again = JobStore(tmp_path / "jobs.sqlite3")
    taken = again.queue.recover()  # start-up: COMMIT_PENDING holds no claim, nothing to take
    assert taken == {"processing": 0, "sending": 0, "quarantined": 0}
    job = again.reads.get(job_id)
    assert job is not None and job.state is JobState.COMMIT_PENDING
    found = again.commitments.record("1.2.826.0.1.3680043.8.498.7", failed=0)
    assert found is not None and found.job_id == job_id
    job = again.reads.get(job_id)
    assert job is not None and job.state is JobState.DONE
    assert again.commitments.record("1.2.826.0.1.3680043.8.498.8", failed=0) is None


def test_a_failure_report_makes_the_pending_job_due_now(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    job_id = pending_job(store)
    assert store.queue.claim([JobState.COMMIT_PENDING], JobState.SENDING) is None  # not yet due
    store.commitments.record("1.2.826.0.1.3680043.8.498.7", failed=2, reason="2 of 3 ...")
    job = store.queue.claim([JobState.COMMIT_PENDING], JobState.SENDING, owner="w1")
    assert job is not None and job.id == job_id
    (row,) = store.commitments.for_job(job_id, 0)
    assert (row.outcome, row.failed, row.reason) == ("failed", 2, "2 of 3 ...")


def test_a_pending_job_is_open_so_the_same_instance_makes_no_second_job(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    job_id = pending_job(store)
    admission = store.queue.admit(
        NewJob(
            sop_instance_uid="1.2.3",
            sop_class_uid="1",
            study_instance_uid="1",
            series_instance_uid="1",
            transfer_syntax_uid="1",
            calling_ae_title="PACS",
            association_id="b",
            path="/spool/1.2.3.dcm",
        )
    )
    assert (admission.job_id, admission.outcome) == (job_id, "open")
    assert store.reads.counts()["COMMIT_PENDING"] == 1


def test_an_admin_retry_after_a_failed_commitment_stores_and_asks_again(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    job_id = pending_job(store)
    store.commitments.record("1.2.826.0.1.3680043.8.498.7", failed=1, reason="1 of 3 ...")
    store.queue.update(job_id, state=JobState.FAILED, reason="storage commitment refused")
    job = store.admin.retry(job_id)
    assert job.state is JobState.RETRYING
    assert job.delivered == ["OTHER@h:2"]  # PACS gets the instances again, OTHER does not
    assert store.commitments.for_job(job_id, 0) == []  # and fresh requests, all attempts


def test_done_after_commitment_writes_the_job_done_notice(tmp_path: Path) -> None:
    # A job made DONE by a commitment report (not by the queue) tells the receivers too.
    store = JobStore(tmp_path / "jobs.sqlite3", webhook_urls=["http://127.0.0.1:9/hook"])
    job_id = pending_job(store)
    assert store.notices.claim_due(lease_s=10) == []  # COMMIT_PENDING raises nothing
    store.commitments.record("1.2.826.0.1.3680043.8.498.7", failed=0)
    (notice,) = store.notices.claim_due(lease_s=10)
    body = json.loads(notice.body)
    assert (notice.event, body["job_id"], body["state"]) == ("job.done", job_id, "DONE")


def test_done_at_settle_writes_the_job_done_notice(tmp_path: Path) -> None:
    # The report came during the send: settle() itself makes the job DONE.
    store = JobStore(tmp_path / "jobs.sqlite3", webhook_urls=["http://127.0.0.1:9/hook"])
    job_id = stored_job(store, "1.2.4")
    store.queue.update(job_id, state=JobState.SENDING, delivered=["PACS@h:1"])
    uid = "1.2.826.0.1.3680043.8.498.9"
    store.commitments.requested(
        job_id, generation=0, destination="PACS@h:1", transaction_uid=uid, instances=3
    )
    store.commitments.record(uid, failed=0)
    state = store.commitments.settle(job_id, generation=0, destinations=["PACS@h:1"], due_at=0)
    assert state is JobState.DONE
    (notice,) = store.notices.claim_due(lease_s=10)
    assert (notice.event, notice.job_id) == ("job.done", job_id)
