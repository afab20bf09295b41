"""README "Hooking it to a PACS", followed step by step on 127.0.0.1.

The README binds to 0.0.0.0. This test stays on 127.0.0.1 and in process: it checks that
the README's arguments parse to ``dicom_host = "0.0.0.0"`` and then binds the node with
``--dicom-host 127.0.0.1`` given explicitly. ``tests/e2e/test_pacs_hookup_netns.py``
follows the same steps with the node bound to 0.0.0.0 inside a network namespace the test
creates (a veth pair, root only). The commands come from the README itself; DCMTK's
``echoscu``/``storescu`` run where installed, pynetdicom plays them otherwise.
"""

from __future__ import annotations

import io
import json
import logging
import re
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import DigitalMammographyXRayImageStorageForPresentation, Verification

from dicom_node.status import Status
from service.cli import build_parser, main
from service.logs import JsonFormatter
from service.node import Node, start_node
from service.settings import Settings, load_settings
from service.store import JobState
from service.testkit.synthetic import ImageSpec, write_mammograms
from tests.conftest import free_port
from tests.tiny_model import write_tiny_model

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
NODE_HOST = "127.0.0.1"


def readme_section() -> str:
    start = README.index("## Hooking it to a PACS")
    return README[start : README.index("\n## ", start + 1)]


class Pacs:
    """A storage SCP standing for the PACS (AE title PACSAET): keeps what the node sends."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[Dataset] = []
        self.lock = threading.Lock()
        ae = AE(ae_title="PACSAET")
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self.store)]
        )

    def store(self, event: evt.Event) -> int:
        with self.lock:
            self.received.append(event.dataset)
        return int(Status.SUCCESS)


@pytest.fixture
def pacs() -> Iterator[Pacs]:
    peer = Pacs()
    yield peer
    peer.server.shutdown()


def readme_args(pacs: Pacs, tmp_path: Path, dicom_port: int) -> list[str]:
    (line,) = re.findall(r'^\s*ARGS="([^"]+)"$', readme_section(), flags=re.MULTILINE)
    as_written = shlex.split(line)
    assert as_written[:2] == ["--dicom-host", "0.0.0.0"]
    assert settings_of(as_written).dicom_host == "0.0.0.0"
    args = shlex.split(
        line.replace("0.0.0.0", NODE_HOST).replace("pacs-host:104", f"127.0.0.1:{pacs.port}")
    )
    assert args[:2] == ["--dicom-host", NODE_HOST]
    return [
        *args,
        "--dicom-port",
        str(dicom_port),
        "--http-port",
        "0",
        "--data-dir",
        str(tmp_path / "data"),
        "--model-path",
        # Level 0.35: under the synthetic image's brightest blurred region (about 0.44),
        # so it marks a region and the SEG is made (the step checks delivery, not detection).
        str(write_tiny_model(tmp_path / "tiny.onnx", level=0.35)),
    ]


def settings_of(args: list[str]) -> Settings:
    parsed = build_parser().parse_args(["serve", *args])
    overrides = {k: v for k, v in vars(parsed).items() if k in Settings.model_fields}
    # The workers in this process: the test reads their log lines.
    return load_settings(None, min_free_mb=0, worker_processes=0, **overrides)


def dcmtk(command: str, port: int) -> list[str] | None:
    """The README's DCMTK command line, aimed at the test node; None if DCMTK is missing."""
    (line,) = [
        ln.strip().removeprefix("$ ")
        for ln in readme_section().splitlines()
        if ln.strip().startswith(f"$ {command} ")
    ]
    argv = shlex.split(line.replace("mammoseg-host 11112", f"{NODE_HOST} {port}"))
    return argv if shutil.which(argv[0]) else None


def echo(port: int, calling: str) -> bool:
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate(NODE_HOST, port, ae_title="MAMMOSEG")
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return int(status.Status) == Status.SUCCESS


def store(port: int, path: Path) -> int:
    ae = AE(ae_title="PACSAET")
    ae.add_requested_context(DigitalMammographyXRayImageStorageForPresentation)
    assoc = ae.associate(NODE_HOST, port, ae_title="MAMMOSEG")
    assert assoc.is_established
    status = assoc.send_c_store(dcmread(path))
    assoc.release()
    return int(status.Status)


def wait_for_done(node: Node, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        jobs = node.store.reads.list()
        if jobs and jobs[0].state in (JobState.DONE, JobState.FAILED):
            assert jobs[0].state is JobState.DONE, jobs[0].reason
            return
        time.sleep(0.1)
    raise AssertionError("the job did not finish")


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """What the node logs, as log_format = "json" writes it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


def test_readme_steps_deliver_seg_sc_and_sr(
    pacs: Pacs, tmp_path: Path, capsys: pytest.CaptureFixture[str], json_log: io.StringIO
) -> None:
    port = free_port()
    args = readme_args(pacs, tmp_path, port)
    assert main(["check-config", *args]) == 0, capsys.readouterr().err
    node = start_node(settings_of(args))
    try:
        assert node.settings.dicom_host == NODE_HOST
        # Step 4: C-ECHO as the registered PACS; another calling AE title is rejected.
        echoscu = dcmtk("echoscu", port)
        if echoscu:
            done = subprocess.run(echoscu, capture_output=True, text=True, timeout=60)
            assert "I: Received Echo Response (Success)" in done.stdout + done.stderr
        assert echo(port, "PACSAET")
        assert not echo(port, "INTRUDER")
        [mammogram] = write_mammograms(
            tmp_path / "smoke", 1, ImageSpec(rows=512, columns=416), seed=1
        )
        storescu = dcmtk("storescu", port)
        if storescu:
            storescu[-1] = str(mammogram)
            done = subprocess.run(storescu, capture_output=True, text=True, timeout=60)
            assert "I: Received Store Response (Success)" in done.stdout + done.stderr
        else:
            assert store(port, mammogram) == Status.SUCCESS
        wait_for_done(node)
    finally:
        node.stop()
    source = dcmread(mammogram, stop_before_pixels=True)
    modalities = sorted(ds.Modality for ds in pacs.received)
    assert modalities == ["OT", "SEG", "SR"]
    assert {ds.StudyInstanceUID for ds in pacs.received} == {source.StudyInstanceUID}
    assert sorted(int(ds.SeriesNumber) for ds in pacs.received) == [9901, 9902, 9903]
    # The JSON log names the instance, the association and the job as fields; no patient data.
    text = json_log.getvalue()
    events = [json.loads(line) for line in text.splitlines()]
    stored = [e for e in events if e.get("event") == "instance_stored"]
    assert [e["sop_instance_uid"] for e in stored] == [source.SOPInstanceUID]
    (created,) = [e for e in events if e.get("event") == "job_created"]
    assert created["association_id"] == stored[0]["association_id"]
    (done,) = [e for e in events if e.get("event") == "job_done"]
    assert done["job_id"] == created["job_id"]
    assert done["sop_instance_uid"] == source.SOPInstanceUID
    assert {e.get("event") for e in events} >= {"association_accepted", "association_rejected"}
    for value in (str(source.PatientName), str(source.PatientID), "Bench", "BENCH0001"):
        assert value not in text
