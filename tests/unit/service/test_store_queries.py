"""Store queries for the API: filters, events, stats inputs, audit, admin transitions."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from service.store import (
    JobConflict,
    JobFilter,
    JobNotFound,
    JobState,
    JobStore,
    NewJob,
)


def new_job(uid: str, *, caller: str = "PACS") -> NewJob:
    return NewJob(
        sop_instance_uid=uid,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.2",
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        calling_ae_title=caller,
        association_id="assoc-1",
        path=f"/spool/{uid}.dcm",
    )


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs.sqlite3")


def failed_with_results(store: JobStore, uid: str = "1.9") -> int:
    job_id, _ = store.queue.add(new_job(uid))
    store.queue.update(
        job_id,
        state=JobState.FAILED,
        reason="gave up sending after 3 attempts: DEST unreachable",
        results={"files": ["/outbox/1/seg.dcm"], "uids": {"seg": "1.2.9"}},
        attempts=3,
        first_send_failure_at=50.0,
    )
    return job_id


def test_filters_combine_and_count_the_total(store: JobStore) -> None:
    a, _ = store.queue.add(new_job("1.1"), now=100.0)
    b, _ = store.queue.add(new_job("1.2", caller="OTHER"), now=200.0)
    c, _ = store.queue.add(new_job("1.3"), now=300.0)
    store.queue.update(a, state=JobState.DONE, delivered=["DEST@127.0.0.1:104"])
    store.queue.update(b, state=JobState.FAILED, reason="bad pixels")
    store.queue.update(c, state=JobState.DONE, delivered=["DEST_2@127.0.0.1:105"])

    jobs, total = store.reads.find(JobFilter(states=[JobState.DONE]))
    assert [j.id for j in jobs] == [c, a] and total == 2
    jobs, total = store.reads.find(JobFilter(since=150.0, until=300.0))
    assert [j.id for j in jobs] == [b] and total == 1
    jobs, _ = store.reads.find(JobFilter(destination="DEST@127.0.0.1:104"))
    assert [j.id for j in jobs] == [a]
    # LIKE wildcards in a name are literal: "_" does not match "E".
    jobs, _ = store.reads.find(JobFilter(destination="D_ST@127.0.0.1:104"))
    assert jobs == []
    jobs, _ = store.reads.find(JobFilter(calling_ae_title="OTHER"))
    assert [j.id for j in jobs] == [b]
    jobs, total = store.reads.find(JobFilter(), limit=1, offset=1)
    assert [j.id for j in jobs] == [b] and total == 3
    assert store.reads.delivered_count("DEST@127.0.0.1:104") == 1


def test_every_state_change_is_an_event(store: JobStore) -> None:
    job_id, _ = store.queue.add(new_job("1.1"), now=10.0)
    store.queue.claim([JobState.RECEIVED], JobState.PROCESSING, now=11.0)
    store.queue.update(job_id, state=JobState.SENDING, now=12.0)
    store.queue.update(job_id, state=JobState.RETRYING, reason="down", now=13.0)
    store.queue.update(job_id, delivered=["X@h:1"], now=13.5)  # no state: no event
    store.queue.claim([JobState.RETRYING], JobState.SENDING, now=14.0)
    store.queue.update(job_id, state=JobState.DONE, now=15.0)
    events = store.reads.events(job_id)
    assert [(e.state, e.at) for e in events] == [
        (JobState.RECEIVED, 10.0),
        (JobState.PROCESSING, 11.0),
        (JobState.SENDING, 12.0),
        (JobState.RETRYING, 13.0),
        (JobState.SENDING, 14.0),
        (JobState.DONE, 15.0),
    ]
    assert events[3].detail == "down"
    assert store.reads.event_count(JobState.RETRYING, job_id=job_id) == 1
    job = store.reads.get(job_id)
    assert job is not None and job.timings["processing_at"] == 11.0
    assert job.timings["sending_at"] == 14.0
    assert store.reads.event_times(JobState.DONE, since=14.0) == [15.0]
    assert store.reads.event_times(JobState.DONE, since=15.5) == []


def test_finished_timings_and_metrics_cursor(store: JobStore) -> None:
    start = store.reads.last_event_id()
    a, _ = store.queue.add(new_job("1.1"), now=1.0)
    store.queue.update(a, state=JobState.DONE, timings={"decode_s": 0.5}, now=2.0)
    b, _ = store.queue.add(new_job("1.2"), now=3.0)
    store.queue.update(b, state=JobState.DONE, timings={"decode_s": 0.7}, now=4.0)
    assert [t["decode_s"] for t in store.reads.finished_timings(since=3.5)] == [0.7]
    first = store.reads.finished_after(start, limit=1)
    assert [t["decode_s"] for _, t in first] == [0.5]
    rest = store.reads.finished_after(first[0][0])
    assert [t["decode_s"] for _, t in rest] == [0.7]
    assert store.reads.finished_after(rest[-1][0]) == []


def test_queue_depth_counts_received_and_due_retries(store: JobStore) -> None:
    store.queue.add(new_job("1.1"))
    due, _ = store.queue.add(new_job("1.2"))
    later, _ = store.queue.add(new_job("1.3"))
    store.queue.update(due, state=JobState.RETRYING, next_attempt_at=100.0)
    store.queue.update(later, state=JobState.RETRYING, next_attempt_at=500.0)
    assert store.queue.queue_depth(now=200.0) == 2


def test_retry_failed_job_makes_it_due_now(store: JobStore) -> None:
    job_id = failed_with_results(store)
    job = store.admin.retry(job_id, now=1000.0)
    assert job.state is JobState.RETRYING
    assert job.next_attempt_at == 1000.0 and job.first_send_failure_at is None
    assert job.attempts == 3
    assert store.queue.claim([JobState.RETRYING], JobState.SENDING, now=1000.0) is not None
    assert store.reads.events(job_id)[-2].detail == "retry requested"


def test_retry_refuses_jobs_without_results_or_in_other_states(store: JobStore) -> None:
    bad_input, _ = store.queue.add(new_job("1.1"))
    store.queue.update(bad_input, state=JobState.FAILED, reason="cannot decode")
    with pytest.raises(JobConflict, match="no results"):
        store.admin.retry(bad_input)
    done, _ = store.queue.add(new_job("1.2"))
    store.queue.update(done, state=JobState.DONE)
    with pytest.raises(JobConflict, match="DONE"):
        store.admin.retry(done)
    with pytest.raises(JobNotFound):
        store.admin.retry(9999)
    assert store.reads.get(bad_input).state is JobState.FAILED  # type: ignore[union-attr]


def test_reprocess_resets_the_job_and_runs_the_hook_inside(store: JobStore) -> None:
    job_id = failed_with_results(store)
    seen: list[JobState] = []

    def hook(job: object) -> None:
        # Inside the transaction: another connection sees the old state.
        other = sqlite3.connect(store.path)
        seen.append(JobState(other.execute("SELECT state FROM jobs").fetchone()[0]))
        other.close()

    job = store.admin.reprocess(job_id, before_commit=hook, now=500.0)
    assert seen == [JobState.FAILED]
    assert job.state is JobState.RECEIVED
    assert (job.results, job.delivered, job.attempts, job.reason) == ({}, [], 0, "")
    assert job.timings == {"received_at": 500.0}
    assert job.first_send_failure_at is None


def test_reprocess_hook_failure_changes_nothing(store: JobStore) -> None:
    job_id = failed_with_results(store)

    def refuse(job: object) -> None:
        raise JobConflict("spool file gone")

    with pytest.raises(JobConflict, match="spool file gone"):
        store.admin.reprocess(job_id, before_commit=refuse)
    assert store.reads.get(job_id).state is JobState.FAILED  # type: ignore[union-attr]


def test_reprocess_refuses_open_jobs_and_duplicates(store: JobStore) -> None:
    open_id, _ = store.queue.add(new_job("1.1"))
    with pytest.raises(JobConflict, match="RECEIVED"):
        store.admin.reprocess(open_id)
    store.queue.update(open_id, state=JobState.DONE)
    again, created = store.queue.add(new_job("1.1"))  # the PACS sent it again
    assert created
    with pytest.raises(JobConflict, match=f"job {again}"):
        store.admin.reprocess(open_id)


def test_retry_races_with_workers_without_double_claims(store: JobStore) -> None:
    """Admin retries while workers claim: each job is taken exactly once, never twice."""
    ids = [failed_with_results(store, f"1.{i + 1}") for i in range(30)]
    claimed: list[int] = []
    conflicts: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def worker() -> None:
        while not stop.is_set():
            job = store.queue.claim([JobState.RETRYING], JobState.SENDING)
            if job is not None:
                with lock:
                    claimed.append(job.id)

    def admin() -> None:
        for job_id in ids:
            store.admin.retry(job_id)
        for job_id in ids:  # a second press: RETRYING again or already SENDING
            try:
                store.admin.retry(job_id)
            except JobConflict:
                conflicts.append(job_id)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    admin()
    deadline = time.monotonic() + 10
    while len(claimed) < len(ids) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)  # a double claim would show up now
    stop.set()
    for t in threads:
        t.join()
    # A second press either found the job still RETRYING (no extra send) or SENDING (409).
    assert sorted(claimed) == sorted(ids)
    assert all(store.reads.get(i).state is JobState.SENDING for i in ids)  # type: ignore[union-attr]


def test_association_audit(store: JobStore) -> None:
    store.audit.opened("assoc-a", "PACS", "127.0.0.1", now=10.0)
    store.audit.rejected("assoc-b", "EVIL", "10.0.0.9", now=11.0)
    store.audit.closed("assoc-a", 3, "released", now=12.0)
    store.audit.closed("assoc-unknown", 1, "aborted")  # nothing open: ignored
    rows, total = store.audit.list()
    assert total == 2
    assert [(r.calling_ae_title, r.outcome, r.instances) for r in rows] == [
        ("EVIL", "rejected", 0),
        ("PACS", "released", 3),
    ]
    assert rows[1].started_at == 10.0 and rows[1].ended_at == 12.0
    only, total = store.audit.list(outcome="released", since=5.0, until=11.0)
    assert [r.association_id for r in only] == ["assoc-a"] and total == 1
    assert store.audit.counts() == {"open": 0, "released": 1, "aborted": 0, "rejected": 1}
    with pytest.raises(ValueError, match="outcome"):
        store.audit.closed("assoc-a", 1, "exploded")


def test_a_store_from_before_migrations_is_adopted(tmp_path: Path) -> None:
    """A version-1 SQLite store (jobs table only, schema_version) keeps its jobs."""
    path = tmp_path / "jobs.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, sop_instance_uid TEXT NOT NULL,"
        " sop_class_uid TEXT NOT NULL, study_instance_uid TEXT NOT NULL,"
        " series_instance_uid TEXT NOT NULL, transfer_syntax_uid TEXT NOT NULL,"
        " calling_ae_title TEXT NOT NULL, association_id TEXT NOT NULL, path TEXT NOT NULL,"
        " state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT '', attempts INTEGER NOT NULL"
        " DEFAULT 0, next_attempt_at REAL, first_send_failure_at REAL, created_at REAL NOT NULL,"
        " updated_at REAL NOT NULL, timings TEXT NOT NULL DEFAULT '{}', results TEXT NOT NULL"
        " DEFAULT '{}', delivered TEXT NOT NULL DEFAULT '[]');"
        "INSERT INTO jobs (sop_instance_uid, sop_class_uid, study_instance_uid,"
        " series_instance_uid, transfer_syntax_uid, calling_ae_title, association_id, path,"
        " state, created_at, updated_at) VALUES ('1.2.3', '1.2', '1.3', '1.4', '1.2.840.10008.1.2',"
        " 'PACS', 'a', '/x', 'DONE', 1.0, 1.0);"
        "CREATE TABLE schema_version (version INTEGER NOT NULL);"
        "INSERT INTO schema_version VALUES (1);"
    )
    conn.close()
    store = JobStore(path)
    check = sqlite3.connect(path)
    assert check.execute("SELECT version_num FROM alembic_version").fetchone()[0] == "0008"
    tables = {r[0] for r in check.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "schema_version" not in tables
    assert {"job_events", "associations", "webhook_notices"} <= tables
    assert store.reads.get(1).sop_instance_uid == "1.2.3"  # type: ignore[union-attr]
    store.audit.opened("assoc-a", "PACS", "127.0.0.1")
    assert store.audit.list()[1] == 1
    assert store.is_writable()


def test_image_jobs_of_several_studies_at_once(store: JobStore) -> None:
    def add(uid: str, study: str, view: str) -> int:
        job = new_job(uid)
        job_id, _ = store.queue.add(
            NewJob(
                **{**vars(job), "study_instance_uid": study, "laterality": "L", "image_view": view}
            )
        )
        return job_id

    a_cc, a_mlo, b_cc = add("1.1", "9.1", "CC"), add("1.2", "9.1", "MLO"), add("2.1", "9.2", "CC")
    by_study = store.exams.images_of(["9.1", "9.2", "9.3"])
    assert {s: [j.id for j in jobs] for s, jobs in by_study.items()} == {
        "9.1": [a_cc, a_mlo],
        "9.2": [b_cc],
    }
    assert by_study["9.1"] == store.exams.images("9.1")
    assert store.exams.images_of([]) == {} and store.exams.images("9.3") == []
