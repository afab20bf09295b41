"""Retention: the node deletes what it no longer needs, on a schedule (issue 12).

Two horizons, counted from the time a job finished (DONE, FAILED, SKIPPED):

- ``retention_days``: its spool file (the received image) and its outbox
  folder (the SEG, SC and SR) are deleted; the job row stays, marked
  ``purged_at``, so the dashboard and the API still tell what happened.
- ``retention_audit_days``: the job row, its events and notes, and the
  association audit rows started before then are deleted, and the audit
  trail's day files (service/audit_trail.py) of the days before then. The
  totals behind the Prometheus counters survive in the store's ``counters`` table.

0 means forever, for either; the audit horizon is never shorter than the
files' (service/settings.py). Optionally, ``retention_high_water_mb``: when
free disk on ``data_dir`` falls below it, the files of the longest-finished
jobs go first, whatever their age, until it is back above, so that C-STORE
(refused below ``min_free_mb``) keeps working at steady state.

Open jobs are never touched. A spool file is named by its SOP Instance UID,
so it is kept while another job of the same UID keeps its files, and left for
the next sweep when it was written again after the job finished, in the last
minutes (a receive of that UID may be committing its job right now). Counts
go to the log, ``/metrics`` and the dashboard; nothing about patients is logged.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

from service.audit_trail import AuditTrail, audit_folder, delete_old_files
from service.settings import Settings
from service.store import Job, JobStore

log = logging.getLogger(__name__)

DAY_S = 86400.0
#: A spool file written this recently may belong to a receive in progress.
RECENT_WRITE_S = 120.0
BATCH = 200


@dataclass(frozen=True, kw_only=True)
class RetentionPolicy:
    files_days: float  # 0: forever
    audit_days: float  # 0: forever
    data_dir: Path
    outbox_dir: Path
    high_water_bytes: int = 0  # 0: off
    interval_s: float = 300.0
    audit_dir: Path | None = None  # the audit trail's day files, kept audit_days


@dataclass
class SweepCounts:
    jobs_purged: int = 0  # jobs whose files were deleted
    files: int = 0
    bytes: int = 0
    high_water_jobs: int = 0  # of jobs_purged, those purged early for free disk
    job_rows: int = 0
    event_rows: int = 0
    association_rows: int = 0
    audit_files: int = 0  # day files of the audit trail (service/audit_trail.py)

    def as_dict(self) -> dict[str, int]:
        return {f.name: int(getattr(self, f.name)) for f in fields(self)}

    def __bool__(self) -> bool:
        return any(self.as_dict().values())


#: The store counter each count is added to (``/metrics``: mammoseg_retention_deleted).
COUNTER_NAMES = {
    "jobs_purged": "retention.jobs_purged",
    "files": "retention.files",
    "bytes": "retention.bytes",
    "high_water_jobs": "retention.high_water_jobs",
    "audit_files": "retention.audit_files",
}


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


def _remove_file(path: Path, counts: SweepCounts) -> None:
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return
    counts.files += 1
    counts.bytes += size


def purge_job_files(
    store: JobStore, job: Job, policy: RetentionPolicy, counts: SweepCounts, *, now: float
) -> bool:
    """Delete one finished job's spool file and outbox folder; False when left for later."""
    spool = Path(job.path)
    try:
        # Written again after the job finished, minutes ago: a receive of the same UID
        # may be committing its job right now. Its own file, or an old rewrite, may go.
        mtime = spool.stat().st_mtime
        rewritten = mtime > job.updated_at and mtime > now - RECENT_WRITE_S
    except OSError:
        rewritten = False
    if rewritten:
        return False
    if not store.housekeeping.mark_purged(job.id, now=now):
        return False  # reprocessed meanwhile, or another sweep has it
    outbox = policy.outbox_dir / str(job.id)
    if outbox.is_dir():
        for item in sorted(outbox.rglob("*"), reverse=True):
            if item.is_file() or item.is_symlink():
                _remove_file(item, counts)
        shutil.rmtree(outbox, ignore_errors=True)
    for name in job.results.get("files", []):  # results kept elsewhere, if ever
        result = Path(name)
        if _inside(result, policy.data_dir):
            _remove_file(result, counts)
    if _inside(spool, policy.data_dir) and not store.housekeeping.path_in_use(
        job.path, besides=job.id
    ):
        _remove_file(spool, counts)
    counts.jobs_purged += 1
    return True


def _free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free if folder.exists() else 0


def sweep(
    store: JobStore,
    policy: RetentionPolicy,
    *,
    now: float | None = None,
    free_bytes: Callable[[Path], int] = _free_bytes,
    audit: AuditTrail | None = None,
) -> SweepCounts:
    """One pass: files past their horizon, then the high-water mark, then old rows.

    With ``audit``, the deleted files get DICOM Instances Accessed (Delete) messages,
    one per study; the trail's own day files past ``audit_days`` go too.
    """
    now = time.time() if now is None else now
    counts = SweepCounts()
    purged: dict[str, list[tuple[Job, str | None]]] = {"age": [], "free disk": []}

    def purge(job: Job, why: str) -> bool:
        patient = audit.patient_hash(job.path) if audit else None  # before the file goes
        if not purge_job_files(store, job, policy, counts, now=now):
            return False
        purged[why].append((job, patient))
        return True

    if policy.files_days:
        cutoff = now - policy.files_days * DAY_S
        seen: set[int] = set()
        while batch := [
            j
            for j in store.housekeeping.purge_candidates(finished_before=cutoff, limit=BATCH)
            if j.id not in seen
        ]:
            for job in batch:
                seen.add(job.id)
                purge(job, "age")
    if policy.high_water_bytes and free_bytes(policy.data_dir) < policy.high_water_bytes:
        seen = set()
        while free_bytes(policy.data_dir) < policy.high_water_bytes and (
            batch := [
                j for j in store.housekeeping.purge_candidates(limit=BATCH) if j.id not in seen
            ]
        ):
            for job in batch:
                seen.add(job.id)
                if purge(job, "free disk"):
                    counts.high_water_jobs += 1
                if free_bytes(policy.data_dir) >= policy.high_water_bytes:
                    break
    if policy.audit_days:
        cutoff = now - policy.audit_days * DAY_S
        while True:
            deleted = store.housekeeping.delete_finished(finished_before=cutoff, limit=BATCH)
            counts.job_rows += deleted["job_rows"]
            counts.event_rows += deleted["event_rows"]
            if deleted["job_rows"] < BATCH:
                break
        while (
            n := store.housekeeping.delete_associations(started_before=cutoff, limit=BATCH * 10)
        ) > 0:
            counts.association_rows += n
        if policy.audit_dir is not None:
            counts.audit_files = delete_old_files(policy.audit_dir, before=cutoff)
    if audit is not None:
        for why, jobs in purged.items():
            reason = f"older than {policy.files_days:g} days" if why == "age" else why
            if jobs:
                audit.retention_deleted(jobs, reason=reason)
    store.housekeeping.add_counters(
        {COUNTER_NAMES[k]: v for k, v in counts.as_dict().items() if k in COUNTER_NAMES}
    )
    return counts


class RetentionSweeper(threading.Thread):
    """Runs :func:`sweep` every ``interval_s`` (the first soon after start-up)."""

    def __init__(
        self,
        store: JobStore,
        policy: RetentionPolicy,
        stop: threading.Event,
        audit: AuditTrail | None = None,
    ) -> None:
        super().__init__(name="retention", daemon=True)
        self.store = store
        self.policy = policy
        self.audit = audit
        self.stop_event = stop
        self.sweeps = 0

    def run(self) -> None:
        delay = min(10.0, self.policy.interval_s)
        while not self.stop_event.wait(delay):
            delay = self.policy.interval_s
            try:
                counts = sweep(self.store, self.policy, audit=self.audit)
            except Exception:  # boundary: a failed sweep is retried at the next interval
                log.exception("retention sweep failed; next in %.0f s", delay)
                continue
            self.sweeps += 1
            if counts:
                log.info(
                    "retention: files of %d jobs deleted (%d files, %d MB; %d for free disk), "
                    "%d job rows, %d event rows, %d association rows, %d audit files",
                    counts.jobs_purged,
                    counts.files,
                    counts.bytes >> 20,
                    counts.high_water_jobs,
                    counts.job_rows,
                    counts.event_rows,
                    counts.association_rows,
                    counts.audit_files,
                    extra={"event": "retention_sweep", **counts.as_dict()},
                )


def policy_from(settings: Settings) -> RetentionPolicy:
    """The policy the settings ask for."""
    return RetentionPolicy(
        files_days=settings.retention_days,
        audit_days=settings.retention_audit_days,
        data_dir=settings.data_dir,
        outbox_dir=settings.outbox_dir,
        high_water_bytes=settings.retention_high_water_mb << 20,
        interval_s=settings.retention_interval_s,
        audit_dir=audit_folder(settings),
    )
