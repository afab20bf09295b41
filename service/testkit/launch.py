"""``mammoseg serve`` as a child process on free loopback ports: the one node launcher.

:func:`start_node` starts ``python -m service serve`` with a data directory of its
own, the ports given (or free ones) and any further flags and environment, and
returns once ``/readyz`` answers 200 (or only ``/healthz``, for a node that is
meant not to be ready). :func:`running_node` is the same as a context manager
that stops the node (SIGTERM, then SIGKILL) when the block ends. The end-to-end
tests (tests/e2e) and ``mammoseg bench`` both start their nodes with it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.testkit.processes import (
    ProcessError,
    free_port,
    kb_field,
    process_tree,
    proportional_kb,
    stop_process,
)

DEFAULT_AET = "MAMMOSEG"
#: Environment every launched node gets unless the caller says otherwise: a nearly
#: full disk on a test or bench machine must not make the node refuse images.
DEFAULT_ENV = {"MAMMOSEG_MIN_FREE_MB": "0"}
#: The folder that holds the ``service`` package: the child imports this very copy.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class NodeProcess:
    """A running ``mammoseg serve`` child and how to reach it."""

    proc: subprocess.Popen[bytes]
    http_port: int
    dicom_port: int
    aet: str
    data_dir: Path
    log_path: Path
    #: Bearer token sent with every request (a viewer token, if the read API needs one).
    token: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def _request(self, path: str) -> urllib.request.Request:
        request = urllib.request.Request(self.url + path)  # noqa: S310
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        return request

    def get(self, path: str, *, timeout_s: float = 30.0) -> Any:
        """The JSON body of ``GET path``; raises urllib's HTTPError for an error status."""
        with urllib.request.urlopen(self._request(path), timeout=timeout_s) as resp:  # noqa: S310
            return json.loads(resp.read())

    def get_status(self, path: str, *, timeout_s: float = 30.0) -> tuple[int, Any]:
        """(HTTP status, JSON body), also for error statuses."""
        try:
            with urllib.request.urlopen(self._request(path), timeout=timeout_s) as resp:  # noqa: S310
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def jobs(self, *, newest: int | None = None) -> list[dict[str, Any]]:
        """Every job (or the ``newest`` few) as the REST API lists them."""
        items: list[dict[str, Any]] = []
        limit = min(500, newest) if newest else 500
        while True:
            page = self.get(f"/api/v1/jobs?limit={limit}&offset={len(items)}")["items"]
            items.extend(page)
            if len(page) < limit or (newest and len(items) >= newest):
                return items

    def status_kb(self, field_name: str) -> int:
        """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM), summed over the node's
        processes: serve and its worker processes (``worker_processes``)."""
        own = kb_field(f"/proc/{self.pid}/status", field_name)
        if own is None:
            raise ProcessError(f"/proc/{self.pid}/status has no {field_name}")
        children = process_tree(self.pid)[1:]  # one exited meanwhile counts 0
        return own + sum(kb_field(f"/proc/{c}/status", field_name) or 0 for c in children)

    def pss_kb(self) -> int:
        """The PSS of serve and its worker processes (kB), shared pages counted once."""
        return proportional_kb(process_tree(self.pid))

    def reset_peak(self) -> bool:
        """Start VmHWM afresh in each of the node's processes (``/proc/PID/clear_refs``,
        value 5, Linux 4.0+), so a later VmHWM is the peak since now; False if refused."""
        done = True
        for pid in process_tree(self.pid):
            try:
                Path(f"/proc/{pid}/clear_refs").write_text("5")
            except OSError:
                done = False
        return done

    def tensorflow_mapped(self) -> list[str]:
        """Shared objects of TensorFlow in the node's processes' memory (empty: never loaded)."""
        found: set[str] = set()
        for pid in process_tree(self.pid):
            try:
                maps = Path(f"/proc/{pid}/maps").read_text()
            except OSError:
                continue
            found |= {line.split()[-1] for line in maps.splitlines() if "tensorflow" in line}
        return sorted(found)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout_s``; the exit status."""
        return stop_process(self.proc, timeout_s)


def start_node(
    work: Path,
    *,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    dicom_port: int | None = None,
    http_port: int | None = None,
    aet: str = DEFAULT_AET,
    token: str | None = None,
    ready_timeout_s: float = 60,
    wait_ready: bool = True,
) -> NodeProcess:
    """Start ``mammoseg serve`` with its data under ``work``; return once it is ready.

    ``args`` are further ``serve`` flags (they come last, so they win); ``env`` is
    added to this process's environment and :data:`DEFAULT_ENV`. Ready means
    ``/readyz`` answers 200, or with ``wait_ready=False`` only ``/healthz`` (the
    node answers HTTP). Raises :class:`ProcessError`, with the tail of the node's
    log, if the node exits or is not ready within ``ready_timeout_s``; the node is
    stopped first. Every start writes a new log file in ``work`` (restarts keep
    the earlier ones).
    """
    work.mkdir(parents=True, exist_ok=True)
    dicom_port = dicom_port or free_port()
    http_port = http_port or free_port()
    data_dir = work / "node-data"
    log_path = work / f"node-{int(time.time() * 1000)}.log"
    command = [
        sys.executable,
        "-m",
        "service",
        "serve",
        "--data-dir",
        str(data_dir),
        "--dicom-port",
        str(dicom_port),
        "--http-port",
        str(http_port),
        "--ae-title",
        aet,
        *args,
    ]
    full_env = {**os.environ, **DEFAULT_ENV, **(env or {})}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=PACKAGE_ROOT
        )
    node = NodeProcess(proc, http_port, dicom_port, aet, data_dir, log_path, token)
    try:
        _wait_ready(node, "/readyz" if wait_ready else "/healthz", ready_timeout_s)
    except BaseException:
        stop_process(proc, timeout_s=10)
        raise
    return node


@contextmanager
def running_node(work: Path, *, stop_timeout_s: float = 20.0, **kw: Any) -> Iterator[NodeProcess]:
    """:func:`start_node` (same keywords) for the block; the node is stopped after it."""
    node = start_node(work, **kw)
    try:
        yield node
    finally:
        node.stop(stop_timeout_s)


def _wait_ready(node: NodeProcess, path: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if node.proc.poll() is not None:
            raise ProcessError(
                f"the node exited with status {node.proc.returncode}:\n{node.log_text()[-3000:]}"
            )
        try:
            status, _ = node.get_status(path, timeout_s=10)
        except (urllib.error.URLError, ConnectionError, OSError, ValueError):
            status = 0
        if status == 200:
            return
        if status in (401, 403):
            raise ProcessError(
                f"the node's read API wants a token (HTTP {status} on {path}): "
                "pass a viewer token (mammoseg bench --token)"
            )
        time.sleep(0.2)
    raise ProcessError(
        f"the node was not ready ({path}) within {timeout_s:.0f} s (log: {node.log_path}):\n"
        f"{node.log_text()[-3000:]}"
    )
