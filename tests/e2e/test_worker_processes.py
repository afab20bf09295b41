"""A real poison pill against ``mammoseg serve`` as a process (issue 12, "Quarantine").

The decode step aborts its process (``os.abort()``, SIGABRT, as a decoder's
segfault would) on one SOP Instance UID: the test-only fault of
service/faults.py, armed by ``test_fault_injection`` and
``MAMMOSEG_TEST_ABORT_ON_UID``. The workers run in a child process of serve
(``worker_processes`` 1, the default), so each crash takes down that child
only: serve restarts it, counts the crashed attempt in the store, and after
``quarantine_after`` (3) the job is FAILED "quarantined after 3 crashed
attempts". Throughout, the SCP answers C-ECHO and accepts C-STORE, and serve's
pid never changes. The others reach DONE at a DCMTK storescp destination.

A second test runs ``mammoseg worker`` on the same SQLite store beside a
process that holds live claims (finding 12): the worker leaves them alone.
The figures are printed; none asserts a time.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import DigitalMammographyXRayImageStorageForPresentation, Verification

from dicom_node.status import Status
from service.store import JobState, JobStore, NewJob
from service.store.owners import this_process
from service.testkit.launch import NodeProcess, start_node
from service.testkit.processes import stop_process
from service.testkit.synthetic import synthetic_mammogram
from tests.e2e.peers import storescp, wait_until
from tests.e2e.reliability import all_jobs, rss_mb
from tests.tiny_model import write_tiny_model

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

QUARANTINED = "quarantined after 3 crashed attempts"


def worker_pids(parent: int) -> list[int]:
    """serve's worker processes: its children started by multiprocessing's spawn."""
    found = []
    for children in Path(f"/proc/{parent}/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline:
                found.append(int(pid))
    return sorted(found)


def metric(body: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", body, re.M)
    assert match, name
    return float(match.group(1))


def text(node: NodeProcess, path: str) -> str:
    with urllib.request.urlopen(node.url + path, timeout=30) as resp:  # noqa: S310
        return str(resp.read().decode())


def finished(node: NodeProcess, uids: set[str]) -> list[dict[str, Any]]:
    """Every job, once those of ``uids`` all are DONE or FAILED (else empty)."""
    jobs = all_jobs(node)
    done = {j["sop_instance_uid"] for j in jobs if j["state"] in ("DONE", "FAILED")}
    return jobs if uids <= done else []


class Prober(threading.Thread):
    """While the crashes go on: C-ECHO every 0.25 s, a C-STORE of a new image every 2 s."""

    def __init__(self, node: NodeProcess) -> None:
        super().__init__(daemon=True)
        self.node = node
        self.stop = threading.Event()
        self.echoes: Counter[str] = Counter()
        self.stores: Counter[str] = Counter()
        self.stored_uids: list[str] = []
        self.parent_pids: set[int] = set()
        self.worker_pids: set[int] = set()
        self.readiness: Counter[int] = Counter()

    def run(self) -> None:
        ae = AE(ae_title="PACS")
        ae.add_requested_context(Verification)
        ae.add_requested_context(DigitalMammographyXRayImageStorageForPresentation)
        turn = 0
        while not self.stop.wait(0.25):
            turn += 1
            self.parent_pids.add(self.node.pid if self.node.proc.poll() is None else -1)
            self.worker_pids.update(worker_pids(self.node.pid))
            assoc = ae.associate("127.0.0.1", self.node.dicom_port, ae_title=self.node.aet)
            if not assoc.is_established:
                self.echoes["no association"] += 1
                continue
            try:
                status = assoc.send_c_echo()
                self.echoes["0x0000" if status and status.Status == 0 else "failed"] += 1
                if turn % 8 == 0:
                    ds = synthetic_mammogram(rows=256, columns=208, seed=600 + turn)
                    status = assoc.send_c_store(ds)
                    ok = status and status.Status == Status.SUCCESS
                    self.stores["0x0000" if ok else "failed"] += 1
                    if ok:
                        self.stored_uids.append(str(ds.SOPInstanceUID))
            finally:
                assoc.release()
            if turn % 4 == 0:
                code, _ = self.node.get_status("/readyz")
                self.readiness[code] += 1


def test_a_poison_pill_kills_only_a_worker_process_and_ends_quarantined(tmp_path: Path) -> None:
    poison = synthetic_mammogram(rows=256, columns=208, seed=501)
    healthy = [synthetic_mammogram(rows=256, columns=208, seed=502 + i) for i in range(3)]
    with storescp(tmp_path / "dest") as (dest_port, received):
        node = start_node(
            tmp_path / "node",
            env={
                "MAMMOSEG_MODEL_PATH": str(write_tiny_model(tmp_path / "tiny.onnx")),
                "MAMMOSEG_TEST_FAULT_INJECTION": "true",
                "MAMMOSEG_TEST_ABORT_ON_UID": str(poison.SOPInstanceUID),
                "MAMMOSEG_WORKER_PROCESSES": "1",
            },
            args=["--destination", f"STORESCP@127.0.0.1:{dest_port}"],
        )
        prober = Prober(node)
        try:
            parent = node.pid
            first_workers = worker_pids(parent)
            parent_rss = rss_mb(parent, children=False)
            worker_rss = sum(rss_mb(p) for p in first_workers)
            prober.start()
            ae = AE(ae_title="PACS")
            ae.add_requested_context(DigitalMammographyXRayImageStorageForPresentation)
            assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title=node.aet)
            assert assoc.is_established
            try:  # the poison pill first, so that it is claimed first
                sent = [int(assoc.send_c_store(ds).Status) for ds in (poison, *healthy)]
            finally:
                assoc.release()

            first_four = {str(ds.SOPInstanceUID) for ds in (poison, *healthy)}
            wait_until(lambda: finished(node, first_four), 300, "the poison pill and the 3 others")
            prober.stop.set()
            prober.join()
            jobs = wait_until(
                lambda: finished(node, first_four | set(prober.stored_uids)),
                300,
                "the probes' jobs too",
            )
            metrics = text(node, "/metrics")
            ready_code, ready = node.get_status("/readyz")
            parent_alive = node.proc.poll() is None
            last_workers = worker_pids(parent)
        finally:
            prober.stop.set()
            code = stop_process(node.proc)
    log = node.log_text()
    deaths = re.findall(r"worker process 0 \(pid (\d+)\) died \(([^)]*)\)", log)
    states = Counter(str(j["state"]) for j in jobs)
    bad = next(j for j in jobs if j["sop_instance_uid"] == poison.SOPInstanceUID)
    others = [j for j in jobs if j["id"] != bad["id"]]
    workers_check = next(c for c in ready["checks"] if c["name"] == "workers")
    restarts = metric(metrics, "mammoseg_worker_process_restarts_total")
    alive = metric(metrics, "mammoseg_workers_alive")
    left_running = [
        p for p in prober.worker_pids | set(last_workers) if Path(f"/proc/{p}").exists()
    ]
    print(
        f"\npoison pill: C-STORE statuses {sent}; serve pid {parent} before, "
        f"{sorted(prober.parent_pids)} during, alive after: {parent_alive}; "
        f"worker processes seen {sorted(prober.worker_pids | set(first_workers))} "
        f"(first {first_workers}, last {last_workers}); deaths {deaths}"
        f"\nduring the crashes: C-ECHO {dict(prober.echoes)}, C-STORE {dict(prober.stores)}, "
        f"/readyz {dict(prober.readiness)}; after: /readyz {ready_code} "
        f"({workers_check['detail']}), /metrics mammoseg_worker_process_restarts_total "
        f"{restarts:.0f}, mammoseg_workers_alive {alive:.0f}"
        f"\njobs {dict(states)}; poison job {bad['id']}: {bad['state']} {bad['reason']!r}; "
        f"results at the destination: {sum(1 for p in received.rglob('*') if p.is_file())} files"
        f"\nRSS idle: serve {parent_rss:.0f} MB, worker process {worker_rss:.0f} MB; "
        f"serve exit status {code}, worker processes left running {left_running}"
    )
    assert all(status == Status.SUCCESS for status in sent)
    assert prober.parent_pids == {parent} and parent_alive
    assert prober.echoes and set(prober.echoes) == {"0x0000"}, prober.echoes
    assert prober.stores and set(prober.stores) == {"0x0000"}, prober.stores
    assert len(deaths) == 3 and all(how == "signal SIGABRT" for _, how in deaths), deaths
    assert bad["state"] == "FAILED" and bad["reason"] == QUARANTINED
    assert others and all(j["state"] == "DONE" for j in others), others
    assert ready_code == 200 and workers_check["ok"]
    assert "3 restarts" in workers_check["detail"] and restarts == 3 and alive == 1
    assert code == 0 and left_running == []


def test_mammoseg_worker_on_sqlite_leaves_the_live_claims_of_serve_alone(tmp_path: Path) -> None:
    """Finding 12: both named after the host, the worker used to take back serve's claims."""
    data = tmp_path / "data"
    data.mkdir()
    store = JobStore(data / "jobs.sqlite3")
    # "serve" here is a live process of this host under the default name (the host name).
    serve = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    name = socket.gethostname()  # the default worker_id of both
    claims = {}
    for uid, owner in (
        ("1.2.3.1", str(this_process(name, serve.pid))),
        ("1.2.3.2", str(this_process(name, dead.pid))),
    ):
        store.queue.add(
            NewJob(
                sop_instance_uid=uid,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.1.2",
                study_instance_uid="1.2.3",
                series_instance_uid="1.2.3.9",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                calling_ae_title="PACS",
                association_id="assoc-1",
                path=str(data / "spool" / f"{uid}.dcm"),
                content_hash=uid,
            )
        )
        job = store.queue.claim([JobState.RECEIVED], JobState.PROCESSING, owner=owner)
        assert job is not None
        claims[uid] = (job.id, owner)
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "service", "worker", "--data-dir", str(data)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                "MAMMOSEG_MODEL_PATH": str(write_tiny_model(tmp_path / "tiny.onnx")),
                "MAMMOSEG_MIN_FREE_MB": "0",
            },
        )
    try:
        wait_until(lambda: "running 1 workers" in log_path.read_text(), 120, "the worker")
        time.sleep(1)  # a few polls of its workers and one turn of its sender
        live_id, live_owner = claims["1.2.3.1"]
        dead_id, _ = claims["1.2.3.2"]
        live, left = store.reads.get(live_id), store.reads.get(dead_id)
    finally:
        code = stop_process(worker)
        serve.kill()
        serve.wait()
    recovered = re.search(r"store sqlite ready: (.*)", log_path.read_text())
    assert live is not None and left is not None
    print(
        f"\nmammoseg worker beside serve on SQLite: serve's live claim {live.state.value} "
        f"by {live.owner}; the dead process's claim {left.state.value} "
        f"(crashes {left.crashes}, then {left.reason or 'no reason'}); worker log: "
        f"{recovered.group(1) if recovered else '?'}; worker exit status {code}"
    )
    assert live.state is JobState.PROCESSING and live.owner == live_owner and live.crashes == 0
    assert left.crashes == 1 and left.state is not JobState.PROCESSING
    assert code == 0
