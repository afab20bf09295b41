"""The end-to-end parts of ``mammoseg bench``: the node and DCMTK as processes on loopback.

- **latency**: one full-size image at a time sent with DCMTK ``storescu`` to
  ``mammoseg serve``, whose results go to a DCMTK ``storescp``; each job's
  timings (``/api/v1/jobs``) split the time from launching storescu to the
  job's DONE into stages.
- **throughput**: many images over several concurrent associations; images
  per minute from the first byte sent to the last job DONE. The node's RSS is
  sampled meanwhile from ``/proc``; its memory map shows whether TensorFlow
  was ever loaded.
- **receive**: the same files stored by the node (workers parked by a long
  poll interval, so it only receives) and by ``storescp --fork``.
- **profile**: py-spy samples the node while it works through images.

Everything binds 127.0.0.1 on free ports and is stopped with SIGTERM. The node
is started by :mod:`service.testkit.launch`, the launcher the tests use too.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.testkit.launch import NodeProcess, running_node
from service.testkit.processes import (
    ProcessError,
    free_port,
    stop_process,
    wait_for_port,
)

NODE_AET = "MAMMOSEG"
DEST_AET = "BENCHDEST"
SENDER_AET = "BENCHSCU"
#: Job stages in pipeline order; ``other`` is what the timings do not account for.
STAGES = ("receive", "queue", "decode", "preprocess", "infer", "build", "send", "other")
TERMINAL_STATES = ("DONE", "FAILED", "SKIPPED")
#: Long enough that parked workers never look for work during a receive run.
PARKED_POLL_INTERVAL_S = 3600


class BenchError(RuntimeError):
    """A part of the bench could not run (the message says why and what to do)."""


@dataclass(frozen=True)
class Dcmtk:
    storescu: str
    storescp: str
    #: The peers' environment: None is ours (DCMTK as installed: Debian's leaves Nagle's
    #: algorithm on, so each of its DIMSE messages can wait ~40 ms for a delayed ACK).
    env: dict[str, str] | None = None


def find_dcmtk(peers_nodelay: bool = False) -> Dcmtk:
    """DCMTK's storescu and storescp, or a :class:`BenchError` saying how to get them.

    ``peers_nodelay``: run them with ``TCP_NODELAY=1`` (DCMTK's switch for Nagle's
    algorithm), so that what the peers wait for their own delayed ACKs is not counted.
    """
    storescu, storescp = shutil.which("storescu"), shutil.which("storescp")
    if storescu is None or storescp is None:
        raise BenchError(
            "DCMTK is not installed (storescu/storescp not on PATH): "
            "apt-get install dcmtk, or skip with --sections model"
        )
    env = {**os.environ, "TCP_NODELAY": "1"} if peers_nodelay else None
    return Dcmtk(storescu=storescu, storescp=storescp, env=env)


@contextmanager
def storescp(tools: Dcmtk, folder: Path, *, aet: str = DEST_AET) -> Iterator[int]:
    """DCMTK storescp (one child per association, every transfer syntax); yields its port."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with (folder.parent / f"{folder.name}.log").open("wb") as log:
        proc = subprocess.Popen(
            [tools.storescp, "--fork", "-aet", aet, "-od", str(folder), "+xa", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=tools.env,
        )
        try:
            wait_for_port(port, proc, 20, "storescp")
            yield port
        finally:
            stop_process(proc, timeout_s=30)


def send(tools: Dcmtk, port: int, files: Sequence[Path], *, called: str) -> subprocess.Popen[bytes]:
    """Start storescu sending ``files`` over one association."""
    return subprocess.Popen(
        [tools.storescu, "-aet", SENDER_AET, "-aec", called, "127.0.0.1", str(port)]
        + [str(f) for f in files],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=tools.env,
    )


def split(items: Sequence[Path], parts: int) -> list[list[Path]]:
    """``items`` dealt round-robin into ``parts`` non-empty lists (fewer if too few items)."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    return [list(items[i::parts]) for i in range(min(parts, len(items)))]


def send_all(
    tools: Dcmtk, port: int, files: Sequence[Path], *, called: str, associations: int
) -> float:
    """Send over ``associations`` concurrent storescu processes; seconds until all are stored."""
    start = time.perf_counter()
    procs = [send(tools, port, chunk, called=called) for chunk in split(files, associations)]
    errors = []
    for proc in procs:
        _, err = proc.communicate(timeout=3600)
        if proc.returncode != 0:
            errors.append(err.decode(errors="replace").strip()[-300:])
    elapsed = time.perf_counter() - start
    if errors:
        raise BenchError(f"storescu failed: {errors[0]}")
    return elapsed


# --------------------------------------------------------------------------- the node


@contextmanager
def node_under_test(
    work: Path,
    *,
    destination: str | None,
    env: dict[str, str],
    model_path: Path | None,
    token: str | None,
    ready_timeout_s: float = 180,
    stop_timeout_s: float = 60,
) -> Iterator[NodeProcess]:
    """``mammoseg serve`` bound to 127.0.0.1 on free ports (the testkit's launcher), ready
    (``/readyz``) when yielded, stopped after the block."""
    args = ["--dicom-host", "127.0.0.1", "--http-host", "127.0.0.1"]
    if destination:
        args += ["--destination", destination]
    if model_path is not None:
        args += ["--model-path", str(model_path)]
    with running_node(
        work,
        args=args,
        env=env,
        aet=NODE_AET,
        token=token,
        ready_timeout_s=ready_timeout_s,
        stop_timeout_s=stop_timeout_s,
    ) as node:
        yield node


def wait_for_jobs(
    node: NodeProcess, uids: Sequence[str], *, timeout_s: float, interval_s: float = 0.25
) -> dict[str, dict[str, Any]]:
    """Poll the REST API until every instance's job is DONE; raise on FAILED or SKIPPED."""
    wanted = set(uids)
    deadline = time.monotonic() + timeout_s
    newest = len(wanted) + 10
    while True:
        jobs = {
            j["sop_instance_uid"]: j
            for j in node.jobs(newest=newest)
            if j["sop_instance_uid"] in wanted
        }
        finished = {uid: j for uid, j in jobs.items() if j["state"] in TERMINAL_STATES}
        bad = [j for j in finished.values() if j["state"] != "DONE"]
        if bad:
            raise BenchError(f"job {bad[0]['id']} ended {bad[0]['state']}: {bad[0]['reason']}")
        if len(finished) == len(wanted):
            return finished
        if time.monotonic() > deadline:
            raise BenchError(
                f"{len(wanted) - len(finished)} of {len(wanted)} jobs not DONE within "
                f"{timeout_s:.0f} s (log: {node.log_path})"
            )
        time.sleep(interval_s)


def stage_times(timings: dict[str, float], submitted_at: float) -> dict[str, float]:
    """Seconds per stage of one DONE job sent at ``submitted_at`` (wall clock, time.time()).

    receive: storescu launched -> job committed (association, transfer, fsync,
    commit); queue: committed -> claimed by a worker; decode ... build: the
    worker's own timings; send: C-STORE of the results; other: the rest of
    the time to DONE (hand-over to the sender, store updates).
    """
    received = timings["received_at"]
    total = timings["done_at"] - submitted_at
    stages = {
        "receive": received - submitted_at,
        "queue": timings.get("processing_at", received) - received,
        "decode": timings.get("decode_s", 0.0),
        "preprocess": timings.get("preprocess_s", 0.0),
        "infer": timings.get("infer_s", 0.0),
        "build": timings.get("postprocess_build_s", 0.0),
        "send": timings.get("send_s", 0.0),
    }
    stages["other"] = total - sum(stages.values())
    stages["total"] = total
    return stages


@dataclass
class RssSampler:
    """Samples a node's VmRSS, and the PSS of its processes, in a thread until stopped.

    Keeps the largest of each (kB): ``peak_kb`` (VmRSS summed over serve and its
    workers, shared pages in each) and ``peak_pss_kb`` (each shared page once).
    """

    node: NodeProcess
    interval_s: float = 0.1
    peak_kb: int = 0
    peak_pss_kb: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_kb = max(self.peak_kb, self.node.status_kb("VmRSS"))
            except (OSError, ProcessError):
                return
            self.peak_pss_kb = max(self.peak_pss_kb, self.node.pss_kb())
            self._stop.wait(self.interval_s)


# --------------------------------------------------------------------------- profile


def py_spy_path() -> str | None:
    """py-spy next to this interpreter (a venv) or on PATH."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.is_file() else shutil.which("py-spy")


@contextmanager
def py_spy(pid: int, out: Path, *, rate: int = 100) -> Iterator[None]:
    """Sample ``pid`` with py-spy (all threads, thread names) until the block ends."""
    binary = py_spy_path()
    if binary is None:
        raise BenchError("py-spy is not installed (pip install py-spy)")
    with (out.parent / "py-spy.log").open("wb") as log:
        proc = subprocess.Popen(
            [binary, "record", "--pid", str(pid), "--threads", "--rate", str(rate)]
            + ["--format", "raw", "--output", str(out), "--nonblocking"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            time.sleep(1.0)
            if proc.poll() is not None:
                raise BenchError(f"py-spy could not attach (see {out.parent / 'py-spy.log'})")
            yield
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py's package path)``, without the line."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    file = match.group("file")
    for marker in ("site-packages/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    else:
        parts = Path(file).parts
        for anchor in ("service", "dicom_node", "model_export"):
            if anchor in parts:
                file = "/".join(parts[parts.index(anchor) :])
                break
    return f"{match.group('func')} ({file})"


@dataclass(frozen=True)
class ProfileSummary:
    samples: int
    threads: dict[str, int]  # thread -> samples
    total: list[tuple[str, int]]  # function -> samples with it anywhere on the stack
    own: list[tuple[str, int]]  # function -> samples with it on top


def summarise_py_spy(raw: str, *, top: int = 15) -> ProfileSummary:
    """Aggregate py-spy ``--format raw`` output (``a;b;c COUNT`` lines, thread first)."""
    threads: Counter[str] = Counter()
    total: Counter[str] = Counter()
    own: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0]
        # Thread start-up frames are on every stack and say nothing.
        functions = [frame_name(f) for f in frames[1:] if "(threading.py" not in f]
        samples += count
        threads[_thread_kind(thread)] += count
        for name in set(functions):
            total[name] += count
        if functions:
            own[functions[-1]] += count
    return ProfileSummary(
        samples, dict(threads.most_common()), total.most_common(top), own.most_common(top)
    )


def _thread_kind(thread: str) -> str:
    """py-spy's thread label (``thread (123): worker-0``) as a kind: ``worker-N``."""
    name = thread.split("): ", 1)[1] if "): " in thread else thread
    return re.sub(r"\d+", "N", name.strip())
