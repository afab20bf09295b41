"""The job store: one row per received instance, SQLite in WAL mode.

A job is committed before the C-STORE success goes back (DESIGN.md, data
flow). Workers claim jobs in an ``IMMEDIATE`` transaction so two workers never
take the same one. No patient data is stored here: UIDs, states, timings.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any


class StoreError(Exception):
    """The job store cannot be used (open, write or schema problems)."""


class JobState(StrEnum):
    RECEIVED = "RECEIVED"
    PROCESSING = "PROCESSING"
    SENDING = "SENDING"
    RETRYING = "RETRYING"
    DONE = "DONE"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"


TERMINAL = frozenset({JobState.DONE, JobState.FAILED, JobState.SKIPPED})


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


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    calling_ae_title TEXT NOT NULL,
    association_id TEXT NOT NULL,
    path TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    first_send_failure_at REAL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    timings TEXT NOT NULL DEFAULT '{}',
    results TEXT NOT NULL DEFAULT '{}',
    delivered TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS jobs_sop ON jobs (sop_instance_uid);
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
"""
SCHEMA_VERSION = 1
_JSON_COLUMNS = ("timings", "results", "delivered")


def _row_to_job(row: sqlite3.Row) -> Job:
    values = dict(row)
    for column in _JSON_COLUMNS:
        values[column] = json.loads(values[column])
    values["state"] = JobState(values["state"])
    return Job(**values)


class JobStore:
    """Thread-safe access to the SQLite job table (one connection per thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._connection().executescript(_SCHEMA)
            with self._transaction() as conn:
                if conn.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 0:
                    conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open the job store at {path}: {exc}") from exc

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    # -- writes -----------------------------------------------------------
    def add(self, new: NewJob, *, now: float | None = None) -> tuple[int, bool]:
        """Commit a job for a received instance; returns (job id, created).

        An instance received again while its job is still open (a sender's
        retry) does not make a second job: results are delivered once.
        """
        now = time.time() if now is None else now
        with self._transaction() as conn:
            open_states = [s.value for s in JobState if s not in TERMINAL]
            row = conn.execute(
                f"SELECT id FROM jobs WHERE sop_instance_uid = ? AND state IN "
                f"({','.join('?' * len(open_states))}) ORDER BY id DESC LIMIT 1",
                (new.sop_instance_uid, *open_states),
            ).fetchone()
            if row is not None:
                return int(row["id"]), False
            cur = conn.execute(
                "INSERT INTO jobs (sop_instance_uid, sop_class_uid, study_instance_uid, "
                "series_instance_uid, transfer_syntax_uid, calling_ae_title, association_id, "
                "path, state, created_at, updated_at, timings) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
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
                ),
            )
            return int(cur.lastrowid or 0), True

    def claim(
        self, states: Sequence[JobState], to: JobState, *, now: float | None = None
    ) -> Job | None:
        """Atomically take the oldest due job in one of ``states`` and move it to ``to``."""
        now = time.time() if now is None else now
        marks = ",".join("?" * len(states))
        with self._transaction() as conn:
            row = conn.execute(
                f"SELECT * FROM jobs WHERE state IN ({marks}) "
                "AND (next_attempt_at IS NULL OR next_attempt_at <= ?) ORDER BY id LIMIT 1",
                (*[s.value for s in states], now),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE jobs SET state = ?, updated_at = ? WHERE id = ?", (to.value, now, row["id"])
            )
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
            conn.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", (*values, job_id))

    def recover(self) -> dict[str, int]:
        """After a crash: PROCESSING goes back to RECEIVED, SENDING to RETRYING (due now)."""
        now = time.time()
        with self._transaction() as conn:
            processing = conn.execute(
                "UPDATE jobs SET state = ?, updated_at = ? WHERE state = ?",
                (JobState.RECEIVED.value, now, JobState.PROCESSING.value),
            ).rowcount
            sending = conn.execute(
                "UPDATE jobs SET state = ?, next_attempt_at = ?, updated_at = ? WHERE state = ?",
                (JobState.RETRYING.value, now, now, JobState.SENDING.value),
            ).rowcount
        return {"processing": processing, "sending": sending}

    # -- reads ------------------------------------------------------------
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

    def is_writable(self) -> bool:
        """Readiness: can we still write a transaction?"""
        try:
            with self._transaction() as conn:
                conn.execute("UPDATE schema_version SET version = version")
        except sqlite3.Error:
            return False
        return True

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
