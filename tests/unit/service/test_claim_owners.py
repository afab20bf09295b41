"""Claims name their process (NAME#PID@HOST): recovery never takes another live process's claims.

Issue 12, finding 12: ``mammoseg worker`` on SQLite took back the live claims of
``serve`` on the same host, because both were named after the host and start-up
took back every claim. Now start-up takes back only what stopped processes
left (a pid of this host that is gone, this name's earlier life, a stale
heartbeat), and the heartbeat, not the last update, says whether a claim lives.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.store import JobState, JobStore, NewJob, owners
from service.store.owners import Owner, left_by, parse, stopped_here, this_process


def new_job(uid: str) -> NewJob:
    return NewJob(
        sop_instance_uid=uid,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.2",
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        calling_ae_title="PACS",
        association_id="assoc-1",
        path=f"/spool/{uid}.dcm",
        content_hash=f"hash-{uid}",
    )


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(tmp_path / "jobs.sqlite3", quarantine_after=3)


@pytest.fixture
def live_pid() -> Iterator[int]:
    """A process of this host that runs while the test does."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process of this host that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def claimed(store: JobStore, uid: str, owner: str, *, now: float | None = None) -> int:
    store.queue.add(new_job(uid))
    job = store.queue.claim([JobState.RECEIVED], JobState.PROCESSING, owner=owner, now=now)
    assert job is not None and job.sop_instance_uid == uid
    return job.id


def test_an_owner_names_name_pid_and_host() -> None:
    me = this_process("node")
    text = str(me)
    assert text.startswith("node#") and f"#{me.pid}@" in text
    assert parse(text) == me
    assert parse("a#b#12@h:1") == Owner(name="a#b", pid=12, host="h:1")
    assert parse("node") is None  # the bare name older versions wrote
    assert parse("") is None


def test_stopped_here_only_for_a_gone_pid_of_this_host(live_pid: int, dead_pid: int) -> None:
    assert not stopped_here(str(this_process("node")))
    assert not stopped_here(str(this_process("node", live_pid)))
    assert stopped_here(str(this_process("node", dead_pid)))
    elsewhere = Owner(name="node", pid=dead_pid, host="another-host:1:2")
    assert not stopped_here(str(elsewhere))  # cannot tell: left to the heartbeat
    assert not stopped_here("node")


def test_left_by_at_start_up(live_pid: int, dead_pid: int) -> None:
    me = this_process("node")
    left = left_by(me)
    assert left(str(me))  # this very owner before it claimed anything: a reused pid
    assert left("node")  # the bare name of an older version, under this name
    assert not left("w1")  # another name in the old format: the heartbeat decides
    assert left(str(this_process("w1", dead_pid)))  # any name, pid gone from this host
    assert not left(str(this_process("node", live_pid)))  # this name, but alive: not ours
    assert left(str(Owner(name="node", pid=live_pid, host="old-boot:1:2")))  # earlier life
    assert not left(str(Owner(name="w1", pid=live_pid, host="other-host:1:2")))


def test_start_up_recovery_leaves_live_claims_of_another_process_alone(
    store: JobStore, live_pid: int, dead_pid: int, tmp_path: Path
) -> None:
    """What a ``mammoseg worker`` (or a restarted serve) does at start-up on SQLite."""
    from service.node import open_store
    from service.settings import load_settings

    now = time.time()
    serve_child = str(this_process("node", live_pid))  # serve's worker process, running
    live = claimed(store, "1.1", serve_child)
    crashed = claimed(store, "1.2", str(this_process("w1", dead_pid)))  # a worker that died
    # Alive by its pid, but its heartbeat stopped long ago (hung, or a reused pid): stale.
    silent = claimed(store, "1.3", str(this_process("w2", live_pid)), now=now - 3600)
    remote = claimed(store, "1.4", "w3#7@other-host:1:2")  # another host, heartbeat fresh
    store.close()

    settings = load_settings(data_dir=tmp_path, worker_id="node", stale_claim_s=600)
    reopened = open_store(settings)
    try:
        jobs = {job_id: reopened.reads.get(job_id) for job_id in (live, crashed, silent, remote)}
        figures = {
            name: (jobs[job_id].state.value, jobs[job_id].owner, jobs[job_id].crashes)  # type: ignore[union-attr]
            for name, job_id in (
                ("live", live),
                ("crashed", crashed),
                ("silent", silent),
                ("remote", remote),
            )
        }
        print(f"\nafter start-up recovery: {figures}")
        assert figures["live"] == ("PROCESSING", serve_child, 0)
        assert figures["crashed"] == ("RECEIVED", "", 1)
        assert figures["silent"] == ("RECEIVED", "", 1)
        assert figures["remote"] == ("PROCESSING", "w3#7@other-host:1:2", 0)
    finally:
        reopened.close()


def test_a_fresh_heartbeat_keeps_a_claim_whose_last_update_is_old(store: JobStore) -> None:
    """Staleness is the heartbeat's: a job busy for long, but beating, is not taken back."""
    now = time.time()
    owner = "w1#7@other-host:1:2"
    job_id = claimed(store, "1.1", owner, now=now - 3600)  # claimed (and updated) an hour ago
    store.queue.heartbeat([job_id], owner, now=now - 5)
    assert store.queue.recover(stale_after_s=600, stopped=stopped_here, now=now)["processing"] == 0
    store.queue.heartbeat([job_id], owner, now=now - 700)  # the last beat: too long ago
    assert store.queue.recover(stale_after_s=600, stopped=stopped_here, now=now)["processing"] == 1


def test_a_supervisor_takes_back_exactly_what_its_dead_child_held(
    store: JobStore, live_pid: int, dead_pid: int
) -> None:
    sibling = str(this_process("node", live_pid))
    dead_child = str(this_process("node", dead_pid))
    kept = claimed(store, "1.1", sibling)
    lost = claimed(store, "1.2", dead_child)
    assert [job.id for job in store.queue.held_by(dead_child)] == [lost]
    assert store.queue.recover(owner=dead_child) == {
        "processing": 1,
        "sending": 0,
        "quarantined": 0,
    }
    assert store.reads.get(kept).state is JobState.PROCESSING  # type: ignore[union-attr]
    assert store.reads.get(lost).crashes == 1  # type: ignore[union-attr]
    assert store.queue.held_by(dead_child) == []


def test_the_host_includes_boot_and_pid_namespace() -> None:
    host = owners.this_host()
    if Path("/proc/self/ns/pid").exists():
        name, boot, namespace = host.split(":")
        assert name and len(boot) == 8 and namespace.isdigit()
