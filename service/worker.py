"""Worker threads: claim a job, process it, send its results, retry with backoff.

The worker loop is one of the three places with a broad ``except``: whatever
goes wrong with one job ends as FAILED with a reason, never a dead worker.
What kills the whole process (a decoder crash, the OOM killer) is counted by
the store when the claim is taken back, and quarantines the job after
``quarantine_after`` times (service/store/claims.py). While this process holds a
claim, :class:`Heartbeat` keeps it fresh in the store, so that the stale sweep
of another process never takes back work that is still going on.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from pydicom import dcmread

from dicom_node.commitment import (
    CommitmentReport,
    Reference,
    new_transaction_uid,
    request_commitment,
)
from dicom_node.scu import Destination, SendError, send_files
from service.audit_trail import AuditTrail
from service.inference import Segmenter
from service.pipeline import JobFailed, JobSkipped, PipelineOptions, process_instance
from service.segmentation import lesion_view
from service.store import Commitment, Job, JobState, JobStore
from service.store.owners import stopped_here

log = logging.getLogger(__name__)


def job_fields(job: Job, event: str) -> dict[str, object]:
    """The structured log fields of a job event (service/logs.py): identifiers only."""
    return {
        "event": event,
        "job_id": job.id,
        "sop_instance_uid": job.sop_instance_uid,
        "association_id": job.association_id,
    }


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    initial_s: float
    max_s: float
    give_up_s: float

    def delay(self, attempts: int) -> float:
        """Exponential backoff: initial, 2x initial, ... capped at max."""
        return float(min(self.max_s, self.initial_s * (2 ** max(0, attempts - 1))))


@dataclass(frozen=True, kw_only=True)
class CommitPolicy:
    """Storage Commitment (PS3.4 J) for destinations with ``commit``: settings commit_*."""

    timeout_s: float = 600.0
    attempts: int = 3
    wait_s: float = 2.0


class Heartbeat(threading.Thread):
    """Refreshes ``heartbeat_at`` of the jobs this process holds, every ``interval_s``.

    One thread for all the process's workers; :meth:`holding` brackets the
    time a job is ours (claimed until finished, or handed to the sender).
    """

    def __init__(
        self, store: JobStore, owner: str, interval_s: float, stop: threading.Event
    ) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.store = store
        self.owner = owner
        self.interval_s = interval_s
        self.stop_event = stop
        self._lock = threading.Lock()
        self._held: dict[int, int] = {}
        self.beats = 0

    def hold(self, job_id: int) -> None:
        with self._lock:
            self._held[job_id] = self._held.get(job_id, 0) + 1

    def release(self, job_id: int) -> None:
        with self._lock:
            left = self._held.get(job_id, 0) - 1
            if left > 0:
                self._held[job_id] = left
            else:
                self._held.pop(job_id, None)

    @contextmanager
    def holding(self, job_id: int) -> Iterator[None]:
        self.hold(job_id)
        try:
            yield
        finally:
            self.release(job_id)

    def held(self) -> list[int]:
        with self._lock:
            return sorted(self._held)

    def beat(self) -> int:
        """One refresh now; returns how many claims the store still credits to us."""
        alive = self.store.queue.heartbeat(self.held(), self.owner)
        self.beats += 1
        return alive

    def run(self) -> None:
        while not self.stop_event.wait(self.interval_s):
            try:
                self.beat()
            except Exception:  # boundary: a store hiccup must not stop the heartbeat
                log.exception("heartbeat: cannot refresh the claims; continuing")


def heartbeat_interval(stale_claim_s: float) -> float:
    """Often enough that a live claim never looks stale: a third of the limit, 1-30 s."""
    return max(1.0, min(30.0, stale_claim_s / 3))


@dataclass(frozen=True, kw_only=True)
class WorkerContext:
    store: JobStore
    segmenter: Segmenter
    options: PipelineOptions
    destinations: list[Destination]
    calling_ae: str
    send_timeout_s: float
    retry: RetryPolicy
    poll_interval_s: float
    worker_id: str = ""  # the claims' owner: this process (service/store/owners.py)
    stale_claim_s: float | None = None  # take back jobs that processes which stopped left
    heartbeat: Heartbeat | None = None
    audit: AuditTrail | None = None  # results sent: DICOM Instances Transferred messages
    commit: CommitPolicy = CommitPolicy()


@contextmanager
def held(ctx: WorkerContext, job_id: int) -> Iterator[None]:
    """The job is ours while inside: the heartbeat keeps its claim fresh."""
    if ctx.heartbeat is None:
        yield
        return
    with ctx.heartbeat.holding(job_id):
        yield


def job_options(ctx: WorkerContext, job: Job) -> PipelineOptions:
    """The pipeline options for one job: its result UIDs are keyed by the job (idempotent)."""
    provenance = ctx.options.provenance.for_result(job.result_key)
    return replace(ctx.options, provenance=provenance)


def run_job(ctx: WorkerContext, job: Job) -> bool:
    """Process one claimed (PROCESSING) job; True when its results wait in SENDING."""
    try:
        results = process_instance(Path(job.path), job.id, ctx.segmenter, job_options(ctx, job))
    except JobSkipped as exc:
        ctx.store.queue.update(job.id, state=JobState.SKIPPED, reason=str(exc))
        log.info(
            "job %d SKIPPED (%s): %s",
            job.id,
            job.sop_instance_uid,
            exc,
            extra=job_fields(job, "job_skipped"),
        )
        return False
    except JobFailed as exc:
        ctx.store.queue.update(job.id, state=JobState.FAILED, reason=str(exc))
        log.warning(
            "job %d FAILED (%s): %s",
            job.id,
            job.sop_instance_uid,
            exc,
            extra=job_fields(job, "job_failed"),
        )
        return False
    except Exception as exc:  # boundary: one bad image never stops the worker
        log.exception(
            "job %d FAILED unexpectedly (%s)",
            job.id,
            job.sop_instance_uid,
            extra=job_fields(job, "job_failed"),
        )
        ctx.store.queue.update(
            job.id,
            state=JobState.FAILED,
            reason=f"internal error while processing: {type(exc).__name__}: {exc}",
        )
        return False
    ctx.store.queue.update(
        job.id,
        state=JobState.SENDING,
        timings=results.timings,
        results={
            "uids": results.uids,
            "files": [str(p) for p in results.files],
            "overlay": str(results.overlay) if results.overlay else None,
            "lesion_pixels": results.lesion_pixels,
            # For the study view and the exam SR (service/exams.py): no second read of the SR.
            "lesions": [lesion_view(lesion) for lesion in results.segmentation.lesions],
            "references": results.references,
            # Named in the webhook bodies of this job (service/store/records.py).
            "model": {
                "name": ctx.options.provenance.model_name,
                "version": ctx.options.provenance.model_version,
            },
        },
    )
    log.info(
        "job %d processed (%s): %d lesion pixels",
        job.id,
        job.sop_instance_uid,
        results.lesion_pixels,
        extra=job_fields(job, "job_processed"),
    )
    return True


def unreadable_results(files: list[Path]) -> str | None:
    """Why the outbox files cannot be sent as they are (None: all read as DICOM).

    A permission problem is left to the send (an OSError: retried, an admin
    may fix it); a file that is not DICOM never will be, so it fails the job.
    """
    missing = [p for p in files if not p.is_file()]
    if missing:
        return f"result files missing from the outbox: {len(missing)}"
    for path in files:
        try:
            dcmread(path, stop_before_pixels=True)
        except OSError:
            continue
        except Exception as exc:  # noqa: BLE001 - whatever pydicom raises, the file is bad
            return f"result file {path.name} in the outbox is unreadable: {type(exc).__name__}"
    return None


def deliver(ctx: WorkerContext, job: Job) -> None:
    """Send the job's results; whatever happens, the job leaves SENDING.

    Any error that :func:`_deliver` does not expect ends the job FAILED with
    the reason (an admin can retry it), instead of leaving it SENDING for good.
    """
    with held(ctx, job.id):
        try:
            _deliver(ctx, job)
        except Exception as exc:  # boundary: one job's results never stop the sender
            log.exception(
                "job %d FAILED while sending (%s)",
                job.id,
                job.sop_instance_uid,
                extra=job_fields(job, "job_failed"),
            )
            ctx.store.queue.update(
                job.id,
                state=JobState.FAILED,
                reason=f"internal error while sending: {type(exc).__name__}: {exc}",
            )


def record_report(store: JobStore, report: CommitmentReport) -> Commitment | None:
    """Store a storage commitment report, from whichever association it came on.

    None: no request of ours has its Transaction UID (logged by the caller).
    """
    return store.commitments.record(
        report.transaction_uid,
        failed=len(report.failed),
        reason="" if report.all_committed else report.failure_summary(),
    )


def references_of(job: Job) -> list[Reference]:
    """The instances a commitment request names: the job's result files (headers only)."""
    refs: list[Reference] = []
    for path in job.results.get("files", []):
        ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
        refs.append(Reference(str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
    return refs


def _commitment_step(
    ctx: WorkerContext, job: Job, destination: Destination, rows: list[Commitment], now: float
) -> tuple[str, str]:
    """What to do about one delivered destination's commitment: (action, why).

    ``done`` (committed), ``wait`` (a request is out, not timed out), ``request``
    (none yet, or the last timed out: N-ACTION again), ``resend`` (it reported
    failures: the instances again, then a request), ``fail`` (``why`` says it).
    """
    if any(r.outcome == "committed" for r in rows):
        return "done", ""
    if not rows:
        return "request", ""
    last = rows[-1]
    if last.outcome == "pending" and now - last.requested_at < ctx.commit.timeout_s:
        return "wait", ""
    if len(rows) >= ctx.commit.attempts:
        if last.outcome == "failed":
            return "fail", (
                f"storage commitment refused by {destination}: {last.reason} "
                f"(after {len(rows)} requests)"
            )
        return "fail", (
            f"storage commitment of {last.instances} instances not confirmed by {destination} "
            f"within {ctx.commit.timeout_s:g} s (after {len(rows)} requests)"
        )
    return ("resend", "") if last.outcome == "failed" else ("request", "")


def _request(ctx: WorkerContext, job: Job, destination: Destination) -> None:
    """One N-ACTION for the job's results; the row is written first (a quick report finds it)."""
    refs = references_of(job)
    transaction_uid = new_transaction_uid()
    ctx.store.commitments.requested(
        job.id,
        generation=job.generation,
        destination=destination.name,
        transaction_uid=transaction_uid,
        instances=len(refs),
    )
    try:
        report = request_commitment(
            destination,
            refs,
            transaction_uid,
            calling_ae=ctx.calling_ae,
            timeout_s=ctx.send_timeout_s,
            wait_s=ctx.commit.wait_s,
            answered=lambda: ctx.store.commitments.answered(transaction_uid),
        )
    except BaseException:
        ctx.store.commitments.withdraw(transaction_uid)
        raise
    if report is not None:
        record_report(ctx.store, report)


def _deliver(ctx: WorkerContext, job: Job) -> None:
    """Send the job's result files to every destination not yet served (job is SENDING).

    A destination with ``commit`` is served when it has also committed them
    (PS3.4 J): until then the job waits COMMIT_PENDING, and the sender comes
    back when a failure is reported or the request timed out.
    """
    files = [Path(p) for p in job.results.get("files", [])]
    problem = unreadable_results(files)
    if problem:
        ctx.store.queue.update(job.id, state=JobState.FAILED, reason=problem)
        return
    delivered = list(job.delivered)
    start = time.perf_counter()
    errors: list[str] = []
    fatal: list[str] = []
    committing: list[str] = []
    rows = ctx.store.commitments.for_job(job.id, job.generation) if ctx.destinations else []
    for destination in ctx.destinations:
        step = "request"
        if destination.commit:
            committing.append(destination.name)
            if destination.name in delivered:
                mine = [r for r in rows if r.destination == destination.name]
                step, why = _commitment_step(ctx, job, destination, mine, time.time())
                if step == "fail":
                    fatal.append(why)
                    continue
                if step == "resend":
                    delivered.remove(destination.name)
        if destination.name not in delivered:
            try:
                send_files(
                    destination, files, calling_ae=ctx.calling_ae, timeout_s=ctx.send_timeout_s
                )
            except (SendError, OSError, RuntimeError) as exc:
                errors.append(f"{destination}: {exc}")
                if ctx.audit is not None:
                    ctx.audit.results_sent(job, destination, error=str(exc))
                continue
            if ctx.audit is not None:
                ctx.audit.results_sent(job, destination)
            delivered.append(destination.name)
            ctx.store.queue.update(job.id, delivered=delivered)
            step = "request"
        if destination.commit and step in ("request", "resend"):
            try:
                _request(ctx, job, destination)
            except (SendError, OSError, RuntimeError) as exc:
                errors.append(f"{destination}: {exc}")
    now = time.time()
    if fatal:
        reason = "; ".join(fatal + errors)
        ctx.store.queue.update(job.id, state=JobState.FAILED, delivered=delivered, reason=reason)
        log.warning(
            "job %d FAILED (%s): %s",
            job.id,
            job.sop_instance_uid,
            reason,
            extra=job_fields(job, "job_commitment_failed"),
        )
        return
    if not errors:
        ctx.store.queue.update(job.id, timings={"send_s": time.perf_counter() - start})
        if committing:
            # Due when the oldest unanswered request times out (not later for a
            # destination that was already waiting when another one was resent).
            latest = {
                r.destination: r for r in ctx.store.commitments.for_job(job.id, job.generation)
            }
            asked = [r.requested_at for r in latest.values() if r.outcome == "pending"]
            state = ctx.store.commitments.settle(
                job.id,
                generation=job.generation,
                destinations=committing,
                due_at=min(asked, default=now) + ctx.commit.timeout_s,
            )
            if state is JobState.COMMIT_PENDING:
                log.info(
                    "job %d COMMIT_PENDING (%s): waiting for storage commitment",
                    job.id,
                    job.sop_instance_uid,
                    extra=job_fields(job, "job_commit_pending"),
                )
                return
        else:
            ctx.store.queue.update(
                job.id,
                state=JobState.DONE,
                reason="",
                clear_next_attempt=True,
                timings={"done_at": now},
            )
        log.info(
            "job %d DONE (%s) sent to %d destinations",
            job.id,
            job.sop_instance_uid,
            len(delivered),
            extra=job_fields(job, "job_done"),
        )
        return
    attempts = job.attempts + 1
    first_failure = job.first_send_failure_at or now
    reason = "; ".join(errors)
    if now - first_failure >= ctx.retry.give_up_s:
        ctx.store.queue.update(
            job.id,
            state=JobState.FAILED,
            attempts=attempts,
            reason=f"gave up sending after {attempts} attempts: {reason}",
        )
        log.warning(
            "job %d FAILED: gave up sending after %d attempts",
            job.id,
            attempts,
            extra=job_fields(job, "job_gave_up"),
        )
        return
    next_at = now + ctx.retry.delay(attempts)
    ctx.store.queue.update(
        job.id,
        state=JobState.RETRYING,
        attempts=attempts,
        reason=reason,
        next_attempt_at=next_at,
        first_send_failure_at=first_failure,
    )
    log.warning(
        "job %d RETRYING in %.1f s (attempt %d): %s",
        job.id,
        next_at - now,
        attempts,
        reason,
        extra=job_fields(job, "job_retrying"),
    )


class Worker(threading.Thread):
    """Processes new jobs and hands their results to the sender through ``outbox``.

    Sending runs in its own thread, so the next image is decoded and inferred
    while the previous results travel to the PACS.
    """

    def __init__(
        self, ctx: WorkerContext, stop: threading.Event, outbox: queue.Queue[int], name: str
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.ctx = ctx
        self.stop_event = stop
        self.outbox = outbox

    def run(self) -> None:
        store = self.ctx.store
        while not self.stop_event.is_set():
            try:
                job = store.queue.claim(
                    [JobState.RECEIVED], JobState.PROCESSING, owner=self.ctx.worker_id
                )
                if job is not None:
                    with held(self.ctx, job.id):
                        if run_job(self.ctx, job):
                            # Still ours until the sender is done with it.
                            if self.ctx.heartbeat is not None:
                                self.ctx.heartbeat.hold(job.id)
                            self.outbox.put(job.id)
                    continue
            except Exception:  # boundary: keep the worker alive (store hiccup, disk full)
                log.exception("worker %s: unexpected error; continuing", self.name)
            self.stop_event.wait(self.ctx.poll_interval_s)


class Sender(threading.Thread):
    """Delivers fresh results from ``outbox`` first, then due RETRYING jobs.

    Jobs handed over in memory are SENDING in the store; after a crash the
    store's recovery turns them into RETRYING, which this thread claims.
    """

    def __init__(
        self,
        ctx: WorkerContext,
        stop: threading.Event,
        outbox: queue.Queue[int],
        name: str = "sender",
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.ctx = ctx
        self.stop_event = stop
        self.outbox = outbox

    def run(self) -> None:
        store = self.ctx.store
        next_sweep = time.monotonic()
        while not self.stop_event.is_set():
            try:
                if self.ctx.stale_claim_s and time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + min(60.0, self.ctx.stale_claim_s / 2)
                    # Stale heartbeats, and claims of processes of this host that are gone.
                    taken = store.queue.recover(
                        stale_after_s=self.ctx.stale_claim_s, stopped=stopped_here
                    )
                    if any(taken.values()):
                        log.warning("took back jobs left by a stopped process: %s", taken)
                try:
                    job_id = self.outbox.get(timeout=self.ctx.poll_interval_s)
                except queue.Empty:
                    pass
                else:
                    try:
                        fresh = store.reads.get(job_id)
                        # Not if the stale sweep gave it to another process meanwhile.
                        if (
                            fresh is not None
                            and fresh.state is JobState.SENDING
                            and fresh.owner == self.ctx.worker_id
                        ):
                            deliver(self.ctx, fresh)
                    finally:
                        if self.ctx.heartbeat is not None:
                            self.ctx.heartbeat.release(job_id)
                # One due retry per turn, so retries never starve under load; a
                # COMMIT_PENDING job is due when its destination reported a failure
                # or its request timed out.
                job = store.queue.claim(
                    [JobState.RETRYING, JobState.COMMIT_PENDING],
                    JobState.SENDING,
                    owner=self.ctx.worker_id,
                )
                if job is not None:
                    deliver(self.ctx, job)
            except Exception:  # boundary: keep the sender alive
                log.exception("sender: unexpected error; continuing")
