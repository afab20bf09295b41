"""The job store: one row per received instance, in SQLite (WAL mode) or PostgreSQL.

A job is committed before the C-STORE success goes back (docs/architecture.md,
data flow). Workers claim jobs in one transaction (SQLite ``IMMEDIATE``, PostgreSQL
``FOR UPDATE SKIP LOCKED``) so two workers never take the same one. No patient
data is stored here: UIDs, states, timings.

Besides the jobs, two audit tables: ``job_events`` (every state change with
its time, which gives throughput and the retry count without trusting a
mutable column) and ``associations`` (who called, from where, when, how many
instances, how it ended). The admin transitions (:meth:`JobStore.retry`,
:meth:`JobStore.reprocess`) change a job only from the states they allow, in
one transaction, so they are safe while workers run.

The SQL is kept plain (no JSON functions) so that it runs on SQLite and
PostgreSQL alike; the one upsert form used (``ON CONFLICT ... DO``) is common
to both.

Exactly once (issue 12): a unique partial index allows one open job per SOP
Instance UID, and :meth:`JobStore.admit` inserts or does nothing, so two
associations storing one UID at once make one job. An instance received again
with identical content after its job finished is not a new job (a note on the
old one records it). Claims carry a heartbeat (:meth:`JobStore.heartbeat`), so
the stale sweep takes back only claims whose process stopped; a claim taken
back unfinished counts as a crash, and after ``quarantine_after`` of them the
job is FAILED for good ("quarantined"), so a poison pill cannot bring the node
down in a loop. Retention (``service/retention.py``) deletes files and rows
through the methods at the end; the counters they keep make the Prometheus
totals survive the deletions.
"""

from __future__ import annotations

import builtins
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from service.db import Connection, Database, DatabaseError, Row, transaction


class StoreError(Exception):
    """The job store cannot be used (open, write or schema problems)."""


class JobNotFound(LookupError):
    """No job has this id."""


class JobConflict(Exception):
    """The job is not in a state that allows the requested transition (the message says why)."""


class JobState(StrEnum):
    RECEIVED = "RECEIVED"
    PROCESSING = "PROCESSING"
    SENDING = "SENDING"
    RETRYING = "RETRYING"
    DONE = "DONE"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"


TERMINAL = frozenset({JobState.DONE, JobState.FAILED, JobState.SKIPPED})
OPEN = tuple(s for s in JobState if s not in TERMINAL)
#: The reason of a quarantined job starts with this (FAILED, never claimed again).
QUARANTINE_REASON = "quarantined after {n} crashed attempts"
QUARANTINE_PREFIX = "quarantined after "
#: What :meth:`JobStore.admit` did with a received instance.
Outcome = Literal["created", "open", "duplicate"]
#: States from which an administrator may ask for the results to be sent again now.
RETRYABLE = frozenset({JobState.FAILED, JobState.RETRYING})


@dataclass(frozen=True)
class NewJob:
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    calling_ae_title: str
    association_id: str
    path: str
    content_hash: str = ""  # SHA-256 of the dataset (file meta excluded); "" when unknown


@dataclass(frozen=True)
class Admission:
    """What :meth:`JobStore.admit` did: a new job, the open one, or a duplicate ignored.

    ``files_purged``: the job it names has had its files deleted by retention
    (a duplicate's fresh spool file then belongs to no job).
    """

    job_id: int
    outcome: Outcome
    files_purged: bool = False


@dataclass(frozen=True)
class Job:
    id: int
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    calling_ae_title: str
    association_id: str
    path: str
    state: JobState
    reason: str
    attempts: int
    next_attempt_at: float | None
    first_send_failure_at: float | None
    created_at: float
    updated_at: float
    timings: dict[str, float] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    delivered: list[str] = field(default_factory=list)
    owner: str = ""  # the worker process holding a PROCESSING/SENDING job
    crashes: int = 0  # claims taken back unfinished (the process died meanwhile)
    heartbeat_at: float | None = None  # the holder's last sign of life
    content_hash: str = ""
    generation: int = 0  # times it was reprocessed (keys the result UIDs)
    purged_at: float | None = None  # when retention deleted its files

    @property
    def quarantined(self) -> bool:
        return self.state is JobState.FAILED and self.reason.startswith(QUARANTINE_PREFIX)

    @property
    def result_key(self) -> str:
        """What, besides the source UID and the model, keys this job's result UIDs."""
        return f"{self.content_hash}/{self.generation}"


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a listing wants; every part is optional and they combine with AND.

    ``since``/``until`` bound the time the job was received (``created_at``,
    half-open: since <= t < until). ``destination`` keeps jobs whose results
    were delivered to that destination (``AET@HOST:PORT``).
    """

    states: Sequence[JobState] = ()
    since: float | None = None
    until: float | None = None
    destination: str | None = None
    calling_ae_title: str | None = None


@dataclass(frozen=True)
class JobEvent:
    """One state change of a job (``detail`` says who or why, e.g. a retry request)."""

    id: int
    job_id: int
    at: float
    state: JobState
    detail: str


@dataclass(frozen=True)
class Association:
    """One DICOM association as the audit sees it (no patient data)."""

    id: int
    association_id: str
    calling_ae_title: str
    address: str
    started_at: float
    ended_at: float | None
    instances: int
    outcome: str  # open, released, aborted, rejected


#: Outcomes of an association in the audit table.
ASSOCIATION_OUTCOMES = ("open", "released", "aborted", "rejected")


# The schema lives in Alembic migrations: service/migrations/versions/.
_JSON_COLUMNS = ("timings", "results", "delivered")


def _row_to_job(row: Row) -> Job:
    values = dict(row)
    for column in _JSON_COLUMNS:
        values[column] = json.loads(values[column])
    values["state"] = JobState(values["state"])
    return Job(**values)


def _row_to_association(row: Row) -> Association:
    return Association(**dict(row))


def _count(conn: Connection, query: str, args: Sequence[Any] = ()) -> int:
    """The single number a COUNT or MAX query answers (0 for NULL)."""
    row = conn.execute(query, args).fetchone()
    return int(row[0] or 0) if row is not None else 0


def _marks(values: Sequence[object]) -> str:
    return ",".join("?" * len(values))


def _like_escaped(text: str) -> str:
    """``text`` as a literal inside a LIKE pattern with ``ESCAPE '\\'``."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _filter_sql(where: JobFilter) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    if where.states:
        clauses.append(f"state IN ({_marks(where.states)})")
        args.extend(JobState(s).value for s in where.states)
    if where.since is not None:
        clauses.append("created_at >= ?")
        args.append(where.since)
    if where.until is not None:
        clauses.append("created_at < ?")
        args.append(where.until)
    if where.destination:
        # delivered is a JSON list of names: match the quoted name as a whole.
        clauses.append("delivered LIKE ? ESCAPE '\\'")
        args.append(f'%"{_like_escaped(where.destination)}"%')
    if where.calling_ae_title:
        clauses.append("calling_ae_title = ?")
        args.append(where.calling_ae_title)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


class JobStore:
    """Thread-safe access to the job tables (one connection per thread).

    ``database`` is a :class:`service.db.Database` (SQLite or PostgreSQL) or,
    for the embedded default and tests, the path of an SQLite file.
    """

    def __init__(self, database: Database | Path, *, quarantine_after: int = 3) -> None:
        if quarantine_after < 1:
            raise ValueError(f"quarantine_after must be at least 1, got {quarantine_after}")
        self.quarantine_after = quarantine_after
        self.database = database if isinstance(database, Database) else Database.sqlite(database)
        self.backend = self.database.backend
        self._local = threading.local()
        try:
            self.database.migrate()
            self._connection()
        except DatabaseError as exc:
            raise StoreError(f"cannot open the job store: {exc}") from exc

    @property
    def path(self) -> Path:
        """The SQLite file, or for PostgreSQL the URL without its password."""
        if self.backend.dialect == "sqlite":
            return self.database.sqlite_path
        return Path(self.database.display)

    def _connection(self) -> Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self.database.connect()
            self._local.conn = conn
        return conn

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        with transaction(self._connection()) as conn:
            yield conn

    @staticmethod
    def _event(conn: Connection, job_id: int, state: JobState, at: float, detail: str = "") -> None:
        conn.execute(
            "INSERT INTO job_events (job_id, at, state, detail) VALUES (?,?,?,?)",
            (job_id, at, state.value, detail),
        )

    @staticmethod
    def _note(conn: Connection, job_id: int, state: JobState, at: float, detail: str) -> None:
        """Something that happened to a job without a state change (not counted as one)."""
        conn.execute(
            "INSERT INTO job_notes (job_id, at, state, detail) VALUES (?,?,?,?)",
            (job_id, at, state.value, detail),
        )

    @staticmethod
    def _add_counters(conn: Connection, amounts: dict[str, int]) -> None:
        for name, amount in amounts.items():
            if amount:
                conn.execute(
                    "INSERT INTO counters (name, value) VALUES (?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value",
                    (name, int(amount)),
                )

    # -- writes -----------------------------------------------------------
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
        open_marks = _marks(OPEN)
        open_values = [s.value for s in OPEN]
        with self._transaction() as conn:
            row = conn.execute(
                f"SELECT id, state, content_hash FROM jobs WHERE sop_instance_uid = ? "
                f"AND state IN ({open_marks}) ORDER BY id DESC LIMIT 1",
                (new.sop_instance_uid, *open_values),
            ).fetchone()
            if row is not None:
                self._refresh_content(conn, row, new)
                return Admission(int(row["id"]), "open")
            last = conn.execute(
                "SELECT * FROM jobs WHERE sop_instance_uid = ? ORDER BY id DESC LIMIT 1",
                (new.sop_instance_uid,),
            ).fetchone()
            if last is not None and new.content_hash:
                done = _row_to_job(last)
                same = done.content_hash == new.content_hash
                if same and (done.state in (JobState.DONE, JobState.SKIPPED) or done.quarantined):
                    self._note(
                        conn,
                        done.id,
                        done.state,
                        now,
                        f"duplicate ignored: the same content again from {new.calling_ae_title} "
                        f"on {new.association_id}",
                    )
                    self._add_counters(conn, {"duplicates.ignored": 1})
                    return Admission(done.id, "duplicate", files_purged=done.purged_at is not None)
            cur = conn.execute(
                "INSERT INTO jobs (sop_instance_uid, sop_class_uid, study_instance_uid, "
                "series_instance_uid, transfer_syntax_uid, calling_ae_title, association_id, "
                "path, state, created_at, updated_at, timings, content_hash) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING RETURNING id",
                (
                    new.sop_instance_uid,
                    new.sop_class_uid,
                    new.study_instance_uid,
                    new.series_instance_uid,
                    new.transfer_syntax_uid,
                    new.calling_ae_title,
                    new.association_id,
                    new.path,
                    JobState.RECEIVED.value,
                    now,
                    now,
                    json.dumps({"received_at": now}),
                    new.content_hash,
                ),
            )
            inserted = cur.fetchone()
            if inserted is None:  # another association committed a job for it meanwhile
                row = conn.execute(
                    f"SELECT id, state, content_hash FROM jobs WHERE sop_instance_uid = ? "
                    f"AND state IN ({open_marks}) ORDER BY id DESC LIMIT 1",
                    (new.sop_instance_uid, *open_values),
                ).fetchone()
                if row is None:
                    raise StoreError(
                        f"job for {new.sop_instance_uid} neither inserted nor found open"
                    )
                self._refresh_content(conn, row, new)
                return Admission(int(row["id"]), "open")
            job_id = int(inserted["id"])
            self._event(conn, job_id, JobState.RECEIVED, now)
            return Admission(job_id, "created")

    @staticmethod
    def _refresh_content(conn: Connection, row: Row, new: NewJob) -> None:
        if (
            new.content_hash
            and row["content_hash"] != new.content_hash
            and row["state"] == JobState.RECEIVED.value
        ):
            conn.execute(
                "UPDATE jobs SET content_hash = ? WHERE id = ? AND state = ?",
                (new.content_hash, row["id"], JobState.RECEIVED.value),
            )

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
        marks = ",".join("?" * len(states))
        with self._transaction() as conn:
            row = conn.execute(
                f"SELECT * FROM jobs WHERE state IN ({marks}) "
                "AND (next_attempt_at IS NULL OR next_attempt_at <= ?) ORDER BY id LIMIT 1"
                + self.backend.skip_locked,
                (*[s.value for s in states], now),
            ).fetchone()
            if row is None:
                return None
            # e.g. processing_at: when a worker took it (the "received" stage ends there).
            timings = {**json.loads(row["timings"]), f"{to.value.lower()}_at": now}
            conn.execute(
                "UPDATE jobs SET state = ?, updated_at = ?, timings = ?, owner = ?, "
                "heartbeat_at = ? WHERE id = ?",
                (to.value, now, json.dumps(timings), owner, now, row["id"]),
            )
            self._event(conn, int(row["id"]), to, now, f"by {owner}" if owner else "")
        return self.get(int(row["id"]))

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
        sets: list[str] = ["updated_at = ?"]
        values: list[Any] = [now]
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
                sets.append(f"{column} = ?")
                values.append(value)
        if clear_next_attempt:
            sets.append("next_attempt_at = NULL")
        if clear_send_failure:
            sets.append("first_send_failure_at = NULL")
        with self._transaction() as conn:
            if timings:
                row = conn.execute("SELECT timings FROM jobs WHERE id = ?", (job_id,)).fetchone()
                merged = {**(json.loads(row["timings"]) if row else {}), **timings}
                sets.append("timings = ?")
                values.append(json.dumps(merged))
            cur = conn.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", (*values, job_id))
            if state is not None and cur.rowcount:
                self._event(conn, job_id, state, now, reason or "")

    def heartbeat(self, job_ids: Sequence[int], owner: str, *, now: float | None = None) -> int:
        """Mark the claims ``owner`` still holds as alive; returns how many it holds.

        Only jobs still PROCESSING or SENDING under ``owner`` are touched: a
        claim the stale sweep took back stays taken back.
        """
        if not job_ids:
            return 0
        now = time.time() if now is None else now
        with self._transaction() as conn:
            cur = conn.execute(
                f"UPDATE jobs SET heartbeat_at = ? WHERE owner = ? AND state IN (?, ?) "
                f"AND id IN ({_marks(job_ids)})",
                (now, owner, JobState.PROCESSING.value, JobState.SENDING.value, *job_ids),
            )
            return int(cur.rowcount)

    def recover(
        self,
        *,
        owner: str | None = None,
        stale_after_s: float | None = None,
        crashed: bool = True,
        now: float | None = None,
    ) -> dict[str, int]:
        """Put interrupted work back: PROCESSING -> RECEIVED, SENDING -> RETRYING (due now).

        With no arguments every such job is taken back (one node on its own
        SQLite store, at start-up). When several processes share a store, a
        process takes back its own jobs (``owner``) and those whose holder
        has shown no sign of life (heartbeat, else last update) for
        ``stale_after_s`` (it died).

        A PROCESSING job taken back is a crashed attempt: the process died
        while it held it, perhaps because of it. After ``quarantine_after``
        such attempts it is FAILED ("quarantined after N crashed attempts")
        instead, and never claimed again (counts under ``quarantined``).
        ``crashed=False``: a process stopping in order hands back the work it
        could not finish; that is no crashed attempt.
        """
        now = time.time() if now is None else now
        scope, args = "", list[Any]()
        if owner is not None or stale_after_s is not None:
            parts = []
            if owner is not None:
                parts.append("owner = ?")
                args.append(owner)
            if stale_after_s is not None:
                cutoff = now - stale_after_s
                parts.append("(updated_at < ? AND (heartbeat_at IS NULL OR heartbeat_at < ?))")
                args.extend((cutoff, cutoff))
            scope = " AND (" + " OR ".join(parts) + ")"
        counts = {"processing": 0, "sending": 0, "quarantined": 0}
        with self._transaction() as conn:
            for state, to, key in (
                (JobState.PROCESSING, JobState.RECEIVED, "processing"),
                (JobState.SENDING, JobState.RETRYING, "sending"),
            ):
                rows = conn.execute(
                    f"SELECT id, crashes FROM jobs WHERE state = ?{scope}"
                    + self.backend.skip_locked,
                    (state.value, *args),
                ).fetchall()
                for row in rows:
                    job_id = int(row["id"])
                    if to is JobState.RECEIVED:
                        crashes = int(row["crashes"]) + (1 if crashed else 0)
                        if crashes >= self.quarantine_after:
                            reason = QUARANTINE_REASON.format(n=crashes)
                            conn.execute(
                                "UPDATE jobs SET state = ?, reason = ?, crashes = ?, "
                                "updated_at = ?, owner = '', heartbeat_at = NULL WHERE id = ?",
                                (JobState.FAILED.value, reason, crashes, now, job_id),
                            )
                            self._event(conn, job_id, JobState.FAILED, now, reason)
                            counts["quarantined"] += 1
                            continue
                        conn.execute(
                            "UPDATE jobs SET state = ?, crashes = ?, updated_at = ?, owner = '', "
                            "heartbeat_at = NULL WHERE id = ?",
                            (to.value, crashes, now, job_id),
                        )
                        detail = (
                            f"recovered after a restart (crashed attempt {crashes})"
                            if crashed
                            else "handed back by a process stopping in order"
                        )
                    else:
                        conn.execute(
                            "UPDATE jobs SET state = ?, updated_at = ?, owner = '', "
                            "heartbeat_at = NULL, next_attempt_at = ? WHERE id = ?",
                            (to.value, now, now, job_id),
                        )
                        detail = "recovered after a restart"
                    self._event(conn, job_id, to, now, detail)
                    counts[key] += 1
            self._add_counters(conn, {"quarantined": counts["quarantined"]})
        return counts

    # -- admin transitions (safe while workers run) -------------------------
    def retry(
        self, job_id: int, *, detail: str = "retry requested", now: float | None = None
    ) -> Job:
        """Send a FAILED or RETRYING job's existing results again, due now.

        The give-up clock starts again; attempts keep counting. Raises
        :class:`JobNotFound`, or :class:`JobConflict` when the job is in
        another state (a worker may have just taken it) or has no results.
        """
        now = time.time() if now is None else now
        with self._transaction() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(f"job {job_id} does not exist")
            job = _row_to_job(row)
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
            cur = conn.execute(
                "UPDATE jobs SET state = ?, next_attempt_at = ?, first_send_failure_at = NULL, "
                "updated_at = ? WHERE id = ? AND state = ?",
                (JobState.RETRYING.value, now, now, job_id, job.state.value),
            )
            if cur.rowcount != 1:
                raise JobConflict(f"job {job_id} changed state meanwhile; try again")
            self._event(conn, job_id, JobState.RETRYING, now, detail)
        return self._get_existing(job_id)

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
        with self._transaction() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFound(f"job {job_id} does not exist")
            job = _row_to_job(row)
            if job.state not in TERMINAL:
                raise JobConflict(
                    f"job {job_id} is {job.state.value}: only DONE, FAILED or SKIPPED jobs can "
                    "be reprocessed"
                )
            open_states = [s.value for s in JobState if s not in TERMINAL]
            other = conn.execute(
                f"SELECT id FROM jobs WHERE sop_instance_uid = ? AND id <> ? "
                f"AND state IN ({_marks(open_states)})",
                (job.sop_instance_uid, job_id, *open_states),
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
            cur = conn.execute(
                "UPDATE jobs SET state = ?, reason = '', attempts = 0, next_attempt_at = NULL, "
                "first_send_failure_at = NULL, results = '{}', delivered = '[]', timings = ?, "
                "crashes = 0, generation = generation + 1, updated_at = ? "
                "WHERE id = ? AND state = ?",
                (
                    JobState.RECEIVED.value,
                    json.dumps({"received_at": now}),
                    now,
                    job_id,
                    job.state.value,
                ),
            )
            if cur.rowcount != 1:
                raise JobConflict(f"job {job_id} changed state meanwhile; try again")
            self._event(conn, job_id, JobState.RECEIVED, now, detail)
        return self._get_existing(job_id)

    # -- association audit ------------------------------------------------
    def association_opened(
        self, association_id: str, calling_ae_title: str, address: str, *, now: float | None = None
    ) -> None:
        now = time.time() if now is None else now
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO associations (association_id, calling_ae_title, address, "
                "started_at, outcome) VALUES (?,?,?,?,?)",
                (association_id, calling_ae_title, address, now, "open"),
            )

    def association_rejected(
        self, association_id: str, calling_ae_title: str, address: str, *, now: float | None = None
    ) -> None:
        now = time.time() if now is None else now
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO associations (association_id, calling_ae_title, address, "
                "started_at, ended_at, outcome) VALUES (?,?,?,?,?,?)",
                (association_id, calling_ae_title, address, now, now, "rejected"),
            )

    def association_closed(
        self, association_id: str, instances: int, outcome: str, *, now: float | None = None
    ) -> None:
        """Close the newest open row with this id (ids are reused once an association is gone)."""
        if outcome not in ASSOCIATION_OUTCOMES:
            raise ValueError(
                f"association outcome {outcome!r} is not one of {ASSOCIATION_OUTCOMES}"
            )
        now = time.time() if now is None else now
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT id FROM associations WHERE association_id = ? AND ended_at IS NULL "
                "ORDER BY id DESC LIMIT 1",
                (association_id,),
            ).fetchone()
            if row is None:
                return
            conn.execute(
                "UPDATE associations SET ended_at = ?, instances = ?, outcome = ? WHERE id = ?",
                (now, instances, outcome, row["id"]),
            )

    def associations(
        self,
        *,
        since: float | None = None,
        until: float | None = None,
        calling_ae_title: str | None = None,
        outcome: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[Association], int]:
        """Newest first, with the total number matching."""
        clauses: list[str] = []
        args: list[Any] = []
        for clause, value in (
            ("started_at >= ?", since),
            ("started_at < ?", until),
            ("calling_ae_title = ?", calling_ae_title),
            ("outcome = ?", outcome),
        ):
            if value is not None:
                clauses.append(clause)
                args.append(value)
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        conn = self._connection()
        rows = conn.execute(
            f"SELECT * FROM associations{where} ORDER BY id DESC LIMIT ? OFFSET ?",
            (*args, limit, offset),
        ).fetchall()
        total = _count(conn, f"SELECT COUNT(*) FROM associations{where}", args)
        return [_row_to_association(r) for r in rows], total

    def association_counts(self) -> dict[str, int]:
        rows = (
            self._connection()
            .execute("SELECT outcome, COUNT(*) AS n FROM associations GROUP BY outcome")
            .fetchall()
        )
        found = {row["outcome"]: int(row["n"]) for row in rows}
        deleted = self.counters()  # rows retention deleted still count
        return {
            outcome: found.get(outcome, 0) + deleted.get(f"deleted_associations.{outcome}", 0)
            for outcome in ASSOCIATION_OUTCOMES
        }

    # -- reads ------------------------------------------------------------
    def _get_existing(self, job_id: int) -> Job:
        job = self.get(job_id)
        if job is None:
            raise JobNotFound(f"job {job_id} does not exist")
        return job

    def find(self, where: JobFilter, *, limit: int = 50, offset: int = 0) -> tuple[list[Job], int]:
        """Jobs matching ``where``, newest first, with the total number matching."""
        sql, args = _filter_sql(where)
        conn = self._connection()
        rows = conn.execute(
            f"SELECT * FROM jobs{sql} ORDER BY id DESC LIMIT ? OFFSET ?", (*args, limit, offset)
        ).fetchall()
        total = _count(conn, f"SELECT COUNT(*) FROM jobs{sql}", args)
        return [_row_to_job(row) for row in rows], total

    def events(self, job_id: int) -> list[JobEvent]:
        """The job's state changes, and its notes (state: the job's then), oldest first.

        Notes (a duplicate ignored) have negative ids, so they never pass for
        a state change's id.
        """
        conn = self._connection()

        def read(table: str, sign: int) -> list[JobEvent]:
            rows = conn.execute(f"SELECT * FROM {table} WHERE job_id = ? ORDER BY id", (job_id,))
            return [
                JobEvent(
                    id=sign * int(r["id"]),
                    job_id=int(r["job_id"]),
                    at=float(r["at"]),
                    state=JobState(r["state"]),
                    detail=str(r["detail"]),
                )
                for r in rows.fetchall()
            ]

        merged = read("job_events", 1)  # in the order they happened (ids)
        for note in read("job_notes", -1):  # each after the last change before it
            later = [i for i, e in enumerate(merged) if e.id > 0 and e.at > note.at]
            merged.insert(later[0] if later else len(merged), note)
        return merged

    def counters(self) -> dict[str, int]:
        """Running totals kept in the store (retention, duplicates, quarantine, offsets)."""
        rows = self._connection().execute("SELECT name, value FROM counters").fetchall()
        return {str(r["name"]): int(r["value"]) for r in rows}

    def _counter(self, name: str) -> int:
        return _count(self._connection(), "SELECT value FROM counters WHERE name = ?", (name,))

    def event_count(self, state: JobState, *, job_id: int | None = None) -> int:
        """How many times jobs (or one job) entered ``state``: e.g. retries for RETRYING.

        For all jobs, the events retention deleted still count (a counter never goes down).
        """
        query = "SELECT COUNT(*) FROM job_events WHERE state = ?"
        args: list[Any] = [state.value]
        if job_id is not None:
            query += " AND job_id = ?"
            args.append(job_id)
            return _count(self._connection(), query, args)
        return _count(self._connection(), query, args) + self._counter(
            f"deleted_events.{state.value}"
        )

    def event_times(self, state: JobState, *, since: float) -> list[float]:
        """When jobs entered ``state`` since a time (throughput), oldest first."""
        rows = (
            self._connection()
            .execute(
                "SELECT at FROM job_events WHERE state = ? AND at >= ? ORDER BY at",
                (state.value, since),
            )
            .fetchall()
        )
        return [float(r["at"]) for r in rows]

    def finished_timings(self, *, since: float) -> list[dict[str, float]]:
        """Timings of the jobs that became DONE since a time (latency percentiles)."""
        rows = (
            self._connection()
            .execute(
                "SELECT j.timings FROM job_events e JOIN jobs j ON j.id = e.job_id "
                "WHERE e.state = ? AND e.at >= ? ORDER BY e.id",
                (JobState.DONE.value, since),
            )
            .fetchall()
        )
        return [json.loads(r["timings"]) for r in rows]

    def finished_after(
        self, event_id: int, *, limit: int = 1000
    ) -> list[tuple[int, dict[str, float]]]:
        """(event id, timings) of DONE events after ``event_id``: metrics read them once each."""
        rows = (
            self._connection()
            .execute(
                "SELECT e.id, j.timings FROM job_events e JOIN jobs j ON j.id = e.job_id "
                "WHERE e.state = ? AND e.id > ? ORDER BY e.id LIMIT ?",
                (JobState.DONE.value, event_id, limit),
            )
            .fetchall()
        )
        return [(int(r["id"]), json.loads(r["timings"])) for r in rows]

    def last_event_id(self) -> int:
        return _count(self._connection(), "SELECT MAX(id) FROM job_events")

    def queue_depth(self, *, now: float | None = None) -> int:
        """Jobs waiting for a worker: RECEIVED, and RETRYING whose next attempt is due."""
        now = time.time() if now is None else now
        return _count(
            self._connection(),
            "SELECT COUNT(*) FROM jobs WHERE state = ? OR (state = ? AND "
            "(next_attempt_at IS NULL OR next_attempt_at <= ?))",
            (JobState.RECEIVED.value, JobState.RETRYING.value, now),
        )

    def delivered_count(self, destination: str) -> int:
        """Jobs whose results reached ``destination``."""
        sql, args = _filter_sql(JobFilter(destination=destination))
        return _count(self._connection(), f"SELECT COUNT(*) FROM jobs{sql}", args)

    def get(self, job_id: int) -> Job | None:
        row = self._connection().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _row_to_job(row)

    def list(self, *, state: JobState | None = None, limit: int = 50, offset: int = 0) -> list[Job]:
        query = "SELECT * FROM jobs"
        args: list[Any] = []
        if state is not None:
            query += " WHERE state = ?"
            args.append(state.value)
        query += " ORDER BY id DESC LIMIT ? OFFSET ?"
        rows = self._connection().execute(query, (*args, limit, offset)).fetchall()
        return [_row_to_job(row) for row in rows]

    def counts(self) -> dict[str, int]:
        rows = (
            self._connection()
            .execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
            .fetchall()
        )
        found = {row["state"]: int(row["n"]) for row in rows}
        return {state.value: found.get(state.value, 0) for state in JobState}

    # -- retention (service/retention.py) ----------------------------------
    def add_counters(self, amounts: dict[str, int]) -> None:
        """Add to running totals (created at zero)."""
        with self._transaction() as conn:
            self._add_counters(conn, amounts)

    def purge_candidates(
        self, *, finished_before: float | None = None, limit: int = 200
    ) -> builtins.list[Job]:
        """Finished jobs whose files are still kept, the longest finished first."""
        terminal = [s.value for s in TERMINAL]
        query = f"SELECT * FROM jobs WHERE purged_at IS NULL AND state IN ({_marks(terminal)})"
        args: list[Any] = list(terminal)
        if finished_before is not None:
            query += " AND updated_at < ?"
            args.append(finished_before)
        rows = (
            self._connection()
            .execute(query + " ORDER BY updated_at, id LIMIT ?", (*args, limit))
            .fetchall()
        )
        return [_row_to_job(r) for r in rows]

    def mark_purged(self, job_id: int, *, now: float | None = None) -> bool:
        """Record that a finished job's files go now; False if it is no longer a candidate
        (reprocessed meanwhile, or another sweep took it)."""
        now = time.time() if now is None else now
        terminal = [s.value for s in TERMINAL]
        with self._transaction() as conn:
            cur = conn.execute(
                f"UPDATE jobs SET purged_at = ? WHERE id = ? AND purged_at IS NULL "
                f"AND state IN ({_marks(terminal)})",
                (now, job_id, *terminal),
            )
            return cur.rowcount == 1

    def path_in_use(self, path: str, *, besides: int) -> bool:
        """Another job whose files are kept has this spool path (same SOP Instance UID)."""
        row = (
            self._connection()
            .execute(
                "SELECT id FROM jobs WHERE path = ? AND id <> ? AND purged_at IS NULL LIMIT 1",
                (path, besides),
            )
            .fetchone()
        )
        return row is not None

    def delete_finished(self, *, finished_before: float, limit: int = 500) -> dict[str, int]:
        """Delete the rows (job, events, notes) of jobs finished and purged before a time.

        Their events stay counted (``deleted_events.STATE``), so the Prometheus
        totals never go down.
        """
        terminal = [s.value for s in TERMINAL]
        counts = {"job_rows": 0, "event_rows": 0}
        with self._transaction() as conn:
            rows = conn.execute(
                f"SELECT id FROM jobs WHERE purged_at IS NOT NULL AND updated_at < ? "
                f"AND state IN ({_marks(terminal)}) ORDER BY id LIMIT ?" + self.backend.skip_locked,
                (finished_before, *terminal, limit),
            ).fetchall()
            ids = [int(r["id"]) for r in rows]
            if not ids:
                return counts
            marks = _marks(ids)
            by_state = conn.execute(
                f"SELECT state, COUNT(*) AS n FROM job_events WHERE job_id IN ({marks}) "
                "GROUP BY state",
                ids,
            ).fetchall()
            counts["event_rows"] = conn.execute(
                f"DELETE FROM job_events WHERE job_id IN ({marks})", ids
            ).rowcount
            conn.execute(f"DELETE FROM job_notes WHERE job_id IN ({marks})", ids)
            counts["job_rows"] = conn.execute(
                f"DELETE FROM jobs WHERE id IN ({marks})", ids
            ).rowcount
            self._add_counters(
                conn,
                {
                    **{f"deleted_events.{r['state']}": int(r["n"]) for r in by_state},
                    "retention.job_rows": counts["job_rows"],
                    "retention.event_rows": counts["event_rows"],
                },
            )
        return counts

    def delete_associations(self, *, started_before: float, limit: int = 5000) -> int:
        """Delete audit rows of associations started before a time; they stay counted.

        A row still "open" that old belongs to a process that died: it counts as aborted.
        """
        with self._transaction() as conn:
            rows = conn.execute(
                "SELECT id, outcome FROM associations WHERE started_at < ? ORDER BY id LIMIT ?"
                + self.backend.skip_locked,
                (started_before, limit),
            ).fetchall()
            if not rows:
                return 0
            ids = [int(r["id"]) for r in rows]
            deleted = conn.execute(
                f"DELETE FROM associations WHERE id IN ({_marks(ids)})", ids
            ).rowcount
            amounts: dict[str, int] = {"retention.association_rows": deleted}
            for r in rows:
                outcome = "aborted" if r["outcome"] == "open" else str(r["outcome"])
                key = f"deleted_associations.{outcome}"
                amounts[key] = amounts.get(key, 0) + 1
            self._add_counters(conn, amounts)
            return int(deleted)

    def is_writable(self) -> bool:
        """Readiness: can we still write a transaction?"""
        try:
            with self._transaction() as conn:
                conn.execute("UPDATE alembic_version SET version_num = version_num")
        except Exception:  # noqa: BLE001 - any backend error means "not writable"
            return False
        return True

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
