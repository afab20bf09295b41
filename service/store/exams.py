"""Exams: one row per study, and the exam SR's job (service/exams.py decides, this keeps).

Who calls it: the exam writer (``service.exams.ExamWriter``: which exams are
due, mark them COMPLETE, record the written SR) and the study views of the
API and the dashboard. Admission itself opens or reopens an exam in its own
transaction (``sql.exam_arrival``), so an exam never misses an image.

The exam SR travels as a job of kind "exam": committed together with the
exam's WRITTEN state, as RETRYING due now with no failed attempt, which is how
any sender (of this process or of a worker process) claims work from the store.
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Sequence

from service.db import Pool
from service.store.records import (
    Exam,
    ExamState,
    Job,
    JobState,
    row_to_exam,
    row_to_job,
)
from service.store.sql import add_event, count

#: The event of an exam SR's job when it is queued (it enters as RETRYING, due now).
EXAM_QUEUED = "exam SR written (version {version}, {trigger}): queued for sending"


class Exams:
    """Exam rows and the images of a study."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def get(self, study_uid: str) -> Exam | None:
        with self.pool.read() as conn:
            row = conn.execute(
                "SELECT * FROM exams WHERE study_instance_uid = :study", {"study": study_uid}
            ).fetchone()
        return None if row is None else row_to_exam(row)

    def find(
        self, *, states: Sequence[ExamState] = (), limit: int = 50, offset: int = 0
    ) -> tuple[builtins.list[Exam], int]:
        """Exams, the latest arrival first, with the total number matching."""
        where, params = "", {}
        if states:
            where = " WHERE state IN :states"
            params = {"states": [ExamState(s).value for s in states]}
        with self.pool.read() as conn:
            rows = conn.execute(
                f"SELECT * FROM exams{where} ORDER BY last_arrival_at DESC, id DESC "
                "LIMIT :limit OFFSET :offset",
                {**params, "limit": limit, "offset": offset},
            ).fetchall()
            total = count(conn, f"SELECT COUNT(*) FROM exams{where}", params)
        return [row_to_exam(r) for r in rows], total

    def unwritten(self) -> builtins.list[Exam]:
        """OPEN and COMPLETE exams (COMPLETE: due, its SR not yet recorded), oldest first."""
        with self.pool.read() as conn:
            rows = conn.execute(
                "SELECT * FROM exams WHERE state IN :states ORDER BY last_arrival_at, id",
                {"states": [ExamState.OPEN.value, ExamState.COMPLETE.value]},
            ).fetchall()
        return [row_to_exam(r) for r in rows]

    def images(self, study_uid: str) -> builtins.list[Job]:
        """The image jobs of a study: the newest job of each SOP Instance UID, oldest first."""
        return self.images_of([study_uid]).get(study_uid, [])

    def images_of(self, study_uids: Sequence[str]) -> dict[str, builtins.list[Job]]:
        """:meth:`images` of several studies in one query (a page of the study list)."""
        if not study_uids:
            return {}
        with self.pool.read() as conn:
            rows = conn.execute(
                "SELECT * FROM jobs WHERE study_instance_uid IN :studies AND kind = 'image' "
                "ORDER BY id DESC",
                {"studies": list(study_uids)},
            ).fetchall()
        newest: dict[str, dict[str, Job]] = {}
        for row in rows:
            job = row_to_job(row)
            newest.setdefault(job.study_instance_uid, {}).setdefault(job.sop_instance_uid, job)
        return {study: sorted(jobs.values(), key=lambda j: j.id) for study, jobs in newest.items()}

    def complete(
        self, study_uid: str, version: int, trigger: str, *, now: float | None = None
    ) -> bool:
        """OPEN -> COMPLETE for this version; False if an image reopened or changed it meanwhile."""
        now = time.time() if now is None else now
        with self.pool.write() as conn:
            cur = conn.execute(
                "UPDATE exams SET state = :complete, trigger = :trigger, complete_at = :now, "
                "updated_at = :now, reason = '' WHERE study_instance_uid = :study "
                "AND version = :version AND state = :open",
                {
                    "complete": ExamState.COMPLETE.value,
                    "open": ExamState.OPEN.value,
                    "trigger": trigger,
                    "now": now,
                    "study": study_uid,
                    "version": version,
                },
            )
            return bool(cur.rowcount)

    def written(
        self,
        exam: Exam,
        *,
        sr_uid: str,
        series_uid: str,
        sop_class_uid: str,
        path: str,
        now: float | None = None,
    ) -> int | None:
        """Record the exam SR on disk: its job (queued for sending) and WRITTEN, in one commit.

        None, and nothing recorded, when the exam is no longer COMPLETE at this
        version (an image arrived meanwhile: it is due again later). A job for
        this SR UID that exists already (a rewrite after a crash) is reused.
        """
        now = time.time() if now is None else now
        with self.pool.write() as conn:
            row = conn.execute(
                "SELECT state, version FROM exams WHERE study_instance_uid = :study",
                {"study": exam.study_instance_uid},
            ).fetchone()
            if (
                row is None
                or row["state"] != ExamState.COMPLETE.value
                or int(row["version"]) != exam.version
            ):
                return None
            existing = conn.execute(
                "SELECT id FROM jobs WHERE sop_instance_uid = :uid AND kind = 'exam' "
                "ORDER BY id DESC LIMIT 1",
                {"uid": sr_uid},
            ).fetchone()
            if existing is not None:
                job_id = int(existing["id"])
            else:
                inserted = conn.execute(
                    "INSERT INTO jobs (sop_instance_uid, sop_class_uid, study_instance_uid, "
                    "series_instance_uid, transfer_syntax_uid, calling_ae_title, "
                    "association_id, path, state, created_at, updated_at, timings, results, "
                    "next_attempt_at, kind) VALUES (:uid, :sop_class, :study, :series, "
                    "'1.2.840.10008.1.2.1', '', '', :path, :state, :now, :now, :timings, "
                    ":results, :now, 'exam') RETURNING id",
                    {
                        "uid": sr_uid,
                        "sop_class": sop_class_uid,
                        "study": exam.study_instance_uid,
                        "series": series_uid,
                        "path": path,
                        "state": JobState.RETRYING.value,
                        "now": now,
                        "timings": json.dumps({"received_at": now}),
                        "results": json.dumps({"uids": {"sr": sr_uid}, "files": [path]}),
                    },
                ).fetchone()
                if inserted is None:
                    return None
                job_id = int(inserted["id"])
                add_event(
                    conn,
                    job_id,
                    JobState.RETRYING,
                    now,
                    EXAM_QUEUED.format(version=exam.version, trigger=exam.trigger or "due"),
                )
            conn.execute(
                "UPDATE exams SET state = :written, sr_uid = :uid, sr_job_id = :job, "
                "written_at = :now, updated_at = :now, reason = '' "
                "WHERE study_instance_uid = :study",
                {
                    "written": ExamState.WRITTEN.value,
                    "uid": sr_uid,
                    "job": job_id,
                    "now": now,
                    "study": exam.study_instance_uid,
                },
            )
            return job_id

    def note(self, study_uid: str, reason: str, *, now: float | None = None) -> None:
        """Why the exam SR could not be written (shown in the study view; retried later)."""
        now = time.time() if now is None else now
        with self.pool.write() as conn:
            conn.execute(
                "UPDATE exams SET reason = :reason, updated_at = :now "
                "WHERE study_instance_uid = :study",
                {"reason": reason[:500], "now": now, "study": study_uid},
            )
