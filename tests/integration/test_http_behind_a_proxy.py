"""HTTP behind a proxy (issue 12): trusted proxies, loopback, patient data, Host, slow bodies.

The app over a real store (TestClient, whose peer address is set per client),
and for the slow body the app under uvicorn as ``serve`` configures it
(``service.http_edge.server_config``) on 127.0.0.1 with raw sockets. None
asserts a time.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient
from pydicom import dcmread

from service.app import create_app
from service.http_edge import server_config
from service.store import NewJob
from service.testkit.synthetic import write
from tests.conftest import free_port
from tests.http_node import VIEWER, app_state, mammogram, settings_for, wait_for

AS_VIEWER = {"Authorization": f"Bearer {VIEWER}"}
REMOTE = "198.51.100.9"


def client_for(
    tmp_path: Path, peer: str = "127.0.0.1", *, base_url: str = "http://testserver", **kw: Any
) -> TestClient:
    kw.setdefault("read_access", "loopback")
    state = app_state(settings_for(tmp_path, **kw))
    return TestClient(create_app(state), client=(peer, 50000), base_url=base_url)


def job_with_file(client: TestClient, **kw: Any) -> tuple[int, Any]:
    settings = client.app.state.node.settings  # type: ignore[attr-defined]
    ds = mammogram(**kw)
    settings.spool_dir.mkdir(parents=True, exist_ok=True)
    path = write(ds, settings.spool_dir / f"{ds.SOPInstanceUID}.dcm")
    job_id, _ = client.app.state.node.store.queue.add(  # type: ignore[attr-defined]
        NewJob(
            sop_instance_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            study_instance_uid=str(ds.StudyInstanceUID),
            series_instance_uid=str(ds.SeriesInstanceUID),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
            calling_ae_title="PACS",
            association_id="assoc-1",
            path=str(path),
        )
    )
    return job_id, ds


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


# -- trusted proxies and loopback -----------------------------------------
def test_forwarded_for_from_an_untrusted_peer_is_ignored(tmp_path: Path) -> None:
    """A remote peer that claims to be 127.0.0.1 stays remote; a local one that forwards
    without being a trusted proxy is not local either (its header is ignored)."""
    remote = client_for(tmp_path / "a", peer="203.0.113.5")
    assert_problem(remote.get("/api/v1/jobs", headers={"X-Forwarded-For": "127.0.0.1"}), 401)
    login = remote.post(
        "/login",
        data={"token": VIEWER, "next": "/"},
        headers={"X-Forwarded-Proto": "https"},
        follow_redirects=False,
    )
    assert login.status_code == 303 and "secure" not in login.headers["set-cookie"].lower()

    local = client_for(tmp_path / "b", peer="127.0.0.1")
    assert local.get("/api/v1/jobs").status_code == 200  # a plain local read: no token
    forwarded = local.get("/api/v1/jobs", headers={"X-Forwarded-For": REMOTE})
    assert_problem(forwarded, 401)  # an undeclared local proxy: not a loopback caller


def test_forwarded_for_from_a_trusted_proxy_is_honoured(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = client_for(tmp_path, peer="127.0.0.1", trusted_proxies=["127.0.0.1", "::1"])
    login = proxy.post(
        "/login",
        data={"token": VIEWER, "next": "/"},
        headers={"X-Forwarded-For": REMOTE, "X-Forwarded-Proto": "https"},
        follow_redirects=False,
    )
    assert login.status_code == 303 and "secure" in login.headers["set-cookie"].lower()
    # The client address the node logs is the forwarded one, not the proxy's.
    with caplog.at_level("WARNING", logger="service.http_edge"):
        refused = proxy.get(
            "/healthz",
            headers={"X-Forwarded-For": f"10.0.0.1, {REMOTE}", "Host": "rebound.example"},
        )
    assert_problem(refused, 400)
    lines = [r.getMessage() for r in caplog.records if r.name == "service.http_edge"]
    assert lines == [f"refused Host 'rebound.example' from {REMOTE} (not in allowed_hosts)"]


def test_a_remote_client_through_a_trusted_proxy_is_not_loopback(tmp_path: Path) -> None:
    proxy = client_for(tmp_path, peer="127.0.0.1", trusted_proxies=["127.0.0.1"])
    for forwarded in (REMOTE, f"127.0.0.1, {REMOTE}", "127.0.0.1", None):
        headers = {"X-Forwarded-For": forwarded} if forwarded else {}
        assert_problem(proxy.get("/api/v1/jobs", headers=headers), 401)
        page = proxy.get("/jobs", headers=headers, follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"].startswith("/login")
        assert proxy.get("/api/v1/jobs", headers={**headers, **AS_VIEWER}).status_code == 200
    print(
        "\nread_access loopback, trusted_proxies 127.0.0.1: tokenless reads through the proxy "
        "(X-Forwarded-For remote, spoofed 127.0.0.1, or none) -> 401; with a token -> 200"
    )


# -- patient data ---------------------------------------------------------
def test_tokenless_loopback_reads_never_show_patient_data(tmp_path: Path) -> None:
    client = client_for(tmp_path, peer="127.0.0.1", show_patient_data=True)
    job_id, ds = job_with_file(client)
    burned_id, _ = job_with_file(client, seed=2)
    path = client.app.state.node.store.reads.get(burned_id).path  # type: ignore[attr-defined]
    marked = dcmread(path)
    marked.BurnedInAnnotation = "YES"
    marked.save_as(path)
    phi = (str(ds.PatientName), ds.PatientID, ds.PatientBirthDate)

    tokenless = client.get(f"/api/v1/jobs/{job_id}")
    assert tokenless.status_code == 200 and tokenless.json()["patient"] is None
    texts = [tokenless.text, client.get(f"/jobs/{job_id}").text]
    texts.append(client.get(f"/fragments/jobs/{job_id}").text)
    for value in phi:
        assert all(value not in text for text in texts), value
    assert_problem(client.get(f"/api/v1/jobs/{burned_id}/images/input.png"), 403)

    with_token = client.get(f"/api/v1/jobs/{job_id}", headers=AS_VIEWER).json()
    assert with_token["patient"] == {"name": phi[0], "id": phi[1], "birth_date": phi[2]}
    client.post("/login", data={"token": VIEWER, "next": "/"})  # a session is a role too
    assert phi[1] in client.get(f"/jobs/{job_id}").text
    assert client.get(f"/api/v1/jobs/{burned_id}/images/input.png").status_code == 200


# -- Host allow-list ------------------------------------------------------
def test_a_host_not_allowed_gets_400_problem_json(tmp_path: Path) -> None:
    client = client_for(tmp_path, allowed_hosts=["localhost", "127.0.0.1", "::1"])
    for path in ("/healthz", "/api/v1/jobs", "/login", "/docs"):
        body = assert_problem(client.get(path, headers={"Host": "attacker.example"}), 400)
        assert "attacker.example" in body["detail"] and "allowed_hosts" in body["detail"]
    refused = client.get("/healthz", headers={"Host": "attacker.example"})
    assert refused.headers["x-content-type-options"] == "nosniff"
    for host in ("localhost:8080", "127.0.0.1", "[::1]:8080", "LOCALHOST"):
        assert client.get("/healthz", headers={"Host": host}).status_code == 200, host
        assert client.get("/api/v1/jobs", headers={"Host": host}).status_code == 200, host
    assert_problem(client.get("/healthz", headers={"Host": "testserver"}), 400)


def test_the_allow_list_takes_subdomains_http_host_and_star(tmp_path: Path) -> None:
    node = client_for(tmp_path / "a", allowed_hosts=["*.example.org"], http_host="192.0.2.10")
    assert node.get("/healthz", headers={"Host": "mammoseg.example.org"}).status_code == 200
    assert node.get("/healthz", headers={"Host": "192.0.2.10:8080"}).status_code == 200
    assert_problem(node.get("/healthz", headers={"Host": "example.org.attacker.test"}), 400)
    assert_problem(node.get("/healthz", headers={"Host": "localhost"}), 400)
    anything = client_for(tmp_path / "b", allowed_hosts=["*"])
    assert anything.get("/healthz", headers={"Host": "whatever.test"}).status_code == 200


# -- slow body ------------------------------------------------------------
IDLE_S = 2.0


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Any]]:
    """The app under uvicorn as serve configures it (server_config), on 127.0.0.1."""
    tmp = tmp_path_factory.mktemp("slow-body")
    settings = settings_for(
        tmp, max_upload_mb=8, http_body_idle_timeout_s=IDLE_S, http_header_timeout_s=5
    )
    state = app_state(settings)
    port = free_port()
    server = uvicorn.Server(
        server_config(create_app(state), settings, port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout_s=20)
    yield port, state
    server.should_exit = True
    thread.join(timeout=10)


def temporary_fds() -> dict[int, tuple[str, int]]:
    """This process's open descriptors on deleted or temporary files: fd -> (target, size)."""
    found = {}
    temp = tempfile.gettempdir()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
            size = os.stat(f"/proc/self/fd/{name}").st_size
        except OSError:
            continue
        if target.endswith("(deleted)") or target.startswith(temp):
            found[int(name)] = (target, size)
    return found


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    sock.settimeout(60)
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(65536)
        if not part:
            break
        data += part
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        part = sock.recv(65536)
        if not part:
            break
        body += part
    return int(lines[0].split()[1]), headers, body


def test_a_slow_body_gets_408_and_its_partial_upload_is_not_kept(
    live: tuple[int, Any],
) -> None:
    import json

    port, state = live
    boundary = "slowb0undary"
    sent_file = 3 << 20  # past Starlette's 1 MiB in-memory spool: the part goes to a file
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="m.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode() + bytes(sent_file)
    head = (
        b"POST /api/v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: Bearer {VIEWER}\r\n".encode()
        + f"Content-Type: multipart/form-data; boundary={boundary}\r\n".encode()
        + f"Content-Length: {len(part) + (2 << 20)}\r\n\r\n".encode()
    )
    before = temporary_fds()
    jobs_before = state.store.reads.counts()
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        sock.sendall(head + part)  # then nothing: the client stalls with 2 MB still owed
        spooled = 0
        deadline = time.monotonic() + IDLE_S * 0.9
        while time.monotonic() < deadline and not spooled:
            new = {fd: v for fd, v in temporary_fds().items() if fd not in before}
            spooled = max((size for _, size in new.values()), default=0)
            time.sleep(0.05)
        status, headers, body = read_answer(sock)
    finally:
        sock.close()
    problem = json.loads(body)
    # The server closes the parser's files before it answers; allow its thread a moment.
    settle = time.monotonic() + 5
    while True:
        leftover = [v for fd, v in temporary_fds().items() if fd not in before]
        if not leftover or time.monotonic() > settle:
            break
        time.sleep(0.05)
    print(
        f"\nslow multipart body (3 MB sent of 5 MB, then a stall; idle timeout {IDLE_S} s): "
        f"{status} {problem.get('detail')!r}; partial upload seen spooled to a temporary file "
        f"during the stall: {spooled} bytes; temporary files left open afterwards: {leftover}"
    )
    assert status == 408 and headers["content-type"] == "application/problem+json"
    assert problem["status"] == 408 and headers.get("connection") == "close"
    assert leftover == []
    assert state.store.reads.counts() == jobs_before  # no job
    data_dir = state.settings.data_dir
    assert not any((data_dir / "spool").rglob("*")) and not any((data_dir / "outbox").rglob("*"))
