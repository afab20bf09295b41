"""SQL the store's roles share: events, notes, counters, one job, the listing filter.

Each takes the borrowed connection of the caller's transaction
(``service.db.Pool.write`` or ``read``), so it commits or rolls back with it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from service.db import Connection
from service.store.records import (
    STATE_EVENTS,
    Job,
    JobFilter,
    JobState,
    NoticeState,
    job_notice_body,
    row_to_job,
)


def count(conn: Connection, query: str, params: Mapping[str, Any] | None = None) -> int:
    """The single number a COUNT or MAX query answers (0 for NULL)."""
    row = conn.execute(query, params).fetchone()
    return int(row[0] or 0) if row is not None else 0


def get_job(conn: Connection, job_id: int) -> Job | None:
    row = conn.execute("SELECT * FROM jobs WHERE id = :id", {"id": job_id}).fetchone()
    return None if row is None else row_to_job(row)


def add_event(conn: Connection, job_id: int, state: JobState, at: float, detail: str = "") -> None:
    """One state change of a job, in ``job_events`` (throughput and retries come from these)."""
    conn.execute(
        "INSERT INTO job_events (job_id, at, state, detail) VALUES (:job, :at, :state, :detail)",
        {"job": job_id, "at": at, "state": state.value, "detail": detail},
    )


def add_notices(
    conn: Connection,
    *,
    event: str,
    body: Mapping[str, Any],
    urls: Sequence[str],
    at: float,
    job_id: int | None = None,
) -> int:
    """One PENDING webhook notice per receiver URL, due now; returns how many.

    Written in the caller's transaction, so a notice exists exactly when its event
    does; the sender (service/webhooks.py) delivers it later.
    """
    text = json.dumps(body, separators=(",", ":"), sort_keys=True)
    for url in urls:
        conn.execute(
            "INSERT INTO webhook_notices (delivery_id, event, url, job_id, body, state, "
            "attempts, created_at, updated_at, next_attempt_at, last_error) VALUES "
            "(:delivery, :event, :url, :job, :body, :state, 0, :at, :at, :at, '')",
            {
                "delivery": str(uuid.uuid4()),
                "event": event,
                "url": url,
                "job": job_id,
                "body": text,
                "state": NoticeState.PENDING.value,
                "at": at,
            },
        )
    return len(urls)


def add_job_notices(
    conn: Connection, job_id: int, state: JobState, at: float, urls: Sequence[str]
) -> int:
    """The webhook notices of a job that has just become DONE or FAILED (0 otherwise)."""
    event = STATE_EVENTS.get(state.value)
    job = get_job(conn, job_id) if event and urls else None
    if event is None or job is None:
        return 0
    return add_notices(
        conn, event=event, body=job_notice_body(job, event, at), urls=urls, at=at, job_id=job_id
    )


def add_note(conn: Connection, job_id: int, state: JobState, at: float, detail: str) -> None:
    """Something that happened to a job without a state change (not counted as one)."""
    conn.execute(
        "INSERT INTO job_notes (job_id, at, state, detail) VALUES (:job, :at, :state, :detail)",
        {"job": job_id, "at": at, "state": state.value, "detail": detail},
    )


def add_counters(conn: Connection, amounts: Mapping[str, int]) -> None:
    """Add to running totals (created at zero); they outlive the rows retention deletes."""
    for name, amount in amounts.items():
        if amount:
            conn.execute(
                "INSERT INTO counters (name, value) VALUES (:name, :amount) "
                "ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value",
                {"name": name, "amount": int(amount)},
            )


def exam_arrival(conn: Connection, study_uid: str, now: float) -> None:
    """A new image of ``study_uid`` arrived: its exam is OPEN again, the stable clock restarts.

    A WRITTEN exam reopens as the next version (its next exam SR gets new
    UIDs, service/exams.py); a COMPLETE one not yet written waits for the new
    image too. The SET expressions read the row as it was (both backends).
    """
    if not study_uid:
        return
    conn.execute(
        "INSERT INTO exams (study_instance_uid, state, version, created_at, updated_at, "
        "last_arrival_at) VALUES (:study, :open, 1, :now, :now, :now) "
        "ON CONFLICT (study_instance_uid) DO UPDATE SET "
        "version = CASE WHEN exams.state = :written THEN exams.version + 1 "
        "ELSE exams.version END, "
        "complete_at = CASE WHEN exams.state = :written THEN NULL ELSE exams.complete_at END, "
        "state = :open, last_arrival_at = :now, updated_at = :now",
        {"study": study_uid, "open": "OPEN", "written": "WRITTEN", "now": now},
    )


def read_counters(conn: Connection) -> dict[str, int]:
    rows = conn.execute("SELECT name, value FROM counters").fetchall()
    return {str(r["name"]): int(r["value"]) for r in rows}


def like_escaped(text: str) -> str:
    """``text`` as a literal inside a LIKE pattern with ``ESCAPE '\\'``."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def filter_sql(where: JobFilter) -> tuple[str, dict[str, Any]]:
    """The WHERE clause (or "") and its parameters for a job listing."""
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if where.states:
        clauses.append("state IN :f_states")
        params["f_states"] = [JobState(s).value for s in where.states]
    if where.since is not None:
        clauses.append("created_at >= :f_since")
        params["f_since"] = where.since
    if where.until is not None:
        clauses.append("created_at < :f_until")
        params["f_until"] = where.until
    if where.destination:
        # delivered is a JSON list of names: match the quoted name as a whole.
        clauses.append("delivered LIKE :f_destination ESCAPE '\\'")
        params["f_destination"] = f'%"{like_escaped(where.destination)}"%'
    if where.calling_ae_title:
        clauses.append("calling_ae_title = :f_calling")
        params["f_calling"] = where.calling_ae_title
    if where.query:
        # Exact match on one of three indexed columns (jobs_accession, jobs_study, jobs_sop).
        clauses.append(
            "(accession_number = :f_query OR study_instance_uid = :f_query "
            "OR sop_instance_uid = :f_query)"
        )
        params["f_query"] = where.query
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params
