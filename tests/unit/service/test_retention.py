"""Retention: files after retention_days, rows after retention_audit_days, high water."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.metrics import store_counters
from service.retention import DAY_S, RetentionPolicy, sweep
from service.settings import SettingsError, load_settings
from service.store import JobState, JobStore, NewJob

NOW = 1_000_000_000.0


def receive(store: JobStore, data: Path, uid: str, *, at: float, size: int = 4096) -> int:
    """A job as the node leaves it: spool file, results in the outbox."""
    spool = data / "spool" / f"{uid}.dcm"
    spool.parent.mkdir(parents=True, exist_ok=True)
    spool.write_bytes(b"\0" * size)
    os.utime(spool, (at, at))
    job_id, _ = store.queue.add(
        NewJob(
            sop_instance_uid=uid,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.1.2",
            study_instance_uid="1.2.3",
            series_instance_uid="1.2.3.1",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            calling_ae_title="PACS",
            association_id="assoc-1",
            path=str(spool),
            content_hash=uid,
        ),
        now=at,
    )
    outbox = data / "outbox" / str(job_id)
    outbox.mkdir(parents=True)
    files = []
    for kind in ("seg", "sr", "sc"):
        (outbox / f"{kind}.dcm").write_bytes(b"\0" * size)
        files.append(str(outbox / f"{kind}.dcm"))
    store.queue.update(job_id, results={"files": files}, now=at)
    return job_id


def policy(data: Path, **kw: object) -> RetentionPolicy:
    values: dict[str, object] = {
        "files_days": 30.0,
        "audit_days": 365.0,
        "data_dir": data,
        "outbox_dir": data / "outbox",
    }
    values.update(kw)
    return RetentionPolicy(**values)  # type: ignore[arg-type]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store(data: Path) -> JobStore:
    return JobStore(data / "jobs.sqlite3")


def test_files_go_after_retention_days_and_rows_after_the_audit_horizon(
    store: JobStore, data: Path
) -> None:
    old = NOW - 40 * DAY_S
    done = receive(store, data, "1.1", at=old)
    store.queue.update(done, state=JobState.DONE, now=old)
    failed = receive(store, data, "1.2", at=old)
    store.queue.update(failed, state=JobState.FAILED, reason="bad", now=old)
    fresh = receive(store, data, "1.3", at=NOW - DAY_S)
    store.queue.update(fresh, state=JobState.DONE, now=NOW - DAY_S)
    still_open = receive(store, data, "1.4", at=old)  # RECEIVED for 40 days: never touched
    store.audit.opened("assoc-old", "PACS", "10.0.0.1", now=NOW - 400 * DAY_S)
    store.audit.closed("assoc-old", 2, "released", now=NOW - 400 * DAY_S)
    store.audit.opened("assoc-new", "PACS", "10.0.0.1", now=NOW - DAY_S)
    done_before = store.reads.event_count(JobState.DONE)
    released_before = store.audit.counts()["released"]

    counts = sweep(store, policy(data), now=NOW)
    print(f"\nsweep at day 0 (files 30 d, audit 365 d): {counts.as_dict()}")
    assert counts.jobs_purged == 2 and counts.files == 8 and counts.bytes == 8 * 4096
    assert not (data / "spool" / "1.1.dcm").exists() and not (data / "outbox" / str(done)).exists()
    assert (data / "spool" / "1.3.dcm").exists() and (data / "outbox" / str(fresh)).exists()
    assert (data / "spool" / "1.4.dcm").exists()
    assert store.reads.get(still_open).purged_at is None  # type: ignore[union-attr]
    assert store.reads.get(done).purged_at == NOW  # type: ignore[union-attr]  # the row stays
    assert counts.association_rows == 1 and store.audit.list()[1] == 1

    later = sweep(store, policy(data), now=old + 366 * DAY_S)
    print(f"sweep a year after: {later.as_dict()}")
    assert later.job_rows == 2 and store.reads.get(done) is None and store.reads.get(failed) is None
    assert later.jobs_purged == 1 and store.reads.get(fresh) is not None  # files gone, row kept
    assert store.reads.get(still_open) is not None
    # Counters never go down: the deleted rows still count.
    assert store.reads.event_count(JobState.DONE) == done_before
    assert store.audit.counts()["released"] == released_before
    metrics = {m.name: m for m in store_counters(store.reads.counters())}
    deleted = {s.labels["what"]: s.value for s in metrics["mammoseg_retention_deleted"].samples}
    print(f"mammoseg_retention_deleted: {deleted}")
    assert deleted["jobs_purged"] == 3 and deleted["job_rows"] == 2


def test_zero_means_forever(store: JobStore, data: Path) -> None:
    ancient = NOW - 3650 * DAY_S
    job = receive(store, data, "1.1", at=ancient)
    store.queue.update(job, state=JobState.DONE, now=ancient)
    counts = sweep(store, policy(data, files_days=0.0, audit_days=0.0), now=NOW)
    assert not counts and (data / "spool" / "1.1.dcm").exists() and store.reads.get(job) is not None


def test_a_spool_file_another_job_uses_is_kept(store: JobStore, data: Path) -> None:
    old = NOW - 40 * DAY_S
    first = receive(store, data, "1.1", at=old)
    store.queue.update(first, state=JobState.DONE, now=old)
    # The same UID again with new content: same spool path, a new job, still open.
    second, created = store.queue.add(
        NewJob(
            sop_instance_uid="1.1",
            sop_class_uid="1",
            study_instance_uid="1",
            series_instance_uid="1",
            transfer_syntax_uid="1",
            calling_ae_title="PACS",
            association_id="a2",
            path=str(data / "spool" / "1.1.dcm"),
            content_hash="other",
        ),
        now=old,
    )
    assert created
    sweep(store, policy(data), now=NOW)
    assert store.reads.get(first).purged_at == NOW  # type: ignore[union-attr]
    assert (data / "spool" / "1.1.dcm").exists()  # the open job still needs it


def test_a_spool_file_written_minutes_ago_waits_for_the_next_sweep(
    store: JobStore, data: Path
) -> None:
    old = NOW - 40 * DAY_S
    job = receive(store, data, "1.1", at=old)
    store.queue.update(job, state=JobState.DONE, now=old)
    os.utime(data / "spool" / "1.1.dcm", (NOW - 10, NOW - 10))  # a receive in progress
    assert sweep(store, policy(data), now=NOW).jobs_purged == 0
    assert sweep(store, policy(data), now=NOW + 600).jobs_purged == 1


def test_high_water_purges_the_longest_finished_first(store: JobStore, data: Path) -> None:
    jobs = []
    for i in range(6):
        at = NOW - (10 - i) * DAY_S  # all younger than retention_days
        job = receive(store, data, f"1.{i + 1}", at=at, size=1 << 20)
        store.queue.update(job, state=JobState.DONE, now=at)
        jobs.append(job)
    disk = {"free": 5 << 20}

    def free_bytes(_: Path) -> int:
        # The disk: 5 MB free plus whatever the sweep deleted.
        kept = sum(f.stat().st_size for f in data.rglob("*.dcm"))
        return disk["free"] + (24 << 20) - kept

    counts = sweep(store, policy(data, high_water_bytes=12 << 20), now=NOW, free_bytes=free_bytes)
    purged = [j for j in jobs if store.reads.get(j).purged_at is not None]  # type: ignore[union-attr]
    print(f"\nhigh water 12 MB, 5 MB free, 4 MB per job: {counts.as_dict()}, purged {purged}")
    assert purged == jobs[:2] and counts.high_water_jobs == 2
    assert free_bytes(data) >= 12 << 20


def test_settings_make_forever_explicit_and_keep_the_horizons_in_order() -> None:
    defaults = load_settings()
    assert (defaults.retention_days, defaults.retention_audit_days) == (30.0, 365.0)
    assert defaults.quarantine_after == 3 and defaults.retention_high_water_mb == 0
    assert load_settings(retention_days=0, retention_audit_days=0).retention_days == 0
    for bad in (
        {"retention_days": 0, "retention_audit_days": 365},
        {"retention_days": 30, "retention_audit_days": 7},
        {"retention_high_water_mb": 100, "min_free_mb": 200},
    ):
        with pytest.raises(SettingsError):
            load_settings(**bad)
