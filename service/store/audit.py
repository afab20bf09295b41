"""The association audit: who called, from where, when, how many instances, how it ended.

Who calls it: the storage SCP's association callbacks (service/node.py,
``association_audit``) write; the dashboard, the API and ``/metrics`` read.
No patient data: AE titles, addresses, times and counts.
"""

from __future__ import annotations

import time
from typing import Any

from service.db import Pool
from service.store.records import ASSOCIATION_OUTCOMES, Association, row_to_association
from service.store.sql import count, read_counters


class AssociationAudit:
    """One row per DICOM association (opened, rejected, closed), and its listings."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def opened(
        self, association_id: str, calling_ae_title: str, address: str, *, now: float | None = None
    ) -> None:
        self._insert(association_id, calling_ae_title, address, now=now, outcome="open")

    def rejected(
        self, association_id: str, calling_ae_title: str, address: str, *, now: float | None = None
    ) -> None:
        self._insert(association_id, calling_ae_title, address, now=now, outcome="rejected")

    def _insert(
        self, association_id: str, calling: str, address: str, *, now: float | None, outcome: str
    ) -> None:
        now = time.time() if now is None else now
        with self.pool.write() as conn:
            conn.execute(
                "INSERT INTO associations (association_id, calling_ae_title, address, "
                "started_at, ended_at, outcome) VALUES (:id, :calling, :address, :now, :ended, "
                ":outcome)",
                {
                    "id": association_id,
                    "calling": calling,
                    "address": address,
                    "now": now,
                    "ended": None if outcome == "open" else now,
                    "outcome": outcome,
                },
            )

    def closed(
        self, association_id: str, instances: int, outcome: str, *, now: float | None = None
    ) -> None:
        """Close the newest open row with this id (ids are reused once an association is gone)."""
        if outcome not in ASSOCIATION_OUTCOMES:
            raise ValueError(
                f"association outcome {outcome!r} is not one of {ASSOCIATION_OUTCOMES}"
            )
        now = time.time() if now is None else now
        with self.pool.write() as conn:
            row = conn.execute(
                "SELECT id FROM associations WHERE association_id = :id AND ended_at IS NULL "
                "ORDER BY id DESC LIMIT 1",
                {"id": association_id},
            ).fetchone()
            if row is None:
                return
            conn.execute(
                "UPDATE associations SET ended_at = :now, instances = :instances, "
                "outcome = :outcome WHERE id = :row",
                {"now": now, "instances": instances, "outcome": outcome, "row": row["id"]},
            )

    def list(
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
        params: dict[str, Any] = {}
        for clause, name, value in (
            ("started_at >= :since", "since", since),
            ("started_at < :until", "until", until),
            ("calling_ae_title = :calling", "calling", calling_ae_title),
            ("outcome = :outcome", "outcome", outcome),
        ):
            if value is not None:
                clauses.append(clause)
                params[name] = value
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        with self.pool.read() as conn:
            rows = conn.execute(
                f"SELECT * FROM associations{where} ORDER BY id DESC LIMIT :limit OFFSET :offset",
                {**params, "limit": limit, "offset": offset},
            ).fetchall()
            total = count(conn, f"SELECT COUNT(*) FROM associations{where}", params)
        return [row_to_association(r) for r in rows], total

    def counts(self) -> dict[str, int]:
        """Associations by outcome, ever (rows retention deleted still count)."""
        with self.pool.read() as conn:
            rows = conn.execute(
                "SELECT outcome, COUNT(*) AS n FROM associations GROUP BY outcome"
            ).fetchall()
            deleted = read_counters(conn)
        found = {row["outcome"]: int(row["n"]) for row in rows}
        return {
            outcome: found.get(outcome, 0) + deleted.get(f"deleted_associations.{outcome}", 0)
            for outcome in ASSOCIATION_OUTCOMES
        }
