"""The same job store code on a real PostgreSQL: migrations, claims with SKIP LOCKED."""

from __future__ import annotations

import threading
import uuid

import pytest

from service.db import Database, Pool
from service.store import JobState, JobStore
from tests.pg import postgres_url  # noqa: F401 - fixture
from tests.unit.service.test_store import new_job

pytestmark = pytest.mark.slow


@pytest.fixture
def store(postgres_url: str) -> JobStore:  # noqa: F811
    # One schema per test keeps them independent on the shared server.
    schema = f"t_{uuid.uuid4().hex[:8]}"
    pool = Pool(Database(postgres_url), size=1, overflow=0)
    with pool.write() as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    pool.dispose()
    return JobStore(Database(f"{postgres_url}?options=-csearch_path%3D{schema}"))


def test_roundtrip_and_recovery_on_postgres(store: JobStore) -> None:
    assert store.backend.dialect == "postgresql"
    job_id, created = store.queue.add(new_job())
    assert created and store.queue.add(new_job()) == (job_id, False)
    job = store.queue.claim([JobState.RECEIVED], JobState.PROCESSING, owner="w1")
    assert job is not None and job.owner == "w1"
    store.queue.update(job_id, timings={"infer_s": 0.25})
    assert store.queue.recover(owner="w2") == {"processing": 0, "sending": 0, "quarantined": 0}
    assert store.queue.recover(owner="w1") == {"processing": 1, "sending": 0, "quarantined": 0}
    again = store.reads.get(job_id)
    assert again is not None and again.state is JobState.RECEIVED
    assert again.timings["infer_s"] == 0.25
    assert store.is_writable()


def test_concurrent_claims_take_each_job_once_on_postgres(store: JobStore) -> None:
    for i in range(60):
        store.queue.add(new_job(f"1.{i + 1}"))
    taken: list[int] = []
    lock = threading.Lock()

    def claim_all(name: str) -> None:
        while job := store.queue.claim([JobState.RECEIVED], JobState.PROCESSING, owner=name):
            with lock:
                taken.append(job.id)

    threads = [threading.Thread(target=claim_all, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == sorted(j.id for j in store.reads.list(limit=100))
    assert len(taken) == 60 == len(set(taken))


def test_concurrent_stores_of_one_uid_make_one_job_on_postgres(store: JobStore) -> None:
    """Two (here 16) associations storing one UID at once: the unique index decides."""
    from service.store import NewJob

    outcomes: list[str] = []
    lock = threading.Lock()
    for round_ in range(5):
        barrier = threading.Barrier(16)
        uid = f"9.{round_ + 1}"

        def admit(uid: str = uid, barrier: threading.Barrier = barrier) -> None:
            base = new_job(uid)
            barrier.wait()
            outcome = store.queue.admit(NewJob(**{**base.__dict__, "content_hash": "c"})).outcome
            with lock:
                outcomes.append(outcome)

        threads = [threading.Thread(target=admit) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    jobs = store.reads.list(limit=100)
    print(f"\n5 rounds of 16 concurrent stores: {len(jobs)} jobs, {outcomes.count('open')} open")
    assert len(jobs) == 5 and outcomes.count("created") == 5


def test_heartbeat_quarantine_and_retention_rows_on_postgres(store: JobStore) -> None:
    live, _ = store.queue.add(new_job("2.1"))
    dead, _ = store.queue.add(new_job("2.2"))
    store.queue.claim([JobState.RECEIVED], JobState.PROCESSING, owner="a", now=100.0)
    store.queue.claim([JobState.RECEIVED], JobState.PROCESSING, owner="b", now=100.0)
    assert store.queue.heartbeat([live], "a", now=900.0) == 1
    taken = store.queue.recover(stale_after_s=600.0, now=1000.0)
    assert taken == {"processing": 1, "sending": 0, "quarantined": 0}
    assert store.reads.get(live).state is JobState.PROCESSING  # type: ignore[union-attr]
    store.queue.update(live, state=JobState.DONE)
    for _ in range(2):  # two more crashes of the dead one: quarantined (3 by default)
        store.queue.claim([JobState.RECEIVED], JobState.PROCESSING, owner="b", now=1000.0)
        store.queue.recover(stale_after_s=600.0, now=5000.0)
    job = store.reads.get(dead)
    assert job is not None and job.quarantined, job
    done_before = store.reads.event_count(JobState.FAILED)
    assert store.housekeeping.mark_purged(dead, now=5000.0)
    assert store.housekeeping.delete_finished(finished_before=6000.0)["job_rows"] == 1
    assert store.reads.event_count(JobState.FAILED) == done_before
    assert store.reads.counters()["retention.job_rows"] == 1


def test_storage_commitment_pending_then_done_on_postgres(store: JobStore) -> None:
    job_id, _ = store.queue.add(new_job("1.77"))
    store.queue.claim([JobState.RECEIVED], JobState.PROCESSING, owner="w1")
    store.queue.update(job_id, state=JobState.SENDING, delivered=["PACS@h:1"])
    store.commitments.requested(
        job_id, generation=0, destination="PACS@h:1", transaction_uid="1.2.9.1", instances=3
    )
    pending = store.commitments.settle(
        job_id, generation=0, destinations=["PACS@h:1"], due_at=10**12
    )
    assert pending is JobState.COMMIT_PENDING
    assert store.queue.add(new_job("1.77")) == (job_id, False)  # still the open job
    assert store.commitments.record("1.2.9.1", failed=0) is not None
    job = store.reads.get(job_id)
    assert job is not None and job.state is JobState.DONE
