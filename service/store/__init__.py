"""The job store: one row per received instance, in SQLite (WAL mode) or PostgreSQL.

:class:`JobStore` opens the database once (one engine, a pool of connections,
``service/db.py``) and hands out its roles, each in its own module:

==================  ===========================  ==========================================
``store.queue``     :class:`JobQueue`            admit, claim, update, heartbeat, recover
                    (claims.py)                  (the SCP, workers and sender)
``store.admin``     :class:`JobAdmin` (admin.py) retry, reprocess (API and dashboard)
``store.audit``     :class:`AssociationAudit`    one row per DICOM association
                    (audit.py)
``store.reads``     :class:`JobReads` (reads.py) listings, events, counts (dashboard, API,
                                                 metrics)
``store.housekeeping`` :class:`Housekeeping`     purge marks and row deletion (retention)
                    (housekeeping.py)
``store.exams``     :class:`Exams` (exams.py)    one row per study, the exam SR's job
``store.commitments`` :class:`JobCommitments`    storage commitment requests and reports,
                    (commitments.py)             COMMIT_PENDING -> DONE
``store.notices``   :class:`WebhookNotices`      webhook notices: notify, claim, settle,
                    (notices.py)                 dead letters (service/webhooks.py sends)
==================  ===========================  ==========================================

The values they pass (jobs, states, events, errors) are in records.py; the
SQL two roles share is in sql.py. No patient data is stored here: UIDs,
states, timings. The SQL is kept plain (no JSON functions) so that it runs on
SQLite and PostgreSQL alike; the one upsert form used (``ON CONFLICT ... DO``)
is common to both. The schema is owned by Alembic (service/migrations).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from service.db import Database, DatabaseError, Pool
from service.store.admin import JobAdmin
from service.store.audit import AssociationAudit
from service.store.claims import JobQueue
from service.store.commitments import JobCommitments
from service.store.exams import Exams
from service.store.housekeeping import Housekeeping
from service.store.notices import WebhookNotices
from service.store.reads import JobReads
from service.store.records import (
    ASSOCIATION_OUTCOMES,
    EXAM_COMPLETE,
    OPEN,
    QUARANTINE_PREFIX,
    QUARANTINE_REASON,
    RETRYABLE,
    TERMINAL,
    Admission,
    Association,
    Commitment,
    Exam,
    ExamState,
    Job,
    JobConflict,
    JobEvent,
    JobFilter,
    JobNotFound,
    JobState,
    NewJob,
    Notice,
    NoticeNotFound,
    NoticeState,
    Outcome,
    StoreError,
)

__all__ = [
    "EXAM_COMPLETE",
    "ASSOCIATION_OUTCOMES",
    "OPEN",
    "QUARANTINE_PREFIX",
    "QUARANTINE_REASON",
    "RETRYABLE",
    "TERMINAL",
    "Admission",
    "Association",
    "AssociationAudit",
    "Exam",
    "ExamState",
    "Exams",
    "Commitment",
    "Housekeeping",
    "Job",
    "JobAdmin",
    "JobCommitments",
    "JobConflict",
    "JobEvent",
    "JobFilter",
    "JobNotFound",
    "JobQueue",
    "JobReads",
    "JobState",
    "JobStore",
    "NewJob",
    "Notice",
    "NoticeNotFound",
    "NoticeState",
    "Outcome",
    "StoreError",
    "WebhookNotices",
]


class JobStore:
    """The job database, opened (and migrated) once, and its roles.

    ``database`` is a :class:`service.db.Database` (SQLite or PostgreSQL) or,
    for the embedded default and tests, the path of an SQLite file. Every role
    borrows connections from the one pool; all are safe to use from any thread.
    ``webhook_urls``: the receivers a job's DONE or FAILED is told to (notices
    written with the change, sent by service/webhooks.py); none, no notices.
    """

    def __init__(
        self,
        database: Database | Path,
        *,
        quarantine_after: int = 3,
        pool_size: int = 5,
        webhook_urls: Sequence[str] = (),
    ) -> None:
        if quarantine_after < 1:
            raise ValueError(f"quarantine_after must be at least 1, got {quarantine_after}")
        self.database = database if isinstance(database, Database) else Database.sqlite(database)
        try:
            self.backend = self.database.backend
            self.database.migrate()
            self.pool = Pool(self.database, size=pool_size)
            with self.pool.read() as conn:
                conn.execute("SELECT 1")
        except DatabaseError as exc:
            raise StoreError(f"cannot open the job store: {exc}") from exc
        self.queue = JobQueue(
            self.pool, quarantine_after=quarantine_after, webhook_urls=webhook_urls
        )
        self.notices = WebhookNotices(self.pool, webhook_urls)
        self.admin = JobAdmin(self.pool)
        self.audit = AssociationAudit(self.pool)
        self.reads = JobReads(self.pool)
        self.housekeeping = Housekeeping(self.pool)
        self.exams = Exams(self.pool)
        self.commitments = JobCommitments(self.pool, webhook_urls=webhook_urls)

    @property
    def path(self) -> Path:
        """The SQLite file, or for PostgreSQL the URL without its password."""
        if self.backend.dialect == "sqlite":
            return self.database.sqlite_path
        return Path(self.database.display)

    def is_writable(self) -> bool:
        """Readiness: can we still write a transaction?"""
        try:
            with self.pool.write() as conn:
                conn.execute("UPDATE alembic_version SET version_num = version_num")
        except Exception:  # noqa: BLE001 - any backend error means "not writable"
            return False
        return True

    def close(self) -> None:
        """Close the pool's connections (a later call opens new ones)."""
        self.pool.dispose()
