"""The store's side of issue 12: quarantine, heartbeats, idempotent admits, migration 0003."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config

from service.db import MIGRATIONS
from service.store import JobConflict, JobState, JobStore, NewJob


def new_job(uid: str = "1.2.3.4", *, content: str = "c1", caller: str = "PACS") -> NewJob:
    return NewJob(
        sop_instance_uid=uid,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.2",
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        calling_ae_title=caller,
        association_id="assoc-1",
        path=f"/spool/{uid}.dcm",
        content_hash=content,
    )


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs.sqlite3", quarantine_after=3)


def test_a_job_that_crashed_the_process_three_times_is_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path)
    poison, _ = store.queue.add(new_job("1.1"))
    others = [store.queue.add(new_job(f"1.{i}"))[0] for i in range(2, 6)]
    lives = []
    for life in range(1, 5):
        # Each life: the restart takes back what the last one held, then a worker
        # claims the oldest due job first. The poison pill kills the process.
        store = JobStore(path, quarantine_after=3)
        recovered = store.queue.recover()
        job = store.queue.claim([JobState.RECEIVED], JobState.PROCESSING, owner="node")
        assert job is not None
        lives.append((life, recovered, job.id))
        if job.id != poison:
            store.queue.update(job.id, state=JobState.DONE)
            break
        store.close()  # the "crash": the claim stays PROCESSING
    while job := store.queue.claim([JobState.RECEIVED], JobState.PROCESSING, owner="node"):
        store.queue.update(job.id, state=JobState.DONE)
    final = store.reads.get(poison)
    assert final is not None
    print(f"\nlives (life, recovered, first claimed): {lives}")
    print(f"poison job {poison}: {final.state.value} {final.reason!r}, crashes {final.crashes}")
    assert final.state is JobState.FAILED and final.quarantined
    assert final.reason == "quarantined after 3 crashed attempts"
    assert [store.reads.get(i).state for i in others] == [JobState.DONE] * 4  # type: ignore[union-attr]
    assert lives[-1][1]["quarantined"] == 1 and lives[-1][2] != poison
    assert store.reads.counters()["quarantined"] == 1
    # Never claimed again, and a resend of the same content makes no job either.
    assert store.queue.admit(new_job("1.1")).outcome == "duplicate"
    # reprocess is the deliberate way back: crash count and results start again.
    again = store.admin.reprocess(poison)
    assert again.state is JobState.RECEIVED and again.crashes == 0 and again.generation == 1


def test_an_orderly_stop_hands_back_without_counting_a_crash(store: JobStore) -> None:
    job_id, _ = store.queue.add(new_job())
    for _ in range(5):
        store.queue.claim([JobState.RECEIVED], JobState.PROCESSING, owner="node")
        assert store.queue.recover(owner="node", crashed=False)["processing"] == 1
    job = store.reads.get(job_id)
    assert job is not None and job.state is JobState.RECEIVED and job.crashes == 0


def test_a_crash_while_sending_is_not_a_crashed_attempt(store: JobStore) -> None:
    job_id, _ = store.queue.add(new_job())
    for _ in range(5):
        store.queue.update(job_id, state=JobState.SENDING)
        assert store.queue.recover()["sending"] == 1
    job = store.reads.get(job_id)
    assert job is not None and job.state is JobState.RETRYING and job.crashes == 0


def test_heartbeat_keeps_a_live_claim_from_the_stale_sweep(store: JobStore) -> None:
    live, _ = store.queue.add(new_job("1.1"))
    dead, _ = store.queue.add(new_job("1.2"))
    store.queue.claim([JobState.RECEIVED], JobState.PROCESSING, owner="a", now=100.0)
    store.queue.claim([JobState.RECEIVED], JobState.PROCESSING, owner="b", now=100.0)
    # "a" is alive and says so; "b" stopped. updated_at of both stays 100.
    assert store.queue.heartbeat([live], "a", now=900.0) == 1
    assert store.queue.heartbeat([live], "b", now=900.0) == 0  # not b's: untouched
    taken = store.queue.recover(stale_after_s=600.0, now=1000.0)
    print(f"\nstale sweep at t=1000 (limit 600 s): {taken}")
    assert taken["processing"] == 1
    assert store.reads.get(live).state is JobState.PROCESSING  # type: ignore[union-attr]
    assert store.reads.get(dead).state is JobState.RECEIVED  # type: ignore[union-attr]
    # Once taken back, a late heartbeat of the old holder does not revive the claim.
    assert store.queue.heartbeat([dead], "b", now=1001.0) == 0


def test_identical_content_after_done_is_a_duplicate_and_recorded(store: JobStore) -> None:
    first = store.queue.admit(new_job(content="aaa"), now=10.0)
    assert first.outcome == "created"
    assert store.queue.admit(new_job(content="aaa"), now=11.0).outcome == "open"  # sender's retry
    store.queue.update(first.job_id, state=JobState.DONE, now=12.0)
    dup = store.queue.admit(new_job(content="aaa", caller="OTHERPACS"), now=13.0)
    assert (dup.job_id, dup.outcome, dup.files_purged) == (first.job_id, "duplicate", False)
    events = store.reads.events(first.job_id)
    print(f"\nevents: {[(e.at, e.state.value, e.detail) for e in events]}")
    assert events[-1].detail.startswith("duplicate ignored: the same content again from OTHERPACS")
    assert events[-1].id < 0  # a note, not a state change
    assert store.reads.event_count(JobState.DONE) == 1  # metrics do not count it as a DONE
    assert store.reads.counters()["duplicates.ignored"] == 1
    assert len(store.reads.list()) == 1
    # New content under the same UID is its own job; a FAILED (not quarantined) one too.
    changed = store.queue.admit(new_job(content="bbb"), now=14.0)
    assert changed.outcome == "created" and changed.job_id != first.job_id
    store.queue.update(changed.job_id, state=JobState.FAILED, reason="gave up sending", now=15.0)
    assert store.queue.admit(new_job(content="bbb"), now=16.0).outcome == "created"
    # No digest known: never a duplicate.
    assert store.queue.admit(new_job("1.9", content="")).outcome == "created"


def test_result_key_changes_with_content_and_reprocess(store: JobStore) -> None:
    job_id, _ = store.queue.add(new_job(content="aaa"))
    key = store.reads.get(job_id).result_key  # type: ignore[union-attr]
    store.queue.update(job_id, state=JobState.DONE)
    assert store.admin.reprocess(job_id).result_key != key
    assert store.reads.get(job_id).result_key == "aaa/1"  # type: ignore[union-attr]


def test_content_change_before_processing_takes_the_new_hash(store: JobStore) -> None:
    job_id, _ = store.queue.add(new_job(content="old"))
    assert store.queue.admit(new_job(content="new")).outcome == "open"
    assert store.reads.get(job_id).content_hash == "new"  # type: ignore[union-attr]


def test_concurrent_admits_of_one_uid_make_one_job(store: JobStore) -> None:
    results: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def admit() -> None:
        barrier.wait()
        outcome = store.queue.admit(new_job("7.7")).outcome
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=admit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"\n8 concurrent admits on SQLite: {sorted(results)}")
    assert sorted(results) == ["created"] + ["open"] * 7
    assert len(store.reads.list()) == 1


def test_the_unique_index_refuses_a_second_open_job(store: JobStore) -> None:
    store.queue.add(new_job("5.5"))
    conn = sqlite3.connect(store.path)
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO jobs (sop_instance_uid, sop_class_uid, study_instance_uid, "
            "series_instance_uid, transfer_syntax_uid, calling_ae_title, association_id, path, "
            "state, created_at, updated_at) VALUES ('5.5','1','1','1','1','A','a','/x',"
            "'RECEIVED',1,1)"
        )
    conn.close()


def test_reprocess_is_refused_once_retention_deleted_the_files(store: JobStore) -> None:
    job_id, _ = store.queue.add(new_job())
    store.queue.update(job_id, state=JobState.DONE)
    assert store.housekeeping.mark_purged(job_id)
    with pytest.raises(JobConflict, match="deleted by retention"):
        store.admin.reprocess(job_id)
    assert store.queue.admit(new_job()).files_purged  # a duplicate of a purged job


def test_migration_0003_skips_extra_open_jobs_of_one_uid(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", f"sqlite:///{path}")
    command.upgrade(config, "0002")
    conn = sqlite3.connect(path)
    for state in ("RECEIVED", "PROCESSING", "DONE"):  # what check-then-insert let through
        conn.execute(
            "INSERT INTO jobs (sop_instance_uid, sop_class_uid, study_instance_uid, "
            "series_instance_uid, transfer_syntax_uid, calling_ae_title, association_id, path, "
            "state, created_at, updated_at) VALUES ('1.1','1','1','1','1','A','a','/x',?,1,1)",
            (state,),
        )
    conn.commit()
    conn.close()
    store = JobStore(path)
    states = [(j.id, j.state.value, j.reason) for j in reversed(store.reads.list())]
    print(f"\nafter migration 0003: {states}")
    assert [s for _, s, _ in states] == ["RECEIVED", "SKIPPED", "DONE"]
    assert store.queue.admit(new_job("1.1")).outcome == "open"
