"""Read-only views of the jobs: one job, listings, events, counts and running totals.

Who calls it: the dashboard and the REST API (service/api, service/web), the
Prometheus collector (service/metrics.py) and the bench and tests. Nothing
here writes; each call is one consistent snapshot (``Pool.read``).
"""

from __future__ import annotations

import builtins
import json
from typing import Any

from service.db import Pool
from service.store.records import Job, JobEvent, JobFilter, JobState, row_to_job
from service.store.sql import count, filter_sql, get_job, read_counters


class JobReads:
    """Everything the dashboard, the API and the metrics read about jobs."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def get(self, job_id: int) -> Job | None:
        with self.pool.read() as conn:
            return get_job(conn, job_id)

    def list(
        self, *, state: JobState | None = None, limit: int = 50, offset: int = 0
    ) -> builtins.list[Job]:
        """Newest first, optionally in one state (``find`` without its total)."""
        sql, params = filter_sql(JobFilter(states=(state,) if state else ()))
        with self.pool.read() as conn:
            rows = conn.execute(
                f"SELECT * FROM jobs{sql} ORDER BY id DESC LIMIT :limit OFFSET :offset",
                {**params, "limit": limit, "offset": offset},
            ).fetchall()
        return [row_to_job(row) for row in rows]

    def find(
        self, where: JobFilter, *, limit: int = 50, offset: int = 0
    ) -> tuple[builtins.list[Job], int]:
        """Jobs matching ``where``, newest first, with the total number matching."""
        sql, params = filter_sql(where)
        with self.pool.read() as conn:
            rows = conn.execute(
                f"SELECT * FROM jobs{sql} ORDER BY id DESC LIMIT :limit OFFSET :offset",
                {**params, "limit": limit, "offset": offset},
            ).fetchall()
            total = count(conn, f"SELECT COUNT(*) FROM jobs{sql}", params)
        return [row_to_job(row) for row in rows], total

    def events(self, job_id: int) -> builtins.list[JobEvent]:
        """The job's state changes, and its notes (state: the job's then), oldest first.

        Notes (a duplicate ignored) have negative ids, so they never pass for
        a state change's id.
        """
        with self.pool.read() as conn:
            tables = {
                table: conn.execute(
                    f"SELECT * FROM {table} WHERE job_id = :job ORDER BY id", {"job": job_id}
                ).fetchall()
                for table in ("job_events", "job_notes")
            }

        def events_of(table: str, sign: int) -> builtins.list[JobEvent]:
            return [
                JobEvent(
                    id=sign * int(r["id"]),
                    job_id=int(r["job_id"]),
                    at=float(r["at"]),
                    state=JobState(r["state"]),
                    detail=str(r["detail"]),
                )
                for r in tables[table]
            ]

        merged = events_of("job_events", 1)  # in the order they happened (ids)
        for note in events_of("job_notes", -1):  # each after the last change before it
            later = [i for i, e in enumerate(merged) if e.id > 0 and e.at > note.at]
            merged.insert(later[0] if later else len(merged), note)
        return merged

    def counts(self) -> dict[str, int]:
        """Jobs by state now."""
        with self.pool.read() as conn:
            rows = conn.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetchall()
        found = {row["state"]: int(row["n"]) for row in rows}
        return {state.value: found.get(state.value, 0) for state in JobState}

    def counters(self) -> dict[str, int]:
        """Running totals kept in the store (retention, duplicates, quarantine, offsets)."""
        with self.pool.read() as conn:
            return read_counters(conn)

    def event_count(self, state: JobState, *, job_id: int | None = None) -> int:
        """How many times jobs (or one job) entered ``state``: e.g. retries for RETRYING.

        For all jobs, the events retention deleted still count (a counter never goes down).
        """
        query = "SELECT COUNT(*) FROM job_events WHERE state = :state"
        params: dict[str, Any] = {"state": state.value}
        with self.pool.read() as conn:
            if job_id is not None:
                return count(conn, query + " AND job_id = :job", {**params, "job": job_id})
            return count(conn, query, params) + count(
                conn,
                "SELECT value FROM counters WHERE name = :name",
                {"name": f"deleted_events.{state.value}"},
            )

    def event_times(self, state: JobState, *, since: float) -> builtins.list[float]:
        """When jobs entered ``state`` since a time (throughput), oldest first."""
        with self.pool.read() as conn:
            rows = conn.execute(
                "SELECT at FROM job_events WHERE state = :state AND at >= :since ORDER BY at",
                {"state": state.value, "since": since},
            ).fetchall()
        return [float(r["at"]) for r in rows]

    def finished_timings(self, *, since: float) -> builtins.list[dict[str, float]]:
        """Timings of the jobs that became DONE since a time (latency percentiles)."""
        with self.pool.read() as conn:
            rows = conn.execute(
                "SELECT j.timings FROM job_events e JOIN jobs j ON j.id = e.job_id "
                "WHERE e.state = :done AND e.at >= :since ORDER BY e.id",
                {"done": JobState.DONE.value, "since": since},
            ).fetchall()
        return [json.loads(r["timings"]) for r in rows]

    def finished_after(
        self, event_id: int, *, limit: int = 1000
    ) -> builtins.list[tuple[int, dict[str, float]]]:
        """(event id, timings) of DONE events after ``event_id``: metrics read them once each."""
        with self.pool.read() as conn:
            rows = conn.execute(
                "SELECT e.id, j.timings FROM job_events e JOIN jobs j ON j.id = e.job_id "
                "WHERE e.state = :done AND e.id > :after ORDER BY e.id LIMIT :limit",
                {"done": JobState.DONE.value, "after": event_id, "limit": limit},
            ).fetchall()
        return [(int(r["id"]), json.loads(r["timings"])) for r in rows]

    def last_event_id(self) -> int:
        with self.pool.read() as conn:
            return count(conn, "SELECT MAX(id) FROM job_events")

    def delivered_count(self, destination: str) -> int:
        """Jobs whose results reached ``destination``."""
        sql, params = filter_sql(JobFilter(destination=destination))
        with self.pool.read() as conn:
            return count(conn, f"SELECT COUNT(*) FROM jobs{sql}", params)
