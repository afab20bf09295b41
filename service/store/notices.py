"""Webhook notices: events waiting for their receivers, sent, or given up (dead letters).

Who calls it: the job queue writes the notices of DONE and FAILED in the job's own
transaction (``sql.add_job_notices``, from claims.py); other code raises an event
with :meth:`WebhookNotices.notify` (``exam.complete``); the webhook sender of
``serve`` (service/webhooks.py) takes due notices with :meth:`claim_due` and records
each outcome; the API and dashboard list the dead letters and retry one.

A claim leases a notice (``next_attempt_at`` moved past the attempt's timeout), so
two senders on one store never post the same attempt twice at once; a sender that
dies mid-attempt leaves the notice due again when the lease runs out.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from service.db import Pool
from service.store.records import (
    WEBHOOK_EVENTS,
    JobConflict,
    Notice,
    NoticeNotFound,
    NoticeState,
    event_body,
    row_to_notice,
)
from service.store.sql import add_notices, count


class WebhookNotices:
    """Persist, claim, settle and list webhook notices (one row per event and URL)."""

    def __init__(self, pool: Pool, urls: Sequence[str] = ()) -> None:
        self.pool = pool
        self.urls = tuple(urls)

    def notify(
        self,
        event: str,
        payload: Mapping[str, Any],
        *,
        job_id: int | None = None,
        now: float | None = None,
    ) -> int:
        """Raise ``event`` for every receiver; returns how many notices were written.

        ``payload`` goes into the body beside ``event`` and ``time`` (ISO 8601 UTC); it
        must hold identifiers only (UIDs, counts, states), never patient data. With no
        ``webhook_urls`` nothing is written.
        """
        if event not in WEBHOOK_EVENTS:
            raise ValueError(f"unknown webhook event {event!r}; known: {', '.join(WEBHOOK_EVENTS)}")
        if not self.urls:
            return 0
        now = time.time() if now is None else now
        body = event_body(event, payload, now)
        with self.pool.write() as conn:
            return add_notices(conn, event=event, body=body, urls=self.urls, at=now, job_id=job_id)

    def claim_due(
        self, *, lease_s: float, limit: int = 20, now: float | None = None
    ) -> list[Notice]:
        """Take up to ``limit`` due PENDING notices, oldest due first, leased for ``lease_s``.

        Each claim counts as an attempt (``attempts + 1`` in what is returned).
        """
        now = time.time() if now is None else now
        with self.pool.write() as conn:
            rows = conn.execute(
                "SELECT * FROM webhook_notices WHERE state = :pending AND next_attempt_at <= :now "
                "ORDER BY next_attempt_at, id LIMIT :limit" + conn.backend.skip_locked,
                {"pending": NoticeState.PENDING.value, "now": now, "limit": limit},
            ).fetchall()
            claimed = []
            for row in rows:
                conn.execute(
                    "UPDATE webhook_notices SET attempts = attempts + 1, updated_at = :now, "
                    "next_attempt_at = :lease WHERE id = :id",
                    {"now": now, "lease": now + lease_s, "id": row["id"]},
                )
                row["attempts"] = int(row["attempts"]) + 1
                row["updated_at"] = now
                row["next_attempt_at"] = now + lease_s
                claimed.append(row_to_notice(row))
            return claimed

    def delivered(self, notice_id: int, *, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self.pool.write() as conn:
            conn.execute(
                "UPDATE webhook_notices SET state = :state, updated_at = :now, "
                "next_attempt_at = NULL, last_error = '' WHERE id = :id",
                {"state": NoticeState.DELIVERED.value, "now": now, "id": notice_id},
            )

    def failed(
        self, notice_id: int, error: str, *, retry_at: float | None, now: float | None = None
    ) -> None:
        """An attempt failed: due again at ``retry_at``, or (None) a dead letter."""
        now = time.time() if now is None else now
        state = NoticeState.PENDING if retry_at is not None else NoticeState.DEAD
        with self.pool.write() as conn:
            conn.execute(
                "UPDATE webhook_notices SET state = :state, updated_at = :now, "
                "next_attempt_at = :retry_at, last_error = :error WHERE id = :id",
                {
                    "state": state.value,
                    "now": now,
                    "retry_at": retry_at,
                    "error": error[:500],
                    "id": notice_id,
                },
            )

    def dead_letters(self, *, limit: int = 100) -> list[Notice]:
        """The notices given up, newest first."""
        with self.pool.read() as conn:
            rows = conn.execute(
                "SELECT * FROM webhook_notices WHERE state = :dead "
                "ORDER BY updated_at DESC, id DESC LIMIT :limit",
                {"dead": NoticeState.DEAD.value, "limit": limit},
            ).fetchall()
        return [row_to_notice(row) for row in rows]

    def get(self, notice_id: int) -> Notice:
        with self.pool.read() as conn:
            row = conn.execute(
                "SELECT * FROM webhook_notices WHERE id = :id", {"id": notice_id}
            ).fetchone()
        if row is None:
            raise NoticeNotFound(f"no webhook notice {notice_id}")
        return row_to_notice(row)

    def retry(self, notice_id: int, *, now: float | None = None) -> Notice:
        """A dead letter back to PENDING, due now, its attempts counted afresh."""
        now = time.time() if now is None else now
        with self.pool.write() as conn:
            row = conn.execute(
                "SELECT state FROM webhook_notices WHERE id = :id", {"id": notice_id}
            ).fetchone()
            if row is None:
                raise NoticeNotFound(f"no webhook notice {notice_id}")
            if row["state"] != NoticeState.DEAD.value:
                raise JobConflict(
                    f"webhook notice {notice_id} is {row['state']}: only DEAD notices can be "
                    "retried"
                )
            conn.execute(
                "UPDATE webhook_notices SET state = :pending, attempts = 0, updated_at = :now, "
                "next_attempt_at = :now WHERE id = :id",
                {"pending": NoticeState.PENDING.value, "now": now, "id": notice_id},
            )
        return self.get(notice_id)

    def counts(self) -> dict[str, int]:
        """Notices by state (every state present, 0 when none)."""
        with self.pool.read() as conn:
            return {
                state.value: count(
                    conn,
                    "SELECT COUNT(*) FROM webhook_notices WHERE state = :state",
                    {"state": state.value},
                )
                for state in NoticeState
            }
