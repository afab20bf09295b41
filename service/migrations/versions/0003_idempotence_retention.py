"""Quarantine, heartbeats, idempotent receives and retention (issue 12).

Revision ID: 0003
Revises: 0002

- ``crashes``: how many times a claim on the job was taken back unfinished
  (the process died while processing it); the store quarantines the job
  after ``quarantine_after`` of them.
- ``heartbeat_at``: refreshed while a claim is alive, so that the stale sweep
  takes back only claims of processes that stopped.
- ``content_hash``: SHA-256 of the received dataset (file meta excluded), and
  ``generation`` (how many times it was reprocessed): with the source UID and
  the model they key the result UIDs.
- ``purged_at``: when retention deleted the job's spool and outbox files.
- ``job_notes``: things that happened to a job without changing its state
  (a duplicate receive that was ignored).
- ``counters``: running totals that must not go down when retention deletes
  audit rows (Prometheus counters), and the retention counts themselves.
- A unique partial index: at most one open job per SOP Instance UID, on both
  backends. Extra open jobs that an older version let through are SKIPPED.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

OPEN = "('RECEIVED', 'PROCESSING', 'SENDING', 'RETRYING')"
WHY = "'another open job for the same instance (migration 0003)'"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("crashes", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("heartbeat_at", sa.Float(precision=53)))
        batch.add_column(sa.Column("content_hash", sa.Text, nullable=False, server_default=""))
        batch.add_column(sa.Column("generation", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("purged_at", sa.Float(precision=53)))
    op.create_table(
        "job_notes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.Integer, nullable=False),
        sa.Column("at", sa.Float(precision=53), nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=False, server_default=""),
    )
    op.create_index("job_notes_job", "job_notes", ["job_id", "id"])
    op.create_table(
        "counters",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_index("jobs_finished", "jobs", ["purged_at", "updated_at"])
    op.create_index("jobs_path", "jobs", ["path"])
    # Older versions could make two open jobs for one UID (check-then-insert):
    # keep the oldest open, skip the others, so that the unique index can exist.
    op.execute(
        "INSERT INTO job_events (job_id, at, state, detail) "
        f"SELECT id, updated_at, 'SKIPPED', {WHY} "
        f"FROM jobs WHERE state IN {OPEN} AND id NOT IN "
        f"(SELECT MIN(id) FROM jobs WHERE state IN {OPEN} GROUP BY sop_instance_uid)"
    )
    op.execute(
        f"UPDATE jobs SET state = 'SKIPPED', reason = {WHY} "
        f"WHERE state IN {OPEN} AND id NOT IN "
        f"(SELECT MIN(id) FROM jobs WHERE state IN {OPEN} GROUP BY sop_instance_uid)"
    )
    op.create_index(
        "jobs_open_sop",
        "jobs",
        ["sop_instance_uid"],
        unique=True,
        sqlite_where=sa.text(f"state IN {OPEN}"),
        postgresql_where=sa.text(f"state IN {OPEN}"),
    )


def downgrade() -> None:
    op.drop_index("jobs_open_sop", table_name="jobs")
    op.drop_index("jobs_path", table_name="jobs")
    op.drop_index("jobs_finished", table_name="jobs")
    op.drop_table("counters")
    op.drop_index("job_notes_job", table_name="job_notes")
    op.drop_table("job_notes")
    with op.batch_alter_table("jobs") as batch:
        for column in ("purged_at", "generation", "content_hash", "heartbeat_at", "crashes"):
            batch.drop_column(column)
