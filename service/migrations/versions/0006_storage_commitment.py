"""Storage Commitment (issue 15, part 4): each request's Transaction UID, per job and destination.

Revision ID: 0006
Revises: 0004

- ``commitments``: one row per N-ACTION sent (PS3.4 J.3.2): the job, the
  generation of its results, the destination (``AET@HOST:PORT``), the
  Transaction UID (unique: a late N-EVENT-REPORT, even after a restart, finds
  its job by it), when it was requested and answered, and the outcome
  (pending, committed, failed with the count and reason).
- The unique partial index ``jobs_open_sop`` (one open job per SOP Instance
  UID, 0003) now counts the new open state COMMIT_PENDING as open too.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None

OPEN_BEFORE = "('RECEIVED', 'PROCESSING', 'SENDING', 'RETRYING')"
OPEN_NOW = "('RECEIVED', 'PROCESSING', 'SENDING', 'RETRYING', 'COMMIT_PENDING')"


def _open_index(states: str) -> None:
    op.create_index(
        "jobs_open_sop",
        "jobs",
        ["sop_instance_uid"],
        unique=True,
        sqlite_where=sa.text(f"state IN {states}"),
        postgresql_where=sa.text(f"state IN {states}"),
    )


def upgrade() -> None:
    op.create_table(
        "commitments",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.Integer, nullable=False),
        sa.Column("generation", sa.Integer, nullable=False, server_default="0"),
        sa.Column("destination", sa.Text, nullable=False),
        sa.Column("transaction_uid", sa.Text, nullable=False, unique=True),
        sa.Column("instances", sa.Integer, nullable=False, server_default="0"),
        sa.Column("requested_at", sa.Float(precision=53), nullable=False),
        sa.Column("answered_at", sa.Float(precision=53)),
        sa.Column("outcome", sa.Text, nullable=False, server_default="pending"),
        sa.Column("failed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
    )
    op.create_index("commitments_job", "commitments", ["job_id", "generation"])
    op.drop_index("jobs_open_sop", table_name="jobs")
    _open_index(OPEN_NOW)


def downgrade() -> None:
    op.drop_index("jobs_open_sop", table_name="jobs")
    # Jobs waiting for a commitment go back to sending: their results are resent.
    op.execute("UPDATE jobs SET state = 'RETRYING' WHERE state = 'COMMIT_PENDING'")
    _open_index(OPEN_BEFORE)
    op.drop_index("commitments_job", table_name="commitments")
    op.drop_table("commitments")
