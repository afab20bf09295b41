"""Storage Commitment requests and their reports (PS3.4 J), kept with the jobs.

Who calls it: the sender (``requested`` before each N-ACTION, ``withdraw`` if
it was not accepted, ``settle`` when a job's sends are over) and whoever got
an N-EVENT-REPORT (``record``: the SCP on a new association, or the sender on
the N-ACTION's own). Every Transaction UID is a row, so a report that comes
late, after a restart or another process's request, still finds its job.

A job leaves COMMIT_PENDING here only for DONE (every destination that needs it
committed its results); failures and timeouts are the sender's to act on
(service/worker.py): a failure report makes the job due now.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from service.db import Connection, Pool
from service.store.claims import finished_notices
from service.store.records import Commitment, JobState, row_to_commitment
from service.store.sql import add_event, add_note, get_job


class JobCommitments:
    """Requests, reports and the COMMIT_PENDING -> DONE transition."""

    def __init__(self, pool: Pool, *, webhook_urls: Sequence[str] = ()) -> None:
        self.pool = pool
        #: Told of each job this makes DONE (job.done), as the queue tells them.
        self.webhook_urls = tuple(webhook_urls)

    def requested(
        self,
        job_id: int,
        *,
        generation: int,
        destination: str,
        transaction_uid: str,
        instances: int,
        now: float | None = None,
    ) -> None:
        """Record a request before it is sent (so that a quick report finds it)."""
        now = time.time() if now is None else now
        with self.pool.write() as conn:
            conn.execute(
                "INSERT INTO commitments (job_id, generation, destination, transaction_uid, "
                "instances, requested_at) VALUES (:job, :generation, :destination, :uid, "
                ":instances, :now)",
                {
                    "job": job_id,
                    "generation": generation,
                    "destination": destination,
                    "uid": transaction_uid,
                    "instances": instances,
                    "now": now,
                },
            )

    def withdraw(self, transaction_uid: str) -> None:
        """Forget a request the destination did not accept (the N-ACTION failed)."""
        with self.pool.write() as conn:
            conn.execute(
                "DELETE FROM commitments WHERE transaction_uid = :uid AND outcome = 'pending'",
                {"uid": transaction_uid},
            )

    def answered(self, transaction_uid: str) -> bool:
        """Whether a report for this request has been recorded (by any process)."""
        with self.pool.read() as conn:
            row = conn.execute(
                "SELECT outcome FROM commitments WHERE transaction_uid = :uid",
                {"uid": transaction_uid},
            ).fetchone()
        return row is not None and row["outcome"] != "pending"

    def for_job(self, job_id: int, generation: int) -> list[Commitment]:
        """The requests for one generation of a job's results, oldest first."""
        with self.pool.read() as conn:
            rows = conn.execute(
                "SELECT * FROM commitments WHERE job_id = :job AND generation = :generation "
                "ORDER BY id",
                {"job": job_id, "generation": generation},
            ).fetchall()
        return [row_to_commitment(r) for r in rows]

    def record(
        self,
        transaction_uid: str,
        *,
        failed: int,
        reason: str = "",
        now: float | None = None,
    ) -> Commitment | None:
        """Store a report (``failed`` instances not committed); None: no such transaction.

        A second report for one transaction changes nothing. A COMMIT_PENDING job
        whose every destination has now committed becomes DONE; one with a
        failure becomes due now, for the sender to resend.
        """
        now = time.time() if now is None else now
        with self.pool.write() as conn:
            row = conn.execute(
                "SELECT * FROM commitments WHERE transaction_uid = :uid", {"uid": transaction_uid}
            ).fetchone()
            if row is None:
                return None
            found = row_to_commitment(row)
            if found.outcome != "pending":
                return found
            outcome = "failed" if failed else "committed"
            conn.execute(
                "UPDATE commitments SET outcome = :outcome, failed = :failed, reason = :reason, "
                "answered_at = :now WHERE id = :id",
                {
                    "outcome": outcome,
                    "failed": failed,
                    "reason": reason,
                    "now": now,
                    "id": found.id,
                },
            )
            # Lock the job's row (PostgreSQL) against a concurrent settle().
            conn.execute(
                "UPDATE jobs SET updated_at = updated_at WHERE id = :id", {"id": found.job_id}
            )
            job = get_job(conn, found.job_id)
            if job is None or job.generation != found.generation:
                return found
            if failed:
                add_note(
                    conn,
                    job.id,
                    job.state,
                    now,
                    f"storage commitment failed at {found.destination}: {reason} "
                    f"(transaction {transaction_uid})",
                )
                if job.state is JobState.COMMIT_PENDING:
                    conn.execute(
                        "UPDATE jobs SET next_attempt_at = :now, updated_at = :now "
                        "WHERE id = :id AND state = :pending",
                        {"now": now, "id": job.id, "pending": JobState.COMMIT_PENDING.value},
                    )
            elif job.state is JobState.COMMIT_PENDING:
                waiting = _uncommitted(conn, job.id, job.generation, None)
                if not waiting:
                    detail = f"storage commitment confirmed by {found.destination}"
                    _finish(conn, job.id, now, detail, self.webhook_urls)
                else:
                    add_note(
                        conn,
                        job.id,
                        job.state,
                        now,
                        f"storage commitment confirmed by {found.destination}",
                    )
            return found

    def settle(
        self,
        job_id: int,
        *,
        generation: int,
        destinations: Sequence[str],
        due_at: float,
        now: float | None = None,
    ) -> JobState:
        """End a send: DONE if ``destinations`` all committed, else COMMIT_PENDING till ``due_at``.

        One transaction with :meth:`record`'s, so a report that arrives during
        the send is never lost between the two.
        """
        now = time.time() if now is None else now
        with self.pool.write() as conn:
            # Touch the row first: on PostgreSQL this locks it against a concurrent record().
            conn.execute(
                "UPDATE jobs SET updated_at = :now WHERE id = :id", {"now": now, "id": job_id}
            )
            waiting = _uncommitted(conn, job_id, generation, destinations)
            if not waiting:
                detail = (
                    f"storage commitment confirmed by {', '.join(destinations)}"
                    if destinations
                    else ""
                )
                _finish(conn, job_id, now, detail, self.webhook_urls)
                return JobState.DONE
            conn.execute(
                "UPDATE jobs SET state = :pending, reason = '', next_attempt_at = :due, "
                "owner = '', heartbeat_at = NULL, updated_at = :now WHERE id = :id",
                {
                    "pending": JobState.COMMIT_PENDING.value,
                    "due": due_at,
                    "now": now,
                    "id": job_id,
                },
            )
            add_event(
                conn,
                job_id,
                JobState.COMMIT_PENDING,
                now,
                f"waiting for storage commitment from {', '.join(waiting)}",
            )
            return JobState.COMMIT_PENDING


def _uncommitted(
    conn: Connection, job_id: int, generation: int, destinations: Sequence[str] | None
) -> list[str]:
    """The destinations (those requested, when None) without a committed request."""
    rows = conn.execute(
        "SELECT destination, outcome FROM commitments WHERE job_id = :job "
        "AND generation = :generation",
        {"job": job_id, "generation": generation},
    ).fetchall()
    wanted = list(destinations) if destinations is not None else [str(r[0]) for r in rows]
    committed = {str(r[0]) for r in rows if r[1] == "committed"}
    return [d for d in dict.fromkeys(wanted) if d not in committed]


def _finish(
    conn: Connection, job_id: int, now: float, detail: str, webhook_urls: Sequence[str]
) -> None:
    row = conn.execute("SELECT timings FROM jobs WHERE id = :id", {"id": job_id}).fetchone()
    timings = {**(json.loads(row["timings"]) if row else {}), "done_at": now}
    conn.execute(
        "UPDATE jobs SET state = :done, reason = '', next_attempt_at = NULL, owner = '', "
        "heartbeat_at = NULL, updated_at = :now, timings = :timings WHERE id = :id",
        {"done": JobState.DONE.value, "now": now, "timings": json.dumps(timings), "id": job_id},
    )
    add_event(conn, job_id, JobState.DONE, now, detail)
    finished_notices(conn, job_id, JobState.DONE, now, webhook_urls)
