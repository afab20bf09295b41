"""service.supervisor.WorkerProcesses with a stand-in worker (no model): crash, restart, count.

The child claims jobs as itself (NAME#PID@HOST) and aborts on the poison
pill, as a decoder crash would. The supervisor takes back what the dead child
held (a crashed attempt), restarts it, and after ``quarantine_after`` crashes
the job is FAILED "quarantined after 3 crashed attempts"; the others are done.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from service.settings import load_settings
from service.store import JobState, JobStore, NewJob
from service.store.owners import this_process
from service.supervisor import WorkerProcesses, exit_status

POISON = "1.2.3.666"


def stand_in_worker(settings: Any, ready: Any, parent_pid: int) -> None:
    """A worker process without a model: DONE for every job, os.abort() on the poison pill."""
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    store = JobStore(settings.database_path, quarantine_after=settings.quarantine_after)
    owner = str(this_process(settings.worker_id))
    ready.set()
    while not stopping:
        job = store.queue.claim([JobState.RECEIVED], JobState.PROCESSING, owner=owner)
        if job is None:
            time.sleep(0.02)
            continue
        if job.sop_instance_uid == POISON:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            os.abort()
        store.queue.update(job.id, state=JobState.DONE)
    store.queue.recover(owner=owner, crashed=False)


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
        content_hash=uid,
    )


def wait_for(predicate: Any, timeout_s: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.mark.slow
def test_a_child_that_dies_is_restarted_and_its_poison_pill_quarantined(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, worker_id="node", quarantine_after=3)
    store = JobStore(settings.database_path, quarantine_after=3)
    poison = store.queue.add(new_job(POISON))[0]  # the oldest: claimed first, every time
    others = [store.queue.add(new_job(f"1.2.3.{i}"))[0] for i in range(3)]
    processes = WorkerProcesses(
        settings, store, stand_in_worker, count=1, restart_initial_s=0.05, restart_max_s=0.2
    )
    processes.start()
    try:
        wait_for(lambda: all(store.reads.get(j).state is JobState.DONE for j in others))  # type: ignore[union-attr]
        wait_for(lambda: processes.health().ok)
        health = processes.health()
        pids = processes.pids()
    finally:
        processes.stop(timeout_s=10)
    bad = store.reads.get(poison)
    assert bad is not None
    print(
        f"\nsupervisor: deaths {processes.deaths}, restarts {processes.restarts}; "
        f"poison job: {bad.state.value} {bad.reason!r} (crashes {bad.crashes}); "
        f"health {health.detail}"
    )
    assert [how for _, how in processes.deaths] == ["signal SIGABRT"] * 3
    assert processes.restarts == 3 and health.ok and health.alive == 1
    assert bad.state is JobState.FAILED and bad.reason == "quarantined after 3 crashed attempts"
    assert bad.crashes == 3
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)  # stopped and reaped
    assert processes.health().alive == 0


def test_exit_status_in_words() -> None:
    assert exit_status(-signal.SIGABRT) == "signal SIGABRT"
    assert exit_status(-signal.SIGKILL) == "signal SIGKILL"
    assert exit_status(1) == "exit code 1"
    assert exit_status(None) == "still running"


def test_the_test_fault_needs_the_setting_and_the_variable() -> None:
    from service import faults

    try:
        assert faults.arm(False, {faults.ABORT_ON_UID_ENV: "1.2.3"}) is None
        assert faults.arm(True, {}) is None
        faults.before_decode("1.2.3")  # unarmed: nothing happens
        assert faults.arm(True, {faults.ABORT_ON_UID_ENV: "1.2.3"}) == "1.2.3"
        faults.before_decode("1.2.4")  # armed, another UID: nothing happens
    finally:
        faults.arm(False)
    code = subprocess.run(
        [
            sys.executable,
            "-c",
            "from service import faults\n"
            "faults.arm(True, {faults.ABORT_ON_UID_ENV: '1.2.3'})\n"
            "faults.before_decode('1.2.3')\n",
        ],
        capture_output=True,
        check=False,
    ).returncode
    assert code == -signal.SIGABRT


@pytest.mark.slow
def test_a_child_stopped_by_someone_else_is_restarted_without_a_crash(tmp_path: Path) -> None:
    """systemd's SIGTERM reaches the whole control group: the child exits 0, no crash counted."""
    settings = load_settings(data_dir=tmp_path, worker_id="node")
    store = JobStore(settings.database_path)
    processes = WorkerProcesses(settings, store, stand_in_worker, count=1, restart_initial_s=0.05)
    processes.start()
    try:
        wait_for(lambda: processes.health().ok)
        (first,) = processes.pids()
        os.kill(first, signal.SIGTERM)
        wait_for(lambda: processes.restarts == 1 and processes.health().ok)
        (second,) = processes.pids()
        processes.begin_stop()  # serve got the signal too: the watch ends, no more restarts
        wait_for(lambda: not processes._monitor.is_alive())
        os.kill(second, signal.SIGTERM)
    finally:
        processes.stop(timeout_s=10)
    print(f"\nstopped by someone else: deaths {processes.deaths}, restarts {processes.restarts}")
    assert processes.deaths == [(first, "exit code 0")]
    assert processes.restarts == 1 and second != first
    assert not Path(f"/proc/{second}").exists()  # stopped and reaped by stop()


def test_a_worker_process_does_not_import_the_http_side() -> None:
    # A spawned worker process imports service.node (its entry point) and never serves
    # HTTP: FastAPI, Starlette, Jinja2 and uvicorn cost it ~18 MB of RSS for nothing.
    http = ("fastapi", "starlette", "uvicorn", "jinja2")
    probe = f"import sys, service.node; print(sorted(m for m in {http} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
