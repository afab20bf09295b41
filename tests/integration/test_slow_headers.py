"""Slow request heads (Slowloris) against ``mammoseg serve`` as a process on 127.0.0.1.

200 connections each send half a request line and stall, 10 more trickle a
header byte every 0.25 s, and 5 get an early answer (``POST /logout`` is
answered without its body being read) and then trickle that body on. Meanwhile
a normal ``GET /readyz`` is answered; then every one of the 215 is closed by the
node's head timeout (``http_header_timeout_s``, 1 s here; uvicorn alone has
none). Printed: how many were closed, how many were still open when /readyz
answered, the seconds until the last was closed, and the node's RSS (sampled
every 20 ms). None asserts a time.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from service.testkit.launch import NodeProcess, running_node
from tests.tiny_model import write_tiny_model

pytestmark = pytest.mark.slow

STALLED = 200
TRICKLING = 10
DRAINING = 5
HEAD_TIMEOUT_S = 1.0
RSS_LIMIT_MB = 250


class RssSampler:
    def __init__(self, node: NodeProcess) -> None:
        self.node = node
        self.baseline = node.status_kb("VmRSS") / 1024
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.node.status_kb("VmRSS") / 1024)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def closed_by_peer(sock: socket.socket) -> bool:
    """Whether the server has closed the connection (EOF or reset), without blocking."""
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(4096) == b""
    except OSError:
        return True


def readyz(node: NodeProcess) -> tuple[int, bool]:
    with urllib.request.urlopen(node.url + "/readyz", timeout=30) as resp:  # noqa: S310
        return resp.status, bool(json.loads(resp.read())["ready"])


def test_slow_headers_are_closed_and_readyz_still_answers(tmp_path: Path) -> None:
    model = write_tiny_model(tmp_path / "tiny.onnx", level=0.6)
    env = {"MAMMOSEG_HTTP_HEADER_TIMEOUT_S": str(HEAD_TIMEOUT_S)}
    with running_node(tmp_path / "node", args=["--model-path", str(model)], env=env) as node:
        with RssSampler(node) as rss:
            started = time.monotonic()
            stalled = []
            for _ in range(STALLED):
                sock = socket.create_connection(("127.0.0.1", node.http_port))
                sock.sendall(b"GET /readyz HT")  # half a request line, then nothing
                stalled.append(sock)
            trickling = []
            for _ in range(TRICKLING):
                sock = socket.create_connection(("127.0.0.1", node.http_port))
                sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                trickling.append(sock)
            draining = []
            for _ in range(DRAINING):
                sock = socket.create_connection(("127.0.0.1", node.http_port))
                sock.sendall(
                    b"POST /logout HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n"
                )
                answer = sock.recv(65536)  # 303, while the body is still owed
                assert answer.startswith(b"HTTP/1.1 303"), answer[:40]
                draining.append(sock)
            status, ready = readyz(node)  # a normal request, meanwhile
            everyone = stalled + trickling + draining
            open_then = sum(not closed_by_peer(s) for s in everyone)

            closed_at: dict[int, float] = {}
            slow = list(enumerate(trickling + draining, start=STALLED))
            deadline = time.monotonic() + 60  # only so that a broken node cannot hang the test
            next_byte = time.monotonic()
            while len(closed_at) < len(everyone) and time.monotonic() < deadline:
                if time.monotonic() >= next_byte:  # each trickler sends one more byte
                    next_byte += 0.25
                    for i, sock in slow:
                        if i not in closed_at:
                            try:
                                sock.send(b"x")
                            except OSError:
                                closed_at[i] = time.monotonic() - started
                for i, sock in enumerate(everyone):
                    if i not in closed_at and closed_by_peer(sock):
                        closed_at[i] = time.monotonic() - started
                time.sleep(0.02)
            after_status, _ = readyz(node)
        for sock in everyone:
            sock.close()
        log = node.log_text()
    closed_stalled = sum(1 for i in closed_at if i < STALLED)
    closed_trickling = sum(1 for i in closed_at if STALLED <= i < STALLED + TRICKLING)
    closed_draining = len(closed_at) - closed_stalled - closed_trickling
    print(
        f"\n{STALLED} stalled + {TRICKLING} trickling request heads + {DRAINING} trickled bodies "
        f"(http_header_timeout_s {HEAD_TIMEOUT_S:g}): /readyz answered {status} "
        f"(ready {ready}) with {open_then} of {len(everyone)} still open; closed by the node: "
        f"{closed_stalled} of {STALLED} stalled, {closed_trickling} of {TRICKLING} trickling, "
        f"{closed_draining} of {DRAINING} trickling a body after an early answer, "
        f"the last {max(closed_at.values(), default=float('nan')):.1f} s after the first opened; "
        f"/readyz afterwards {after_status}; node RSS {rss.baseline:.0f} -> peak "
        f"{rss.peak:.0f} MB (growth {rss.peak - rss.baseline:.1f} MB)"
    )
    assert status == 200 and after_status == 200
    assert closed_stalled == STALLED and closed_trickling == TRICKLING
    assert closed_draining == DRAINING
    assert rss.peak - rss.baseline < RSS_LIMIT_MB
    assert "Traceback" not in log
