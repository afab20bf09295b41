"""The work queue: jobs admitted for received instances, claimed, updated, taken back.

Who calls it: the storage SCP's commit (``admit``), the workers and the sender
(``claim``, ``update``, ``heartbeat``) and start-up and the stale sweep
(``recover``). A job is committed before the C-STORE success goes back
(docs/architecture.md). Workers claim in one transaction (SQLite ``BEGIN
IMMEDIATE``, PostgreSQL ``FOR UPDATE SKIP LOCKED``), so two never take the
same job.

Exactly once (issue 12): a unique partial index allows one open job per SOP
Instance UID, and :meth:`JobQueue.admit` inserts or does nothing, so two
associations storing one UID at once make one job. An instance received again
with identical content after its job finished is not a new job (a note on the
old one records it). Claims carry a heartbeat and an owner that names one
process (``NAME#PID@HOST``, service/store/owners.py), so recovery takes back
only claims whose process stopped, never the live claims of another process on
the same store; a claim taken back unfinished counts as a crash, and after
``quarantine_after`` of them the job is FAILED for good ("quarantined"), so a
poison pill cannot bring the node down in a loop.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from service.db import Connection, DatabaseError, Pool, Row
from service.store.records import (
    OPEN,
    QUARANTINE_REASON,
    Admission,
    Job,
    JobState,
    NewJob,
    StoreError,
    row_to_job,
)
from service.store.sql import (
    add_counters,
    add_event,
    add_job_notices,
    add_note,
    count,
    exam_arrival,
    get_job,
)

log = logging.getLogger(__name__)

_OPEN_STATES = [s.value for s in OPEN]
_OPEN_FOR_UID = (
    "SELECT id, state, content_hash FROM jobs WHERE sop_instance_uid = :uid "
    "AND state IN :open ORDER BY id DESC LIMIT 1"
)


def finished_notices(
    conn: Connection, job_id: int, state: JobState, now: float, urls: Sequence[str]
) -> None:
    """DONE or FAILED: the webhook notices, in the job's transaction (README "Webhooks").

    Every path that finishes a job calls it (this queue, and store/commitments.py
    for COMMIT_PENDING -> DONE). Inside a savepoint: a notice that cannot be
    written is logged and counted (``webhooks.insert_failed``), and the job's own
    change still commits.
    """
    if not urls or state not in (JobState.DONE, JobState.FAILED):
        return
    try:
        with conn.raw.begin_nested():
            add_job_notices(conn, job_id, state, now, urls)
    except (DatabaseError, SQLAlchemyError) as exc:
        log.error(
            "job %d %s: its webhook notice cannot be written: %s",
            job_id,
            state.value,
            exc,
            extra={"event": "webhook_insert_failed", "job_id": job_id},
        )
        add_counters(conn, {"webhooks.insert_failed": 1})


class JobQueue:
    """Admit, claim, update and recover jobs (the SCP, workers and sender)."""

    def __init__(
        self, pool: Pool, *, quarantine_after: int = 3, webhook_urls: Sequence[str] = ()
    ) -> None:
        if quarantine_after < 1:
            raise ValueError(f"quarantine_after must be at least 1, got {quarantine_after}")
        self.pool = pool
        self.quarantine_after = quarantine_after
        self.webhook_urls = tuple(webhook_urls)

    def _finished(self, conn: Connection, job_id: int, state: JobState, now: float) -> None:
        finished_notices(conn, job_id, state, now, self.webhook_urls)

    def add(self, new: NewJob, *, now: float | None = None) -> tuple[int, bool]:
        """Commit a job for a received instance; returns (job id, created).

        See :meth:`admit`, which also says why no job was created.
        """
        admission = self.admit(new, now=now)
        return admission.job_id, admission.outcome == "created"

    def admit(self, new: NewJob, *, now: float | None = None) -> Admission:
        """Commit a job for a received instance, unless one exists for it.

        - A job for the UID still open (a sender's retry): that job ("open").
          If it has not started yet and the content changed, it takes the new
          content's hash (the spool file holds the newest content).
        - The newest finished job for the UID has the same content and is
          DONE, SKIPPED or quarantined: nothing new ("duplicate"); a note on
          that job records it. ``reprocess`` is the way to redo it.
        - Otherwise (a first receive, new content, or a FAILED job that was
          not quarantined): a new job ("created"). Its result UIDs are keyed
          by the content hash too, so they never collide with older results.

        The insert does nothing when another open job exists (unique partial
        index), so concurrent associations storing one UID make one job.
        """
        now = time.time() if now is None else now
        open_for_uid = {"uid": new.sop_instance_uid, "open": _OPEN_STATES}
        with self.pool.write() as conn:
            row = conn.execute(_OPEN_FOR_UID, open_for_uid).fetchone()
            if row is not None:
                _refresh_content(conn, row, new)
                return Admission(int(row["id"]), "open")
            last = conn.execute(
                "SELECT * FROM jobs WHERE sop_instance_uid = :uid ORDER BY id DESC LIMIT 1",
                {"uid": new.sop_instance_uid},
            ).fetchone()
            if last is not None and new.content_hash:
                done = row_to_job(last)
                same = done.content_hash == new.content_hash
                if same and (done.state in (JobState.DONE, JobState.SKIPPED) or done.quarantined):
                    add_note(
                        conn,
                        done.id,
                        done.state,
                        now,
                        f"duplicate ignored: the same content again from {new.calling_ae_title} "
                        f"on {new.association_id}",
                    )
                    add_counters(conn, {"duplicates.ignored": 1})
                    return Admission(done.id, "duplicate", files_purged=done.purged_at is not None)
            inserted = conn.execute(
                "INSERT INTO jobs (sop_instance_uid, sop_class_uid, study_instance_uid, "
                "series_instance_uid, transfer_syntax_uid, calling_ae_title, association_id, "
                "path, state, created_at, updated_at, timings, content_hash, accession_number, "
                "laterality, image_view) "
                "VALUES (:sop_instance_uid, :sop_class_uid, :study_instance_uid, "
                ":series_instance_uid, :transfer_syntax_uid, :calling_ae_title, "
                ":association_id, :path, :state, :now, :now, :timings, :content_hash, :accession, "
                ":laterality, :image_view) "
                "ON CONFLICT DO NOTHING RETURNING id",
                {
                    "sop_instance_uid": new.sop_instance_uid,
                    "sop_class_uid": new.sop_class_uid,
                    "study_instance_uid": new.study_instance_uid,
                    "series_instance_uid": new.series_instance_uid,
                    "transfer_syntax_uid": new.transfer_syntax_uid,
                    "calling_ae_title": new.calling_ae_title,
                    "association_id": new.association_id,
                    "path": new.path,
                    "state": JobState.RECEIVED.value,
                    "now": now,
                    "timings": json.dumps({"received_at": now}),
                    "content_hash": new.content_hash,
                    "accession": new.accession_number,
                    "laterality": new.laterality,
                    "image_view": new.image_view,
                },
            ).fetchone()
            if inserted is None:  # another association committed a job for it meanwhile
                row = conn.execute(_OPEN_FOR_UID, open_for_uid).fetchone()
                if row is None:
                    raise StoreError(
                        f"job for {new.sop_instance_uid} neither inserted nor found open"
                    )
                _refresh_content(conn, row, new)
                return Admission(int(row["id"]), "open")
            job_id = int(inserted["id"])
            add_event(conn, job_id, JobState.RECEIVED, now)
            exam_arrival(conn, new.study_instance_uid, now)
            return Admission(job_id, "created")

    def claim(
        self,
        states: Sequence[JobState],
        to: JobState,
        *,
        now: float | None = None,
        owner: str = "",
    ) -> Job | None:
        """Atomically take the oldest due job in one of ``states`` and move it to ``to``."""
        now = time.time() if now is None else now
        with self.pool.write() as conn:
            row = conn.execute(
                "SELECT * FROM jobs WHERE state IN :states "
                "AND (next_attempt_at IS NULL OR next_attempt_at <= :now) ORDER BY id LIMIT 1"
                + conn.backend.skip_locked,
                {"states": [s.value for s in states], "now": now},
            ).fetchone()
            if row is None:
                return None
            job_id = int(row["id"])
            # e.g. processing_at: when a worker took it (the "received" stage ends there).
            timings = {**json.loads(row["timings"]), f"{to.value.lower()}_at": now}
            conn.execute(
                "UPDATE jobs SET state = :to, updated_at = :now, timings = :timings, "
                "owner = :owner, heartbeat_at = :now WHERE id = :id",
                {
                    "to": to.value,
                    "now": now,
                    "timings": json.dumps(timings),
                    "owner": owner,
                    "id": job_id,
                },
            )
            add_event(conn, job_id, to, now, f"by {owner}" if owner else "")
            return get_job(conn, job_id)

    def update(
        self,
        job_id: int,
        *,
        state: JobState | None = None,
        reason: str | None = None,
        timings: dict[str, float] | None = None,
        results: dict[str, Any] | None = None,
        delivered: list[str] | None = None,
        attempts: int | None = None,
        next_attempt_at: float | None = None,
        clear_next_attempt: bool = False,
        first_send_failure_at: float | None = None,
        clear_send_failure: bool = False,
        now: float | None = None,
    ) -> None:
        """Change some columns of one job in one transaction; timings are merged."""
        now = time.time() if now is None else now
        sets: list[str] = ["updated_at = :now"]
        params: dict[str, Any] = {"now": now, "id": job_id}
        for column, value in (
            ("state", state.value if state else None),
            ("reason", reason),
            ("results", None if results is None else json.dumps(results)),
            ("delivered", None if delivered is None else json.dumps(delivered)),
            ("attempts", attempts),
            ("next_attempt_at", next_attempt_at),
            ("first_send_failure_at", first_send_failure_at),
        ):
            if value is not None:
                sets.append(f"{column} = :{column}")
                params[column] = value
        if clear_next_attempt:
            sets.append("next_attempt_at = NULL")
        if clear_send_failure:
            sets.append("first_send_failure_at = NULL")
        with self.pool.write() as conn:
            if timings:
                row = conn.execute(
                    "SELECT timings FROM jobs WHERE id = :id", {"id": job_id}
                ).fetchone()
                merged = {**(json.loads(row["timings"]) if row else {}), **timings}
                sets.append("timings = :timings")
                params["timings"] = json.dumps(merged)
            cur = conn.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = :id", params)
            if state is not None and cur.rowcount:
                add_event(conn, job_id, state, now, reason or "")
                self._finished(conn, job_id, state, now)

    def heartbeat(self, job_ids: Sequence[int], owner: str, *, now: float | None = None) -> int:
        """Mark the claims ``owner`` still holds as alive; returns how many it holds.

        Only jobs still PROCESSING or SENDING under ``owner`` are touched: a
        claim the stale sweep took back stays taken back.
        """
        if not job_ids:
            return 0
        now = time.time() if now is None else now
        with self.pool.write() as conn:
            cur = conn.execute(
                "UPDATE jobs SET heartbeat_at = :now WHERE owner = :owner AND state IN :held "
                "AND id IN :ids",
                {
                    "now": now,
                    "owner": owner,
                    "held": [JobState.PROCESSING.value, JobState.SENDING.value],
                    "ids": list(job_ids),
                },
            )
            return int(cur.rowcount)

    def held_by(self, owner: str) -> list[Job]:
        """The jobs ``owner`` holds now (PROCESSING or SENDING), oldest first."""
        with self.pool.read() as conn:
            rows = conn.execute(
                "SELECT * FROM jobs WHERE owner = :owner AND state IN :held ORDER BY id",
                {"owner": owner, "held": [JobState.PROCESSING.value, JobState.SENDING.value]},
            ).fetchall()
        return [row_to_job(row) for row in rows]

    def recover(
        self,
        *,
        owner: str | None = None,
        stale_after_s: float | None = None,
        stopped: Callable[[str], bool] | None = None,
        crashed: bool = True,
        now: float | None = None,
    ) -> dict[str, int]:
        """Put interrupted work back: PROCESSING -> RECEIVED, SENDING -> RETRYING (due now).

        With no arguments every such job is taken back (a store no process
        uses any more: tests, tools). Otherwise a claim is taken back when any
        of these holds: its owner is ``owner`` (a process handing back its own
        work, or a supervisor the work of a worker process that died); its
        holder has shown no sign of life (heartbeat, and last update) for
        ``stale_after_s``; ``stopped(owner)`` says its process is gone
        (service/store/owners.py: a pid no longer running on this host). A
        claim whose heartbeat is fresh and whose process runs is never taken,
        so processes sharing one store (``serve``, its worker processes, a
        ``mammoseg worker`` on the same host) leave each other's claims alone.

        A PROCESSING job taken back is a crashed attempt: the process died
        while it held it, perhaps because of it. After ``quarantine_after``
        such attempts it is FAILED ("quarantined after N crashed attempts")
        instead, and never claimed again (counts under ``quarantined``).
        ``crashed=False``: a process stopping in order hands back the work it
        could not finish; that is no crashed attempt.
        """
        now = time.time() if now is None else now
        everything = owner is None and stale_after_s is None and stopped is None
        cutoff = None if stale_after_s is None else now - stale_after_s

        def taken_back(row: Row) -> bool:
            if everything or (owner is not None and row["owner"] == owner):
                return True
            if cutoff is not None and row["updated_at"] < cutoff:
                beat = row["heartbeat_at"]
                if beat is None or beat < cutoff:
                    return True
            return stopped is not None and stopped(str(row["owner"]))

        counts = {"processing": 0, "sending": 0, "quarantined": 0}
        with self.pool.write() as conn:
            for state, to, key in (
                (JobState.PROCESSING, JobState.RECEIVED, "processing"),
                (JobState.SENDING, JobState.RETRYING, "sending"),
            ):
                rows = conn.execute(
                    "SELECT id, crashes, owner, updated_at, heartbeat_at FROM jobs "
                    "WHERE state = :state" + conn.backend.skip_locked,
                    {"state": state.value},
                ).fetchall()
                for row in filter(taken_back, rows):
                    job_id = int(row["id"])
                    if to is JobState.RECEIVED:
                        crashes = int(row["crashes"]) + (1 if crashed else 0)
                        if crashes >= self.quarantine_after:
                            reason = QUARANTINE_REASON.format(n=crashes)
                            conn.execute(
                                "UPDATE jobs SET state = :state, reason = :reason, "
                                "crashes = :crashes, updated_at = :now, owner = '', "
                                "heartbeat_at = NULL WHERE id = :id",
                                {
                                    "state": JobState.FAILED.value,
                                    "reason": reason,
                                    "crashes": crashes,
                                    "now": now,
                                    "id": job_id,
                                },
                            )
                            add_event(conn, job_id, JobState.FAILED, now, reason)
                            self._finished(conn, job_id, JobState.FAILED, now)
                            counts["quarantined"] += 1
                            continue
                        conn.execute(
                            "UPDATE jobs SET state = :state, crashes = :crashes, "
                            "updated_at = :now, owner = '', heartbeat_at = NULL WHERE id = :id",
                            {"state": to.value, "crashes": crashes, "now": now, "id": job_id},
                        )
                        detail = (
                            f"recovered after a restart (crashed attempt {crashes})"
                            if crashed
                            else "handed back by a process stopping in order"
                        )
                    else:
                        conn.execute(
                            "UPDATE jobs SET state = :state, updated_at = :now, owner = '', "
                            "heartbeat_at = NULL, next_attempt_at = :now WHERE id = :id",
                            {"state": to.value, "now": now, "id": job_id},
                        )
                        detail = "recovered after a restart"
                    add_event(conn, job_id, to, now, detail)
                    counts[key] += 1
            add_counters(conn, {"quarantined": counts["quarantined"]})
        return counts

    def queue_depth(self, *, now: float | None = None) -> int:
        """Jobs waiting for a worker: RECEIVED, and RETRYING whose next attempt is due."""
        now = time.time() if now is None else now
        with self.pool.read() as conn:
            return count(
                conn,
                "SELECT COUNT(*) FROM jobs WHERE state = :received OR (state = :retrying AND "
                "(next_attempt_at IS NULL OR next_attempt_at <= :now))",
                {
                    "received": JobState.RECEIVED.value,
                    "retrying": JobState.RETRYING.value,
                    "now": now,
                },
            )


def _refresh_content(conn: Connection, row: Row, new: NewJob) -> None:
    if (
        new.content_hash
        and row["content_hash"] != new.content_hash
        and row["state"] == JobState.RECEIVED.value
    ):
        conn.execute(
            "UPDATE jobs SET content_hash = :hash, accession_number = :accession, "
            "laterality = :laterality, image_view = :image_view "
            "WHERE id = :id AND state = :received",
            {
                "hash": new.content_hash,
                "accession": new.accession_number,
                "laterality": new.laterality,
                "image_view": new.image_view,
                "id": row["id"],
                "received": JobState.RECEIVED.value,
            },
        )
