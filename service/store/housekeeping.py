"""Housekeeping for retention (service/retention.py): what may go, and the rows that go.

Who calls it: the retention sweep only. Files are deleted by the sweep; here
the store marks a job's files as gone (``purged_at``) and deletes old rows. The
counters each deletion adds make the Prometheus totals survive it.
"""

from __future__ import annotations

import time
from typing import Any

from service.db import Pool
from service.store.records import TERMINAL, Job, row_to_job
from service.store.sql import add_counters

_TERMINAL_STATES = [s.value for s in TERMINAL]


class Housekeeping:
    """Purge candidates, purge marks, and the deletion of finished rows."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def add_counters(self, amounts: dict[str, int]) -> None:
        """Add to running totals (created at zero)."""
        with self.pool.write() as conn:
            add_counters(conn, amounts)

    def purge_candidates(
        self, *, finished_before: float | None = None, limit: int = 200
    ) -> list[Job]:
        """Finished jobs whose files are still kept, the longest finished first."""
        query = "SELECT * FROM jobs WHERE purged_at IS NULL AND state IN :terminal"
        params: dict[str, Any] = {"terminal": _TERMINAL_STATES, "limit": limit}
        if finished_before is not None:
            query += " AND updated_at < :before"
            params["before"] = finished_before
        with self.pool.read() as conn:
            rows = conn.execute(query + " ORDER BY updated_at, id LIMIT :limit", params).fetchall()
        return [row_to_job(r) for r in rows]

    def mark_purged(self, job_id: int, *, now: float | None = None) -> bool:
        """Record that a finished job's files go now; False if it is no longer a candidate
        (reprocessed meanwhile, or another sweep took it)."""
        now = time.time() if now is None else now
        with self.pool.write() as conn:
            cur = conn.execute(
                "UPDATE jobs SET purged_at = :now WHERE id = :id AND purged_at IS NULL "
                "AND state IN :terminal",
                {"now": now, "id": job_id, "terminal": _TERMINAL_STATES},
            )
            return cur.rowcount == 1

    def path_in_use(self, path: str, *, besides: int) -> bool:
        """Another job whose files are kept has this spool path (same SOP Instance UID)."""
        with self.pool.read() as conn:
            row = conn.execute(
                "SELECT id FROM jobs WHERE path = :path AND id <> :besides AND purged_at IS NULL "
                "LIMIT 1",
                {"path": path, "besides": besides},
            ).fetchone()
        return row is not None

    def delete_finished(self, *, finished_before: float, limit: int = 500) -> dict[str, int]:
        """Delete the rows (job, events, notes) of jobs finished and purged before a time.

        Their events stay counted (``deleted_events.STATE``), so the Prometheus
        totals never go down.
        """
        counts = {"job_rows": 0, "event_rows": 0}
        with self.pool.write() as conn:
            rows = conn.execute(
                "SELECT id FROM jobs WHERE purged_at IS NOT NULL AND updated_at < :before "
                "AND state IN :terminal ORDER BY id LIMIT :limit" + conn.backend.skip_locked,
                {"before": finished_before, "terminal": _TERMINAL_STATES, "limit": limit},
            ).fetchall()
            ids = {"ids": [int(r["id"]) for r in rows]}
            if not ids["ids"]:
                return counts
            by_state = conn.execute(
                "SELECT state, COUNT(*) AS n FROM job_events WHERE job_id IN :ids GROUP BY state",
                ids,
            ).fetchall()
            counts["event_rows"] = conn.execute(
                "DELETE FROM job_events WHERE job_id IN :ids", ids
            ).rowcount
            conn.execute("DELETE FROM job_notes WHERE job_id IN :ids", ids)
            conn.execute("DELETE FROM commitments WHERE job_id IN :ids", ids)
            counts["job_rows"] = conn.execute("DELETE FROM jobs WHERE id IN :ids", ids).rowcount
            add_counters(
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
        with self.pool.write() as conn:
            rows = conn.execute(
                "SELECT id, outcome FROM associations WHERE started_at < :before ORDER BY id "
                "LIMIT :limit" + conn.backend.skip_locked,
                {"before": started_before, "limit": limit},
            ).fetchall()
            if not rows:
                return 0
            deleted = conn.execute(
                "DELETE FROM associations WHERE id IN :ids", {"ids": [int(r["id"]) for r in rows]}
            ).rowcount
            amounts: dict[str, int] = {"retention.association_rows": deleted}
            for r in rows:
                outcome = "aborted" if r["outcome"] == "open" else str(r["outcome"])
                key = f"deleted_associations.{outcome}"
                amounts[key] = amounts.get(key, 0) + 1
            add_counters(conn, amounts)
            return int(deleted)
