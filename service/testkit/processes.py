"""Child processes on loopback: free ports, waiting for a listener, stopping with SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path


class ProcessError(RuntimeError):
    """A child process did not start, exited early or does not answer (the message says why)."""


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux /proc): serve and its worker processes."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        for children in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                todo.extend(int(child) for child in children.read_text().split())
            except OSError:  # the thread or the process is gone
                continue
    return tree


def kb_field(path: str, name: str) -> int | None:
    """A ``Name:   N kB`` line of a /proc file (``status``, ``smaps_rollup``), in kB.

    None when the file has no such line or cannot be read (the process is gone).
    """
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    return None


def proportional_kb(pids: list[int]) -> int:
    """Sum of the processes' PSS (kB, /proc/PID/smaps_rollup): each shared page counted once.

    VmRSS summed over serve and its worker counts the pages they share (the libraries'
    code, mapped in both) twice; PSS splits each shared page between its sharers, so the
    sum is what the processes take from the machine. Processes gone meanwhile count 0.
    """
    return sum(kb_field(f"/proc/{pid}/smaps_rollup", "Pss") or 0 for pid in pids)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float, what: str) -> None:
    """Return once ``port`` on 127.0.0.1 accepts a connection; :class:`ProcessError` if
    ``proc`` exits first or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ProcessError(f"{what} exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise ProcessError(f"{what} did not listen on port {port} within {timeout_s:.0f} s")


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> int:
    """SIGTERM, then SIGKILL if it has not stopped within ``timeout_s``; the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return int(proc.returncode)
