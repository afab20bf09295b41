"""STOW-RS in (service/api/dicomweb.py) on an in-process node, and the STOW-RS client.

The instances go through the SCP's durable path (dicom_node.scp.store_encoded):
each stored part has its spool file and a committed job before the answer, and
reaches DONE at a C-STORE peer. Refusals are per instance (FailedSOPSequence
with the DIMSE status as Failure Reason) or problem JSON for the whole request.
"""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydicom import Dataset

from dicom_node.scu import Destination
from dicom_node.stow import StowError, WebTarget, multipart_body, send_stow
from service.app import create_app
from service.node import start_node
from service.store import JobState
from tests.conftest import free_port
from tests.http_node import (
    ADMIN,
    VIEWER,
    Peer,
    live_server,
    mammogram,
    node_state,
    running_node,
    send,
    settings_for,
    wait_for,
)

STOW = "stow-token-0123456789abcdef"
REFERENCED, FAILED, REASON = "00081199", "00081198", "00081197"
SOP_INSTANCE = "00081155"


def encoded(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def multipart(parts: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = f"b-{uuid.uuid4().hex}"
    body = b""
    for content_type, data in parts:
        body += f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def post(
    client: TestClient,
    body: bytes,
    content_type: str,
    *,
    token: str | None = STOW,
    path: str = "/dicomweb/studies",
) -> Any:
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return client.post(path, content=body, headers=headers)


def uids(answer: dict[str, Any], tag: str) -> list[str]:
    return [item[SOP_INSTANCE]["Value"][0] for item in answer.get(tag, {}).get("Value", [])]


def reasons(answer: dict[str, Any]) -> list[int]:
    return [item[REASON]["Value"][0] for item in answer[FAILED]["Value"]]


@pytest.fixture
def stow_node(tmp_path: Path):  # type: ignore[no-untyped-def]
    peer = Peer()
    try:
        with running_node(tmp_path, peer, stow_token=STOW, max_dataset_mb=1) as node:
            yield node, peer, TestClient(create_app(node_state(node)))
    finally:
        peer.close()


def test_two_mammograms_are_stored_committed_and_reach_done(stow_node) -> None:  # type: ignore[no-untyped-def]
    node, peer, client = stow_node
    first, second = mammogram(seed=1), mammogram(seed=2)
    body, content_type = multipart_body([encoded(first), encoded(second)])
    response = post(client, body, content_type)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    answer = response.json()
    assert set(uids(answer, REFERENCED)) == {first.SOPInstanceUID, second.SOPInstanceUID}
    assert FAILED not in answer
    # Committed before the answer: the jobs and spool files exist now.
    jobs = {job.sop_instance_uid: job for job in node.store.reads.list()}
    assert set(jobs) == {first.SOPInstanceUID, second.SOPInstanceUID}
    assert all(Path(job.path).is_file() for job in jobs.values())
    assert {job.calling_ae_title for job in jobs.values()} == {"STOW-RS"}
    done = wait_for(
        lambda: (lambda js: js if all(j.state is JobState.DONE for j in js) else None)(
            node.store.reads.list()
        ),
        timeout_s=120,
    )
    assert len(done) == 2
    with peer.lock:
        assert len(peer.received) >= 4  # SC and SR (and SEG) per image


def test_tokens(stow_node) -> None:  # type: ignore[no-untyped-def]
    _, _, client = stow_node
    body, content_type = multipart_body([encoded(mammogram(seed=3))])
    tokenless = post(client, body, content_type, token=None)
    assert tokenless.status_code == 401
    assert tokenless.headers["content-type"] == "application/problem+json"
    assert tokenless.headers["www-authenticate"].startswith("Bearer")
    assert post(client, body, content_type, token=VIEWER).status_code == 401
    assert post(client, body, content_type, token=ADMIN).status_code == 200


def test_failures_per_instance(stow_node) -> None:  # type: ignore[no-untyped-def]
    node, _, client = stow_node
    good = mammogram(seed=4)
    big = mammogram(seed=5, rows=1024, columns=1024)  # 2 MB, over max_dataset_mb = 1
    body, content_type = multipart(
        [
            ("application/dicom", encoded(good)),
            ("application/dicom", b"this is not DICOM" * 10),
            ("image/png", encoded(mammogram(seed=6))),
            ("application/dicom", encoded(big)),
        ]
    )
    response = post(client, body, content_type)
    assert response.status_code == 202, response.text
    answer = response.json()
    assert uids(answer, REFERENCED) == [good.SOPInstanceUID]
    assert reasons(answer) == [0xC000, 0xC000, 0xA700]
    assert [job.sop_instance_uid for job in node.store.reads.list()] == [good.SOPInstanceUID]

    none_stored, content_type = multipart([("application/dicom", b"\0" * 300)])
    response = post(client, none_stored, content_type)
    assert response.status_code == 409
    assert reasons(response.json()) == [0xC000]


def test_study_target_and_sop_class(stow_node) -> None:  # type: ignore[no-untyped-def]
    _, _, client = stow_node
    ds = mammogram(seed=7)
    body, content_type = multipart_body([encoded(ds)])
    other = post(client, body, content_type, path="/dicomweb/studies/1.2.3.4")
    assert other.status_code == 409
    assert reasons(other.json()) == [0xA900]
    assert uids(other.json(), FAILED) == [ds.SOPInstanceUID]
    same = post(client, body, content_type, path=f"/dicomweb/studies/{ds.StudyInstanceUID}")
    assert same.status_code == 200
    ct = mammogram(seed=8)
    ct.SOPClassUID = ct.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    body, content_type = multipart_body([encoded(ct)])
    assert reasons(post(client, body, content_type).json()) == [0x0122]


def test_request_refusals_are_problem_json(tmp_path: Path) -> None:
    peer = Peer()
    try:
        with running_node(tmp_path, peer, stow_token=STOW, max_stow_mb=1) as node:
            client = TestClient(create_app(node_state(node)))
            body, content_type = multipart_body([encoded(mammogram(seed=9))])
            wrong = post(client, body, "application/dicom")
            assert wrong.status_code == 415
            assert wrong.headers["content-type"] == "application/problem+json"
            parts = content_type.replace("application/dicom", "application/dicom+json")
            assert post(client, body, parts).status_code == 415
            too_big, content_type = multipart_body([b"\0" * (2 << 20)])
            refused = post(client, too_big, content_type)
            assert refused.status_code == 413
            assert refused.headers["content-type"] == "application/problem+json"
            assert node.store.reads.list() == []
    finally:
        peer.close()


def test_destination_form() -> None:
    d = Destination.parse("stow+https://pacs.example:8443/dicom-web?token_file=/run/t&ca_file=/ca")
    assert d.name == "stow+https://pacs.example:8443/dicom-web"
    assert d.spec == "stow+https://pacs.example:8443/dicom-web?token_file=/run/t&ca_file=/ca"
    assert Destination.parse(d.spec) == d
    with pytest.raises(ValueError) as refused:
        Destination.parse("stow+http://user:secret@127.0.0.1/dicom-web")
    assert "secret" not in str(refused.value)
    for bad in (
        "stow+http://127.0.0.1/x?ca_file=/ca",
        "stow+http://127.0.0.1/x?token_file=/a&basic_file=/b",
        "stow+http://127.0.0.1/x?password=x",
        "stow+ftp://127.0.0.1/x",
    ):
        with pytest.raises(ValueError):
            Destination.parse(bad)


def test_a_failing_dicomweb_destination_retries_then_fails(tmp_path: Path) -> None:
    """Same retries, backoff and give-up as a DIMSE destination (service.worker.deliver)."""
    url = f"stow+http://127.0.0.1:{free_port()}/dicom-web"  # nothing listens there
    settings = settings_for(tmp_path, destinations=[url], retry_give_up_s=1.0)
    node = start_node(settings)
    try:
        assert send(node, mammogram(seed=11)) == [0]
        events = wait_for(
            lambda: (lambda js: js if js and js[0].state is JobState.FAILED else None)(
                node.store.reads.list()
            ),
            timeout_s=120,
        )
        job = events[0]
        states = [e.state for e in node.store.reads.events(job.id)]
        assert JobState.RETRYING in states
        assert "gave up sending" in job.reason and url in job.reason
    finally:
        node.stop()


def test_stow_client_against_the_node(stow_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """dicom_node.stow.send_stow to our own endpoint: stored, and refused without the token."""
    node, _, _ = stow_node
    ds = mammogram(seed=10)
    path = tmp_path / "one.dcm"
    path.write_bytes(encoded(ds))
    token = tmp_path / "token"
    token.write_text(STOW + "\n")
    with live_server(node_state(node)) as server:
        send_stow(WebTarget.parse(f"stow+{server.url}/dicomweb?token_file={token}"), [path])
        assert ds.SOPInstanceUID in {job.sop_instance_uid for job in node.store.reads.list()}
        with pytest.raises(StowError, match="HTTP 401"):
            send_stow(WebTarget.parse(f"stow+{server.url}/dicomweb"), [path])
        token.write_text("")
        with pytest.raises(StowError, match="no usable credentials"):
            send_stow(WebTarget.parse(f"stow+{server.url}/dicomweb?token_file={token}"), [path])
