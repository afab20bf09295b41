"""DICOMweb both ways against Orthanc's DICOMweb plugin (Debian package orthanc-dicomweb).

- In: Orthanc is the STOW-RS client (``POST /dicom-web/servers/mammoseg/stow``, the node
  configured as a DICOMweb server with its ``stow_token``), and a plain HTTP client
  posts a multipart of two mammograms to ``POST /dicomweb/studies``.
- Out: the node's DICOMweb destination (``stow+http://...?basic_file=FILE``) sends SEG,
  SC and SR to Orthanc's ``/dicom-web/studies`` with basic auth; they are found through
  Orthanc's REST API. Wrong credentials: RETRYING, then FAILED after retry_give_up_s.

Everything on 127.0.0.1 (Orthanc 1.10 binds to all interfaces: own config, own storage).
"""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicom_node.stow import multipart_body
from service.testkit.launch import start_node
from service.testkit.processes import stop_process
from service.testkit.synthetic import Mass, synthetic_mammogram
from tests.conftest import free_port
from tests.e2e.peers import orthanc, wait_until
from tests.tiny_model import write_tiny_model

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STOW = "stow-token-0123456789abcdef"
USER = ("mammoseg", "orthanc-password-0123")
RESULT_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "seg",
    "1.2.840.10008.5.1.4.1.1.7": "sc",
}


def mammogram(seed: int) -> pydicom.Dataset:
    return synthetic_mammogram(seed=seed, masses=[Mass(row=256, col=170, radius=40)])


def encoded(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def results_of(pacs, source: pydicom.Dataset, tmp_path: Path) -> set[str]:  # type: ignore[no-untyped-def]
    """The kinds of result (seg, sc, sr) in Orthanc's study that are not the source."""
    kinds = set()
    for item in pacs.study_instances(source.StudyInstanceUID):
        ds = pydicom.dcmread(pacs.download(item["ID"], tmp_path / f"{item['ID']}.dcm"))
        if ds.SOPInstanceUID == source.SOPInstanceUID:
            continue
        kinds.add("sr" if ds.Modality == "SR" else RESULT_CLASSES.get(ds.SOPClassUID, "?"))
    return kinds


def node_args(tmp_path: Path, pacs_http_port: int, credentials: str) -> list[str]:
    basic = tmp_path / "orthanc.auth"
    basic.write_text(credentials + "\n")
    basic.chmod(0o600)
    destination = f"stow+http://127.0.0.1:{pacs_http_port}/dicom-web?basic_file={basic}"
    model = write_tiny_model(tmp_path / "tiny.onnx", level=0.6)
    return ["--destination", destination, "--model-path", str(model)]


@pytest.fixture
def dicomweb_pair(tmp_path: Path):  # type: ignore[no-untyped-def]
    node_http = free_port()
    servers = {
        "mammoseg": {
            "Url": f"http://127.0.0.1:{node_http}/dicomweb/",
            "HttpHeaders": {"Authorization": f"Bearer {STOW}"},
        }
    }
    with orthanc(
        tmp_path / "orthanc",
        node_aet="MAMMOSEG",
        node_port=free_port(),
        route=False,
        dicomweb_servers=servers,
        user=USER,
    ) as pacs:
        node = start_node(
            tmp_path / "node",
            http_port=node_http,
            args=node_args(tmp_path, pacs.http_port, ":".join(USER)),
            env={"MAMMOSEG_STOW_TOKEN": STOW},
        )
        try:
            yield pacs, node
        finally:
            code = stop_process(node.proc)
            assert code == 0, node.log_text()[-3000:]


def stow(url: str, body: bytes, content_type: str, token: str | None) -> tuple[int, Any]:
    req = urllib.request.Request(  # noqa: S310
        url + "/dicomweb/studies", data=body, method="POST", headers={"Content-Type": content_type}
    )
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310
            return resp.status, (resp.headers.get_content_type(), json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        return exc.code, (exc.headers.get_content_type(), json.loads(exc.read()))


def done_jobs(node, count: int) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    jobs = node.jobs()
    finished = [j for j in jobs if j["state"] in ("DONE", "FAILED", "SKIPPED")]
    return jobs if len(jobs) >= count and len(finished) == len(jobs) else []


def test_stow_in_two_mammograms_and_results_out_to_orthanc(dicomweb_pair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pacs, node = dicomweb_pair
    images = [mammogram(1), mammogram(2)]
    body, content_type = multipart_body([encoded(ds) for ds in images])
    status, (media, _) = stow(node.url, body, content_type, None)
    assert (status, media) == (401, "application/problem+json")
    status, (media, answer) = stow(node.url, body, content_type, STOW)
    assert status == 200, answer
    assert media == "application/dicom+json"
    stored = {i["00081155"]["Value"][0] for i in answer["00081199"]["Value"]}
    assert stored == {ds.SOPInstanceUID for ds in images}

    jobs = wait_until(lambda: done_jobs(node, 2), 240, "both STOW-RS jobs to finish")
    assert {j["state"] for j in jobs} == {"DONE"}, [j.get("reason") for j in jobs]
    for ds in images:
        kinds = wait_until(
            lambda ds=ds: (lambda k: k if {"seg", "sc", "sr"} <= k else None)(
                results_of(pacs, ds, tmp_path)
            ),
            60,
            "SEG, SC and SR in Orthanc",
        )
        assert {"seg", "sc", "sr"} <= kinds
    # Privacy: the node's log names UIDs and job ids, never the patient.
    assert "Synthetic^Patient" not in node.log_text()
    assert "SYN0001" not in node.log_text()


def test_orthanc_is_the_stow_client(dicomweb_pair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pacs, node = dicomweb_pair
    source = mammogram(3)
    instance = pacs.post("/instances", encoded(source))["ID"]
    pacs.post("/dicom-web/servers/mammoseg/stow", {"Resources": [instance], "Synchronous": True})
    jobs = wait_until(lambda: done_jobs(node, 1), 240, "the job Orthanc sent to finish")
    assert [j["sop_instance_uid"] for j in jobs] == [source.SOPInstanceUID]
    assert jobs[0]["state"] == "DONE", jobs[0].get("reason")
    kinds = wait_until(
        lambda: (lambda k: k if {"seg", "sc", "sr"} <= k else None)(
            results_of(pacs, source, tmp_path)
        ),
        60,
        "SEG, SC and SR back in Orthanc",
    )
    assert {"seg", "sc", "sr"} <= kinds


def test_wrong_credentials_retry_then_fail(tmp_path: Path) -> None:
    with orthanc(
        tmp_path / "orthanc",
        node_aet="MAMMOSEG",
        node_port=free_port(),
        route=False,
        dicomweb_servers={},
        user=USER,
    ) as pacs:
        node = start_node(
            tmp_path / "node",
            args=node_args(tmp_path, pacs.http_port, "mammoseg:wrong-password"),
            env={
                "MAMMOSEG_STOW_TOKEN": STOW,
                "MAMMOSEG_RETRY_INITIAL_S": "0.5",
                "MAMMOSEG_RETRY_GIVE_UP_S": "3",
            },
        )
        try:
            body, content_type = multipart_body([encoded(mammogram(4))])
            status, _ = stow(node.url, body, content_type, STOW)
            assert status == 200
            job = wait_until(
                lambda: (lambda js: js[0] if js and js[0]["state"] == "FAILED" else None)(
                    node.jobs()
                ),
                240,
                "the job to give up",
            )
            assert "HTTP 401" in job["reason"] and "gave up sending" in job["reason"]
            events = node.get(f"/api/v1/jobs/{job['id']}")["events"]
            assert "RETRYING" in [e["state"] for e in events]
            assert "wrong-password" not in node.log_text()
        finally:
            code = stop_process(node.proc)
            assert code == 0, node.log_text()[-3000:]
