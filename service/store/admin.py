"""Administrator transitions: retry a delivery, reprocess a finished job.

Who calls it: the REST API and the dashboard (service/api/jobs.py). Each
changes a job only from the states it allows, in one transaction, so it is
safe while workers run; a job that moved meanwhile gives :class:`JobConflict`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from service.db import Connection, Pool
from service.store.records import (
    OPEN,
    RETRYABLE,
    TERMINAL,
    Job,
    JobConflict,
    JobNotFound,
    JobState,
)
from service.store.sql import add_event, get_job


def _existing(conn: Connection, job_id: int) -> Job:
    job = get_job(conn, job_id)
    if job is None:
        raise JobNotFound(f"job {job_id} does not exist")
    return job


def _move(
    conn: Connection,
    job: Job,
    to: JobState,
    changes: str,
    params: dict[str, Any],
    *,
    now: float,
    detail: str,
) -> Job:
    """``job`` to state ``to`` with ``changes`` (SQL SET items), only if it is still as read."""
    cur = conn.execute(
        f"UPDATE jobs SET state = :to, {changes}, updated_at = :now "
        "WHERE id = :id AND state = :was",
        {**params, "to": to.value, "now": now, "id": job.id, "was": job.state.value},
    )
    if cur.rowcount != 1:
        raise JobConflict(f"job {job.id} changed state meanwhile; try again")
    add_event(conn, job.id, to, now, detail)
    return _existing(conn, job.id)


def _forget_uncommitted(conn: Connection, job: Job) -> list[str]:
    """Drop the job's commitment requests that never succeeded; the delivered list without
    their destinations (so the sender stores there again, then asks again)."""
    rows = conn.execute(
        "SELECT destination, outcome FROM commitments WHERE job_id = :job AND generation = :gen",
        {"job": job.id, "gen": job.generation},
    ).fetchall()
    committed = {str(r["destination"]) for r in rows if r["outcome"] == "committed"}
    uncommitted = {str(r["destination"]) for r in rows} - committed
    if uncommitted:
        conn.execute(
            "DELETE FROM commitments WHERE job_id = :job AND generation = :gen "
            "AND outcome <> 'committed'",
            {"job": job.id, "gen": job.generation},
        )
    return [d for d in job.delivered if d not in uncommitted]


class JobAdmin:
    """Retry and reprocess (the admin's two ways to redo part of a job)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def retry(
        self, job_id: int, *, detail: str = "retry requested", now: float | None = None
    ) -> Job:
        """Send a FAILED or RETRYING job's existing results again, due now.

        The give-up clock starts again; attempts keep counting. A destination whose
        storage commitment did not succeed gets the instances again and fresh
        commitment requests (its old requests are forgotten: a late report for one
        is then an unknown transaction, acknowledged and logged). Raises
        :class:`JobNotFound`, or :class:`JobConflict` when the job is in
        another state (a worker may have just taken it) or has no results.
        """
        now = time.time() if now is None else now
        with self.pool.write() as conn:
            job = _existing(conn, job_id)
            if job.state not in RETRYABLE:
                raise JobConflict(
                    f"job {job_id} is {job.state.value}: only FAILED or RETRYING jobs can be "
                    "retried"
                )
            if not job.results.get("files"):
                raise JobConflict(
                    f"job {job_id} has no results to send (it failed before they were built): "
                    "reprocess it instead"
                )
            delivered = _forget_uncommitted(conn, job)
            changes = "next_attempt_at = :now, first_send_failure_at = NULL, delivered = :delivered"
            params = {"delivered": json.dumps(delivered)}
            return _move(conn, job, JobState.RETRYING, changes, params, now=now, detail=detail)

    def reprocess(
        self,
        job_id: int,
        *,
        before_commit: Callable[[Job], None] | None = None,
        detail: str = "reprocess requested",
        now: float | None = None,
    ) -> Job:
        """Put a finished (DONE, FAILED, SKIPPED) job back to RECEIVED, results forgotten.

        This is the deliberate redo: the job's generation goes up, so its new
        results get new UIDs (a PACS that keeps the first instance of a UID
        would otherwise ignore them); the crash count starts again. Refused
        once retention has deleted the job's files.

        ``before_commit`` runs inside the transaction, while no worker can
        claim the job: the caller clears the outbox there (raise to abort).
        Refused while another job for the same instance is still open, so
        results are never delivered twice.
        """
        now = time.time() if now is None else now
        with self.pool.write() as conn:
            job = _existing(conn, job_id)
            if job.state not in TERMINAL:
                raise JobConflict(
                    f"job {job_id} is {job.state.value}: only DONE, FAILED or SKIPPED jobs can "
                    "be reprocessed"
                )
            if job.kind == "exam":
                raise JobConflict(
                    f"job {job_id} is an exam SR the node wrote: it is written again when a "
                    "new image of its study arrives, never reprocessed"
                )
            other = conn.execute(
                "SELECT id FROM jobs WHERE sop_instance_uid = :uid AND id <> :id "
                "AND state IN :open",
                {"uid": job.sop_instance_uid, "id": job_id, "open": [s.value for s in OPEN]},
            ).fetchone()
            if other is not None:
                raise JobConflict(
                    f"job {other['id']} for the same instance is still open; wait for it"
                )
            if job.purged_at is not None:
                raise JobConflict(
                    f"job {job_id}'s files were deleted by retention: the source must be sent again"
                )
            if before_commit is not None:
                before_commit(job)
            changes = (
                "reason = '', attempts = 0, next_attempt_at = NULL, first_send_failure_at = NULL, "
                "results = '{}', delivered = '[]', timings = :timings, crashes = 0, "
                "generation = generation + 1"
            )
            timings = {"timings": json.dumps({"received_at": now})}
            return _move(conn, job, JobState.RECEIVED, changes, timings, now=now, detail=detail)
