"""Who holds a claim: one owner string per process, and whether that process still runs.

A claim's ``owner`` (``jobs.owner``) names the process that holds it:
``NAME#PID@HOST``, where NAME is the ``worker_id`` setting, PID the process id
and HOST the host name with its boot and PID namespace
(``myhost:5f2c9a1e:4026531836``), so that a pid is only ever compared with the
processes it can mean: not those of two containers that share a host name,
nor those after a reboot. Every process has
its own: ``mammoseg serve``, each of its worker processes and every
``mammoseg worker``, so that no process mistakes another's live claims for
its own (issue 12, finding 12: a ``mammoseg worker`` on SQLite took back the
claims of ``serve`` on the same host, because both were named after the host).

Whether a claim may be taken back (``JobQueue.recover``):

- :func:`stopped_here`: its process ran on this host and no longer does (the
  pid is gone). Certain, so no heartbeat needs to go stale first.
- :func:`left_by`: at start-up, also what this process's name left behind in
  an earlier life: an owner in the format of older versions (the bare name),
  the very owner this process has now (its pid was reused), or this name on
  another host or boot (a reboot, a container moved). So ``worker_id`` must
  name one node (``serve`` with its worker processes, or one ``mammoseg
  worker``) among those sharing a store, as it always had to.
- Anything else (another host, a pid that is alive) is judged by its heartbeat
  only (``stale_claim_s``).
"""

from __future__ import annotations

import functools
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_OWNER = re.compile(r"^(?P<name>.*)#(?P<pid>\d+)@(?P<host>[^#@]+)$")


@functools.cache
def this_host() -> str:
    """Where a pid means one process: the host name, its boot and the PID namespace."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:  # not Linux: the host name alone
        return socket.gethostname()
    return f"{socket.gethostname()}:{boot}:{namespace}"


@dataclass(frozen=True)
class Owner:
    """One process, as a claim names it."""

    name: str
    pid: int
    host: str

    def __str__(self) -> str:
        return f"{self.name}#{self.pid}@{self.host}"


def this_process(name: str, pid: int | None = None) -> Owner:
    """This process (or the process ``pid`` on this host) under the name ``worker_id``."""
    return Owner(name=name, pid=os.getpid() if pid is None else pid, host=this_host())


def parse(owner: str) -> Owner | None:
    """The owner a claim names; None for an owner in an older format (a bare name)."""
    match = _OWNER.match(owner)
    if match is None:
        return None
    return Owner(name=match["name"], pid=int(match["pid"]), host=match["host"])


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (a zombie still counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it runs
        return True
    return True


def stopped_here(owner: str) -> bool:
    """The claim's process ran on this host and is gone: its claims are left over."""
    held_by = parse(owner)
    return held_by is not None and held_by.host == this_host() and not pid_alive(held_by.pid)


def left_by(me: Owner) -> Callable[[str], bool]:
    """At start-up: claims left by a stopped process here, or by this name in an earlier life."""

    def left(owner: str) -> bool:
        held_by = parse(owner)
        if held_by is None:
            return owner == me.name  # written by an older version under this name
        if held_by == me:
            return True  # this very owner, before this process claimed anything: pid reused
        if held_by.host == me.host:
            return not pid_alive(held_by.pid)
        return held_by.name == me.name

    return left
