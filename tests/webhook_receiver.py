"""A webhook receiver on 127.0.0.1 that records each POST, and the receiver's signature check.

Shared by the webhook tests and the exam tests (``exam.complete``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SECRET = "webhook-secret-0123456789abcdef"


@dataclass
class Received:
    at: float
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A webhook receiver: answers ``statuses`` in turn (the last one after that)."""

    statuses: list[int]
    delay_s: float = 0.0
    calls: list[Received] = field(default_factory=list)
    url: str = ""

    def answer(self) -> int:
        n = len(self.calls)
        return self.statuses[min(n - 1, len(self.statuses) - 1)]


@contextmanager
def receiver(statuses: list[int], *, delay_s: float = 0.0) -> Iterator[Receiver]:
    state = Receiver(statuses, delay_s)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(min(length, 1 << 20))
            with lock:
                state.calls.append(Received(time.monotonic(), dict(self.headers), body))
                status = state.answer()
            time.sleep(state.delay_s)
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def verified(call: Received) -> dict[str, object]:
    """The receiver's side: check the signature of ``timestamp.body``, then parse."""
    timestamp = call.headers["X-Mammoseg-Timestamp"]
    expected = hmac.new(
        SECRET.encode(), timestamp.encode() + b"." + call.body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(call.headers["X-Mammoseg-Signature"], f"sha256={expected}")
    assert abs(time.time() - int(timestamp)) < 300  # a receiver's replay window
    body: dict[str, object] = json.loads(call.body)
    return body
