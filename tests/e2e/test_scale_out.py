"""Scale-out: one receiving node and two worker processes on PostgreSQL and one spool."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psycopg
import pydicom
import pytest

from service.testkit.launch import start_node
from service.testkit.processes import stop_process
from service.testkit.synthetic import synthetic_mammogram, write
from tests.e2e.peers import storescp, storescu, wait_until
from tests.e2e.reliability import all_jobs, received_by_source
from tests.pg import postgres
from tests.tiny_model import write_tiny_model

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def start_worker(tmp: Path, name: str, env: dict[str, str], args: list[str]) -> subprocess.Popen:  # type: ignore[type-arg]
    log = (tmp / f"{name}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "service", "worker", "--worker-id", name, *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
    )


def test_two_worker_processes_process_each_image_once(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    images = [
        write(
            synthetic_mammogram(rows=256, columns=208, seed=300 + i), tmp_path / "in" / f"{i}.dcm"
        )
        for i in range(100)
    ]
    with postgres() as url, storescp(tmp_path / "dest") as (dest_port, received):
        env = {
            "MAMMOSEG_DATABASE_URL": url,
            "MAMMOSEG_MIN_FREE_MB": "0",
            "MAMMOSEG_MODEL_PATH": str(write_tiny_model(tmp_path / "tiny.onnx")),
            "MAMMOSEG_POLL_INTERVAL_S": "0.05",
        }
        destination = ["--destination", f"STORESCP@127.0.0.1:{dest_port}"]
        node = start_node(tmp_path / "node", env=env, args=[*destination, "--worker-id", "node"])
        shared = ["--data-dir", str(node.data_dir), *destination]
        workers = [start_worker(tmp_path, f"w{i}", env, shared) for i in (1, 2)]
        try:
            start = time.monotonic()
            sent = storescu(node.dicom_port, images, called="MAMMOSEG")
            assert sent.returncode == 0, sent.stderr
            wait_until(
                lambda: (lambda js: len(js) == 100 and all(j["state"] == "DONE" for j in js))(
                    all_jobs(node)
                ),
                600,
                "100 jobs DONE",
            )
            elapsed = time.monotonic() - start
            with psycopg.connect(url) as conn:
                rows = conn.execute(
                    "SELECT job_id, detail FROM job_events WHERE state = 'PROCESSING'"
                ).fetchall()
        finally:
            codes = [stop_process(w) for w in workers] + [stop_process(node.proc)]
        by_source = received_by_source(received)
    assert codes == [0, 0, 0]
    per_job = Counter(job_id for job_id, _ in rows)
    assert len(per_job) == 100 and set(per_job.values()) == {1}, "a job was processed twice"
    # "by NAME#PID@HOST" (service/store/owners.py): the worker_id is the name.
    split = Counter(detail.split("#")[0] for _, detail in rows)
    assert set(split) <= {"by node", "by w1", "by w2"}
    assert split["by w1"] > 0 and split["by w2"] > 0, split
    for image in images:
        uid = pydicom.dcmread(image, stop_before_pixels=True).SOPInstanceUID
        results = set(by_source.get(uid, []))
        assert Counter(m for m, _ in results)["OT"] == 1, (uid, results)
    print(
        f"\nscale-out: 100 images on PostgreSQL, processed once each in {elapsed:.1f} s; "
        f"split {dict(split)}"
    )
