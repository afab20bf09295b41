"""Hostile HTTP bodies against the app under uvicorn on 127.0.0.1 (issue 12, finding 6).

Raw sockets, so that the framing is exactly what an attacker sends. Each test
prints how many body bytes the client got to send before the answer, the
answer, and the server's RSS growth; then the node still answers a normal
request. None asserts a time.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from service.app import create_app
from tests.conftest import free_port
from tests.hostile import RssSampler
from tests.http_node import VIEWER, app_state, mammogram_png, settings_for, wait_for

RSS_LIMIT_MB = 250
IDLE_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    tmp = tmp_path_factory.mktemp("hostile-http")
    app = create_app(
        app_state(settings_for(tmp, max_upload_mb=2)), body_idle_timeout_s=IDLE_TIMEOUT_S
    )
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, backlog=1024
    )
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, name="uvicorn", daemon=True)
    thread.start()
    wait_for(lambda: uv.started, timeout_s=20)
    yield port
    uv.should_exit = True
    thread.join(timeout=10)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    sock.settimeout(10.0)
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(65536)
        if not part:
            break
        data += part
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        part = sock.recv(65536)
        if not part:
            break
        body += part
    return status, headers, body


def attack(port: int, head: bytes, body_chunks: Iterator[bytes]) -> tuple[int, dict, dict, int]:
    """Send ``head``, then body chunks until the server answers or stops reading."""
    sock = socket.create_connection(("127.0.0.1", port))
    sent = 0
    try:
        sock.sendall(head)
        sock.setblocking(False)
        for chunk in body_chunks:
            try:
                sock.send(chunk)  # only what fits: the server may have stopped reading
                sent += len(chunk)
            except BlockingIOError:
                break
            except OSError:
                break
        sock.setblocking(True)
        status, headers, body = read_response(sock)
    finally:
        sock.close()
    return status, headers, json.loads(body or b"{}"), sent


def endless(chunk: bytes, total: int) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield chunk
        sent += len(chunk)


def chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def still_serving(port: int) -> None:
    png = mammogram_png()
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        sock.sendall(
            b"POST /api/v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + f"Authorization: Bearer {VIEWER}\r\nContent-Type: image/png\r\n".encode()
            + f"Content-Length: {len(png)}\r\nConnection: close\r\n\r\n".encode()
            + png
        )
        status, _, _ = read_response(sock)
    finally:
        sock.close()
    assert status == 200, f"a normal upload got {status}"


def test_content_length_with_chunked_is_refused_unread(server: int) -> None:
    head = (
        b"POST /api/v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: Bearer {VIEWER}\r\n".encode()
        + b"Content-Type: image/png\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    with RssSampler() as rss:
        status, headers, problem, sent = attack(
            server, head, endless(chunked(bytes(64 << 10)), 100 << 20)
        )
    print(
        f"\nContent-Length: 10 + chunked, 100 MB offered: {status} {problem.get('detail')!r}; "
        f"{sent} body bytes left the client (socket buffers) before the answer; "
        f"RSS growth {rss.growth_mb:.1f} MB"
    )
    # h11 may refuse the framing itself (400 text) before the app sees it; either way, 400.
    assert status == 400
    assert rss.growth_mb < RSS_LIMIT_MB
    still_serving(server)


def test_chunked_upload_past_the_limit_to_a_form_route(server: int) -> None:
    head = (
        b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    with RssSampler() as rss:
        status, headers, problem, sent = attack(
            server, head, endless(chunked(b"token=" + b"x" * (64 << 10)), 100 << 20)
        )
    print(
        f"\nchunked 100 MB to /login (limit 1 MB): {status} {problem.get('detail')!r}; "
        f"{sent} bytes left the client (socket buffers) before the answer; "
        f"RSS growth {rss.growth_mb:.1f} MB"
    )
    assert status == 413 and headers.get("content-type") == "application/problem+json"
    assert problem["status"] == 413 and "larger than 1 MB" in problem["detail"]
    assert rss.growth_mb < RSS_LIMIT_MB
    still_serving(server)


def test_chunked_upload_past_the_limit_to_segment(server: int) -> None:
    head = (
        b"POST /api/v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: Bearer {VIEWER}\r\n".encode()
        + b"Content-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    status, _, problem, sent = attack(server, head, endless(chunked(bytes(64 << 10)), 100 << 20))
    print(f"\nchunked 100 MB to /api/v1/segment: {status} {problem.get('detail')!r}; sent {sent}")
    assert status in (411, 413)
    still_serving(server)


def test_two_gb_multipart_to_login_is_refused_before_the_body(server: int) -> None:
    boundary = "b0undary"
    head = (
        b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Content-Type: multipart/form-data; boundary={boundary}\r\n".encode()
        + f"Content-Length: {2 << 30}\r\n\r\n".encode()
    )
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="token"; filename="t"\r\n\r\n'
    ).encode() + bytes(64 << 10)
    with RssSampler() as rss:
        status, _, problem, sent = attack(
            server, head, iter([part, *endless(bytes(64 << 10), 2 << 30)])
        )
    print(
        f"\n2 GB multipart to /login: {status} {problem.get('detail')!r}; "
        f"{sent} bytes left the client (socket buffers) before the answer; "
        f"RSS growth {rss.growth_mb:.1f} MB"
    )
    assert status == 413 and problem["status"] == 413
    assert rss.growth_mb < RSS_LIMIT_MB
    still_serving(server)


def test_500_slow_body_connections_get_408(server: int) -> None:
    head = (
        b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\ntoken="
    )
    socks: list[socket.socket] = []
    with RssSampler() as rss:
        for _ in range(500):
            sock = socket.create_connection(("127.0.0.1", server))
            sock.sendall(head)
            socks.append(sock)
        statuses: dict[int, int] = {}
        for sock in socks:
            try:
                status, _, _ = read_response(sock)
            except (OSError, IndexError, ValueError):
                status = 0
            statuses[status] = statuses.get(status, 0) + 1
    for sock in socks:
        sock.close()
    print(
        f"\n500 slow-body connections (idle timeout {IDLE_TIMEOUT_S} s): answers {statuses}; "
        f"RSS growth {rss.growth_mb:.1f} MB"
    )
    assert statuses.get(408, 0) == 500
    assert rss.growth_mb < RSS_LIMIT_MB
    still_serving(server)


def test_body_limit_unit(tmp_path: Path) -> None:
    """Small bodies pass; the Problem document is the API's."""
    from fastapi.testclient import TestClient

    client = TestClient(create_app(app_state(settings_for(tmp_path))))
    response = client.post("/login", data={"token": "nope"})
    assert response.status_code == 401
    response = client.post("/login", content=b"x" * (2 << 20))
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["x-content-type-options"] == "nosniff"
