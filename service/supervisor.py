"""The worker processes of ``mammoseg serve``: started, watched, restarted, crashes counted.

Untrusted pixel data is decoded by the workers (service/pipeline.py), so with
``worker_processes`` at 1 or more they run in child processes of their own
(multiprocessing, spawn: a fresh interpreter, nothing inherited but the
settings), while ``serve`` keeps the SCP, the HTTP server and the retention
sweep. A decoder that segfaults, aborts or is killed for its memory takes down
its child only; the SCP keeps answering (issue 12, "Quarantine").

:class:`WorkerProcesses` watches the children. When one dies it

1. takes back the claims the child held (``store.queue.recover(owner=...)``):
   a job in PROCESSING is a crashed attempt, and after ``quarantine_after`` of
   them it is FAILED "quarantined after N crashed attempts"; a job in SENDING
   goes to RETRYING. A child that exited 0 was told to stop (SIGTERM from
   someone else: systemd signals the whole control group) and handed its work
   back; what it still held goes back without a crash;
2. logs the pid, the exit status and the ids and UIDs of those jobs (never
   patient data);
3. starts a new child after a backoff: 1 s, doubled after each quick death up
   to 60 s, and 1 s again once a child has run for a minute.

Each child's claims carry its own owner (``NAME#PID@HOST``,
service/store/owners.py), so the parent takes back exactly what the dead child
held, and no child, restarted or not, touches another's live claims. On stop
each child gets SIGTERM, finishes its current job and hands its claims back
(not as a crash); one that does not stop in time is killed and its claims are
handed back for it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import connection
from multiprocessing.process import BaseProcess
from typing import Any

from service.settings import Settings
from service.store import JobStore
from service.store.owners import this_process

log = logging.getLogger(__name__)

RESTART_INITIAL_S = 1.0
RESTART_MAX_S = 60.0
#: A child that ran this long before it died starts the backoff afresh.
STABLE_S = 60.0
#: Beyond the children's own stop timeout, how long stop() waits before SIGKILL.
STOP_GRACE_S = 10.0

#: The child's body: ``target(settings, ready, parent_pid)``; it sets ``ready`` once its
#: workers run, and returns after SIGTERM (service.node.run_worker_process).
ChildTarget = Callable[[Settings, Any, int], None]


@dataclass(frozen=True)
class WorkerHealth:
    """What /readyz and /metrics say about the workers."""

    mode: str  # "processes" (children of serve) or "threads" (in the serve process)
    expected: int
    alive: int  # running and, for a process, ready (its workers started)
    restarts: int  # children started again after one died, since serve started

    @property
    def ok(self) -> bool:
        return self.alive >= self.expected

    @property
    def detail(self) -> str:
        if self.mode == "threads":
            return f"{self.alive} of {self.expected} worker threads alive in this process"
        return f"{self.alive} of {self.expected} worker processes ready, {self.restarts} restarts"


def exit_status(exitcode: int | None) -> str:
    """A child's exit status in words: "exit code 1", "signal SIGABRT"."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


class _Slot:
    """One child's place: the process now in it and its restart bookkeeping."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: BaseProcess | None = None
        self.ready: Any = None  # a multiprocessing Event
        self.started_at = 0.0
        self.restart_at = 0.0
        self.quick_deaths = 0


class WorkerProcesses:
    """``count`` supervised child processes that each run ``target`` (the workers)."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        target: ChildTarget,
        *,
        count: int,
        restart_initial_s: float = RESTART_INITIAL_S,
        restart_max_s: float = RESTART_MAX_S,
        stable_s: float = STABLE_S,
    ) -> None:
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        self.settings = settings
        self.store = store
        self.target = target
        self.restart_initial_s = restart_initial_s
        self.restart_max_s = restart_max_s
        self.stable_s = stable_s
        self._context = multiprocessing.get_context("spawn")
        self._slots = [_Slot(i) for i in range(count)]
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._monitor = threading.Thread(target=self._watch, name="worker-processes", daemon=True)
        self.restarts = 0
        self.deaths: list[tuple[int, str]] = []  # (pid, exit status) of every child that died

    # -- the parent's view ------------------------------------------------------------

    def owner_of(self, pid: int) -> str:
        """The owner the child with this pid claims jobs as."""
        return str(this_process(self.settings.worker_id, pid))

    def pids(self) -> list[int]:
        with self._lock:
            return [s.process.pid for s in self._slots if s.process and s.process.pid]

    def health(self) -> WorkerHealth:
        with self._lock:
            alive = sum(
                1
                for s in self._slots
                if s.process is not None
                and s.process.is_alive()
                and s.ready is not None
                and s.ready.is_set()
            )
            return WorkerHealth("processes", len(self._slots), alive, self.restarts)

    def wait_ready(self, timeout_s: float) -> bool:
        """Whether every child has started its workers within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.health().ok:
                return True
            time.sleep(0.05)
        return self.health().ok

    # -- start and stop ---------------------------------------------------------------

    def start(self) -> None:
        with self._lock:
            for slot in self._slots:
                self._spawn(slot)
        self._monitor.start()

    def begin_stop(self) -> None:
        """No more restarts from now on (safe in a signal handler); :meth:`stop` follows."""
        self._stopping.set()

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM every child; each hands back its claims. Killed after the timeout."""
        self._stopping.set()
        if self._monitor.is_alive():
            self._monitor.join()
        with self._lock:
            running = [s.process for s in self._slots if s.process is not None]
        for process in running:
            if process.is_alive() and process.pid:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s + STOP_GRACE_S
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("worker process %d did not stop in time: killed", process.pid)
                process.kill()
                process.join(10)
            self._take_back(process, crashed=False)

    # -- the watch --------------------------------------------------------------------

    def _spawn(self, slot: _Slot) -> None:
        """Start a child in ``slot`` (lock held)."""
        ready = self._context.Event()
        process = self._context.Process(
            target=self.target,
            args=(self.settings, ready, os.getpid()),
            name=f"mammoseg-worker-{slot.index}",
            daemon=False,
        )
        process.start()
        slot.process, slot.ready, slot.started_at = process, ready, time.monotonic()
        log.info(
            "worker process %d started (pid %d)",
            slot.index,
            process.pid,
            extra={"event": "worker_process_started"},
        )

    def _watch(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                sentinels = [s.process.sentinel for s in self._slots if s.process is not None]
            if sentinels:
                connection.wait(sentinels, timeout=0.2)
            else:
                self._stopping.wait(0.2)
            if self._stopping.is_set():
                return
            try:
                self._turn()
            except Exception:  # boundary: the watch must go on (a store hiccup)
                log.exception("worker processes: unexpected error while watching; continuing")

    def _turn(self) -> None:
        now = time.monotonic()
        for slot in self._slots:
            process = slot.process
            if process is not None and process.exitcode is not None:
                self._died(slot, process, now)
            with self._lock:
                if slot.process is None and now >= slot.restart_at and not self._stopping.is_set():
                    self._spawn(slot)
                    self.restarts += 1

    def _died(self, slot: _Slot, process: BaseProcess, now: float) -> None:
        process.join()  # reaped: its pid is gone from the host
        status = exit_status(process.exitcode)
        lived_s = now - slot.started_at
        slot.quick_deaths = 1 if lived_s >= self.stable_s else slot.quick_deaths + 1
        delay = min(self.restart_max_s, self.restart_initial_s * 2 ** (slot.quick_deaths - 1))
        # Exit code 0: it was told to stop (SIGTERM from someone) and handed its work back.
        crashed = process.exitcode != 0
        held, taken = self._take_back(process, crashed=crashed)
        with self._lock:
            slot.process, slot.ready, slot.restart_at = None, None, now + delay
            self.deaths.append((int(process.pid or 0), status))
        log.log(
            logging.ERROR if crashed else logging.WARNING,
            "worker process %d (pid %s) %s (%s) after %.1f s, holding jobs %s; "
            "taken back: %s; restart in %.0f s",
            slot.index,
            process.pid,
            "died" if crashed else "stopped",
            status,
            lived_s,
            [job.id for job in held],
            taken,
            delay,
            extra={"event": "worker_process_died"},
        )

    def _take_back(self, process: BaseProcess, *, crashed: bool) -> tuple[Sequence[Any], Any]:
        """Put the jobs a dead child held back; a PROCESSING one counts as a crash."""
        if not process.pid:
            return [], {}
        owner = self.owner_of(process.pid)
        try:
            held = self.store.queue.held_by(owner)
            if not held:
                return [], {}
            taken = self.store.queue.recover(owner=owner, crashed=crashed)
        except Exception:  # boundary: the stale sweep takes them back later
            log.exception("could not take back the jobs of worker process %d", process.pid)
            return [], {}
        for job in held:
            after = self.store.reads.get(job.id)
            log.warning(
                "job %d (%s) was %s in worker process %d: now %s%s, %d crashed attempts",
                job.id,
                job.sop_instance_uid,
                job.state.value,
                process.pid,
                after.state.value if after else "gone",
                f" ({after.reason})" if after and after.reason else "",
                after.crashes if after else job.crashes,
                extra={
                    "event": "job_crashed" if crashed else "job_handed_back",
                    "job_id": job.id,
                    "sop_instance_uid": job.sop_instance_uid,
                },
            )
        return held, taken


class InProcessWorkers:
    """The same health for workers that run as threads in this process (worker_processes 0)."""

    def __init__(self, threads: Sequence[threading.Thread]) -> None:
        self.threads = list(threads)

    def health(self) -> WorkerHealth:
        alive = sum(1 for t in self.threads if t.is_alive())
        return WorkerHealth("threads", len(self.threads), alive, 0)
