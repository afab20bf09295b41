"""Issue 12 on a running node: a poison pill is quarantined, a duplicate send adds nothing.

The node runs in this process with the tiny model and an in-process destination
(tests/integration/test_node.py). A crash of the process is simulated by an
exception no worker catches: the worker thread dies holding its claim, as the
process would, and the node is stopped and started again ("a restart").
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import DigitalMammographyXRayImageStorageForPresentation

from dicom_node.status import Status
from service import worker
from service.node import Node, pipeline_options, start_node
from service.settings import load_settings
from service.store import JobState
from service.testkit.synthetic import Mass, synthetic_mammogram
from tests.conftest import free_port
from tests.integration.test_node import Destination, make_node, send, wait_for
from tests.tiny_model import write_tiny_model


class SimulatedCrash(BaseException):
    """What a segfault in a decoder or the OOM killer does to the job: nothing finishes it."""


@pytest.fixture
def destination() -> Iterator[Destination]:
    dest = Destination()
    yield dest
    dest.close()


@pytest.fixture
def quiet_thread_deaths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threading, "excepthook", lambda args: None)


def finished(node: Node, n: int) -> list[Any]:
    jobs = [j for j in node.store.reads.list(limit=100) if j.state.value in ("DONE", "FAILED")]
    return jobs if len(jobs) >= n else []


@pytest.mark.slow
def test_a_poison_pill_is_quarantined_and_the_others_reach_done(
    tmp_path: Path,
    destination: Destination,
    monkeypatch: pytest.MonkeyPatch,
    quiet_thread_deaths: None,
) -> None:
    poison = synthetic_mammogram(seed=21)
    healthy = [synthetic_mammogram(seed=22 + i) for i in range(3)]
    crashes: list[int] = []
    real = worker.process_instance

    def faulty(path: Path, job_id: int, *args: Any) -> Any:
        if path.name == f"{poison.SOPInstanceUID}.dcm":
            crashes.append(job_id)
            raise SimulatedCrash
        return real(path, job_id, *args)

    monkeypatch.setattr(worker, "process_instance", faulty)
    lives = []
    node = make_node(tmp_path, destination.port)
    try:
        for ds in (poison, *healthy):  # the poison pill arrives first, so it is claimed first
            assert send(node, ds) == Status.SUCCESS
        wait_for(lambda: len(crashes) == 1)
    finally:
        node.stop(timeout_s=5)
    lives.append(("life 1", len(crashes), node.store.reads.counts()))
    for life in (2, 3, 4):
        node = make_node(tmp_path, destination.port)  # the restart
        try:
            if life < 4:
                wait_for(lambda life=life: len(crashes) == life)  # claimed first, crashed again
                lives.append((f"life {life}", len(crashes), node.store.reads.counts()))
                continue
            # Life 4: quarantined at start-up; the others go through, and the SCP takes more.
            late = synthetic_mammogram(seed=40, masses=[Mass(row=200, col=150, radius=30)])
            assert send(node, late) == Status.SUCCESS
            jobs = wait_for(lambda node=node: finished(node, 5))
            lives.append((f"life {life}", len(crashes), node.store.reads.counts()))
            sent = sum(len(j.results.get("files", [])) for j in jobs)
            wait_for(lambda sent=sent: len(destination.received) == sent)
        finally:
            node.stop(timeout_s=5)
    for line in lives:
        print(f"\n{line}", end="")
    bad = next(j for j in jobs if j.sop_instance_uid == poison.SOPInstanceUID)
    print(f"\npoison job {bad.id}: {bad.state.value}, {bad.reason!r}; crashes seen {len(crashes)}")
    print(f"destination received {len(destination.received)} objects for 4 healthy images")
    assert sent >= 8  # an SR and an SC for each, a SEG where a mass was found
    assert bad.state is JobState.FAILED and bad.reason == "quarantined after 3 crashed attempts"
    assert len(crashes) == 3
    assert sorted(j.state.value for j in jobs if j.id != bad.id) == ["DONE"] * 4
    assert node.store.reads.counters()["quarantined"] == 1


def result_uids(received: list[Dataset]) -> set[str]:
    return {str(ds.SOPInstanceUID) for ds in received}


@pytest.mark.slow
def test_a_duplicate_send_after_done_gives_no_new_result_objects(
    tmp_path: Path, destination: Destination
) -> None:
    source = synthetic_mammogram(seed=31, masses=[Mass(row=256, col=170, radius=40)])
    node = make_node(tmp_path, destination.port)
    try:
        assert send(node, source) == Status.SUCCESS
        (job,) = wait_for(lambda: finished(node, 1))
        wait_for(lambda: len(destination.received) == 3)
        first = result_uids(destination.received)
        # The result UIDs are those derived from the source, the job's key and the model.
        provenance = pipeline_options(node.settings, node.segmenter).provenance
        expected = provenance.for_result(job.result_key).derived_uid(source, "seg.instance")
        assert job.results["uids"]["seg"] == expected

        assert send(node, source) == Status.SUCCESS  # the PACS sends it again
        jobs_after_duplicate = len(node.store.reads.list())
        notes = [e.detail for e in node.store.reads.events(job.id) if e.id < 0]
        received_after_duplicate = len(destination.received)

        node.store.admin.reprocess(job.id)  # the deliberate redo: new objects
        wait_for(lambda: node.store.reads.get(job.id).state is JobState.DONE)  # type: ignore[union-attr]
        wait_for(lambda: len(destination.received) == 6)
        redone = result_uids(destination.received) - first

        changed = synthetic_mammogram(seed=31, masses=[Mass(row=300, col=200, radius=30)])
        changed.SOPInstanceUID = source.SOPInstanceUID
        changed.file_meta.MediaStorageSOPInstanceUID = source.SOPInstanceUID
        assert send(node, changed) == Status.SUCCESS  # same UID, other content: its own job
        second = next(j for j in wait_for(lambda: finished(node, 2)) if j.id != job.id)
        wait_for(lambda: len(destination.received) == 6 + len(second.results["files"]))
        third = result_uids(destination.received) - first - redone
        jobs_total = len(node.store.reads.list())
    finally:
        node.stop()
    print(
        f"\nfirst send: 3 objects; duplicate: {jobs_after_duplicate} job(s), "
        f"{received_after_duplicate - 3} new objects, note {notes}; reprocess: {len(redone)} "
        f"new UIDs; changed content: {jobs_total} jobs, {len(third)} new UIDs"
    )
    assert jobs_after_duplicate == 1 and received_after_duplicate == 3
    assert len(notes) == 1 and notes[0].startswith("duplicate ignored")
    assert len(redone) == 3 and jobs_total == 2
    assert second.state is JobState.DONE and len(third) == len(second.results["files"]) >= 2


@pytest.mark.slow
def test_retention_keeps_a_small_disk_in_steady_state(
    tmp_path: Path, destination: Destination
) -> None:
    """data_dir on a 24 MB tmpfs, 240 images (about 35 MB of spool and results): no 0xA700."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    statuses: list[int] = []
    lowest_free = [shutil.disk_usage(disk).free]
    try:
        settings = load_settings(
            data_dir=disk / "data",
            dicom_port=free_port(),
            http_port=0,
            model_path=write_tiny_model(tmp_path / "tiny.onnx", level=0.6),
            destinations=[f"DEST@127.0.0.1:{destination.port}"],
            min_free_mb=4,
            retention_high_water_mb=10,
            retention_interval_s=0.2,
            poll_interval_s=0.05,
            worker_processes=0,
        )
        node = start_node(settings)
        try:
            ae = AE(ae_title="PACS")
            ae.add_requested_context(DigitalMammographyXRayImageStorageForPresentation)
            for batch in range(12):
                assoc = ae.associate("127.0.0.1", settings.dicom_port, ae_title="MAMMOSEG")
                assert assoc.is_established
                for i in range(20):
                    ds = synthetic_mammogram(rows=256, columns=208, seed=1000 + batch * 20 + i)
                    statuses.append(int(assoc.send_c_store(ds).Status))
                    lowest_free[0] = min(lowest_free[0], shutil.disk_usage(disk).free)
                assoc.release()
                # A PACS at a rate the node sustains: the next batch once this one is
                # delivered. Waiting only for the queue to empty let SENDING jobs pile up
                # (delivery is the slower stage here), and open jobs' files cannot go.
                done = 20 * (batch + 1)
                wait_for(lambda n=done: node.store.reads.counts()["DONE"] >= n, timeout_s=180)
            counters = node.store.reads.counters()
        finally:
            node.stop()
    finally:
        # Lazy: the store's per-thread SQLite connections close when their threads go.
        subprocess.run(["umount", "-l", str(disk)], check=False)
    refused = sum(1 for s in statuses if s != Status.SUCCESS)
    purged, purged_mb = counters.get("retention.jobs_purged", 0), counters["retention.bytes"] >> 20
    print(
        f"\n240 images into a 24 MB tmpfs (min_free_mb 4, high water 10 MB): {refused} refused, "
        f"lowest free {lowest_free[0] >> 10} KB, files of {purged} jobs deleted ({purged_mb} MB), "
        f"{counters.get('retention.high_water_jobs', 0)} for the high-water mark"
    )
    assert refused == 0
    assert counters.get("retention.high_water_jobs", 0) > 0
