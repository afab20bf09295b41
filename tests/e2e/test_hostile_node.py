"""Hostile input against ``mammoseg serve`` as a process, its RSS sampled (issue 12).

One node, the attacks of "bounded before trusted" and "timeouts" in turn: a
deflate bomb, JPEG 2000 and JPEG-LS codestreams claiming 30000 x 30000 inside
512 x 512 datasets, an RLE segment expanding 64:1, a 400 MB PDU header with
its body streamed, 20 idle sockets reopened, a chunked upload past the limit,
a 2 GB multipart to /login and 500 slow-body HTTP connections. After each,
the node answers C-ECHO and accepts a normal C-STORE; the figures are printed
at the end. None asserts a time; the node's RSS growth must stay under 250 MB.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.sop_class import DigitalMammographyXRayImageStorageForPresentation, Verification

from dicom_node.scp import TRANSFER_SYNTAXES
from dicom_node.status import Status
from service.testkit.launch import NodeProcess, start_node
from service.testkit.processes import stop_process
from service.testkit.synthetic import synthetic_mammogram, write
from tests.e2e.peers import wait_until
from tests.e2e.reliability import all_jobs, rss_mb
from tests.hostile import deflate_bomb, lying_jpeg2000, lying_jpeg_ls, rle_bomb
from tests.tiny_model import write_tiny_model

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RSS_LIMIT_MB = 250


class Sampler:
    """The node's RSS every 20 ms while an attack runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline = rss_mb(pid)
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except (AssertionError, OSError):
                return

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def still_serving(node: NodeProcess) -> None:
    ae = AE(ae_title="PACS")
    ae.add_requested_context(Verification)
    ae.add_requested_context(DigitalMammographyXRayImageStorageForPresentation)
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title=node.aet)
    assert assoc.is_established, "the node no longer accepts associations"
    try:
        assert assoc.send_c_echo().Status == Status.SUCCESS
        ds = synthetic_mammogram(rows=256, columns=208)
        assert assoc.send_c_store(ds).Status == Status.SUCCESS
    finally:
        assoc.release()


def send_file(node: NodeProcess, path: Path) -> str:
    """C-STORE a file's bytes as they are, in its own transfer syntax (one context per syntax)."""
    ae = AE(ae_title="PACS")
    for syntax in TRANSFER_SYNTAXES:
        ae.add_requested_context(DigitalMammographyXRayImageStorageForPresentation, [syntax])
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title=node.aet)
        assert assoc.is_established
        try:
            status = assoc.send_c_store(path)
        finally:
            assoc.release()
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = False
    comment = status.get("ErrorComment", "")
    return f"0x{int(status.Status):04X}" + (f" ({comment})" if comment else "")


def http_attack(node: NodeProcess, head: bytes, chunk: bytes, total: int) -> int:
    sock = socket.create_connection(("127.0.0.1", node.http_port))
    try:
        sock.sendall(head)
        sock.setblocking(False)
        sent = 0
        try:
            while sent < total:
                sent += sock.send(chunk)
        except OSError:
            pass
        sock.setblocking(True)
        sock.settimeout(10)
        answer = sock.recv(4096)
    finally:
        sock.close()
    return int(answer.split()[1]) if answer else 0


def test_the_node_survives_every_attack(tmp_path: Path) -> None:
    node = start_node(
        tmp_path / "node",
        env={
            "MAMMOSEG_MODEL_PATH": str(write_tiny_model(tmp_path / "tiny.onnx")),
            "MAMMOSEG_MAX_UPLOAD_MB": "8",
        },
    )
    figures: list[str] = []
    inputs = tmp_path / "inputs"

    def run(name: str, attack: Callable[[], str]) -> None:
        with Sampler(node.proc.pid) as rss:
            outcome = attack()
        still_serving(node)
        growth = rss.peak - rss.baseline
        figures.append(f"{name}: {outcome}; node RSS {rss.baseline:.0f} -> peak {rss.peak:.0f} MB")
        assert growth < RSS_LIMIT_MB, figures[-1]

    def store(ds_or_bytes: object, name: str) -> Callable[[], str]:
        def attack() -> str:
            path = inputs / f"{name}.dcm"
            if isinstance(ds_or_bytes, bytes):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(ds_or_bytes)
            else:
                write(ds_or_bytes, path)  # type: ignore[arg-type]
            return f"C-STORE {send_file(node, path)}"

        return attack

    def pdu_400mb() -> str:
        sock = socket.create_connection(("127.0.0.1", node.dicom_port))
        sock.settimeout(10)
        sock.sendall(struct.pack(">BBL", 0x01, 0, 400 << 20))
        answer = sock.recv(10)
        sock.close()
        return f"answer {answer.hex()} (A-ABORT)"

    def idle_sockets() -> str:
        accepted = 0
        for _ in range(3):
            idle = [socket.create_connection(("127.0.0.1", node.dicom_port)) for _ in range(20)]
            still_serving(node)
            accepted += 1
            time.sleep(5)
            for sock in idle:
                sock.close()
        return f"{accepted} of 3 real associations accepted while 20 idle sockets were open"

    def chunked_upload() -> str:
        status = http_attack(
            node,
            b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n",
            b"10000\r\n" + b"x" * 0x10000 + b"\r\n",
            100 << 20,
        )
        return f"HTTP {status}"

    def multipart_2gb() -> str:
        status = http_attack(
            node,
            b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n"
            + f"Content-Length: {2 << 30}\r\n\r\n".encode(),
            bytes(64 << 10),
            2 << 30,
        )
        return f"HTTP {status}"

    def slow_bodies() -> str:
        head = (
            b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 1000\r\n\r\ntoken="
        )
        socks = []
        for _ in range(500):
            sock = socket.create_connection(("127.0.0.1", node.http_port))
            sock.sendall(head)
            socks.append(sock)
        answers: dict[int, int] = {}
        for sock in socks:
            sock.settimeout(60)
            try:
                reply = sock.recv(4096)
                status = int(reply.split()[1]) if reply else 0
            except (OSError, IndexError, ValueError):
                status = 0
            answers[status] = answers.get(status, 0) + 1
            sock.close()
        return f"answers {answers} (0: closed without an answer)"

    try:
        run("deflate bomb, 600 MiB inflated", store(deflate_bomb(600 << 20), "bomb"))
        run("JPEG 2000 claiming 30000x30000 in 512x512", store(lying_jpeg2000(), "j2k"))
        run("JPEG-LS claiming 30000x30000 in 512x512", store(lying_jpeg_ls(), "jls"))
        run("RLE segment expanding 64:1", store(rle_bomb(64 << 20), "rle"))
        run("400 MB A-ASSOCIATE-RQ header", pdu_400mb)
        run("20 idle sockets reopened every 5 s", idle_sockets)
        run("chunked 100 MB to /login", chunked_upload)
        run("2 GB multipart to /login", multipart_2gb)
        run("500 slow-body HTTP connections", slow_bodies)
        wait_until(
            lambda: all(j["state"] in ("DONE", "FAILED", "SKIPPED") for j in all_jobs(node)),
            120,
            "every job to finish",
        )
        failed = [
            j["reason"].split("): ", 1)[-1][:100] for j in all_jobs(node) if j["state"] == "FAILED"
        ]
        figures.append(f"jobs FAILED with their reason: {failed}")
    finally:
        code = stop_process(node.proc)
        print("\n" + "\n".join(figures))
    assert code == 0
