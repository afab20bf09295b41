"""Exams, not just images (issue 15, part 3): each job's breast and view, and one row per study.

Revision ID: 0007
Revises: 0004

- ``jobs.laterality`` ("L", "R" or "") and ``jobs.image_view`` ("CC", "MLO", another
  view's short name such as "XCCL", or ""): read from the received header at
  admission (dicom_node/views.py); "" for jobs admitted before this revision.
- ``jobs.kind``: "image" (a received instance) or "exam" (the exam-level SR the
  node wrote itself, sent through the same sender; never processed).
- ``exams``: one row per Study Instance UID the node received images of:
  OPEN (images arriving), COMPLETE (all four standard views finished, or the
  study stable for ``exam_stable_s``: the exam SR is due), WRITTEN (the exam
  SR is on disk and queued for sending as job ``sr_job_id``); ``version``
  counts the exam SRs (a late image reopens a WRITTEN exam as version + 1).
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("laterality", sa.Text, nullable=False, server_default=""))
        batch.add_column(sa.Column("image_view", sa.Text, nullable=False, server_default=""))
        batch.add_column(sa.Column("kind", sa.Text, nullable=False, server_default="image"))
    op.create_table(
        "exams",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("study_instance_uid", sa.Text, nullable=False, unique=True),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False, server_default="1"),
        sa.Column("trigger", sa.Text, nullable=False, server_default=""),
        sa.Column("sr_uid", sa.Text, nullable=False, server_default=""),
        sa.Column("sr_job_id", sa.Integer),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", sa.Float(precision=53), nullable=False),
        sa.Column("updated_at", sa.Float(precision=53), nullable=False),
        sa.Column("last_arrival_at", sa.Float(precision=53), nullable=False),
        sa.Column("complete_at", sa.Float(precision=53)),
        sa.Column("written_at", sa.Float(precision=53)),
    )
    op.create_index("exams_state", "exams", ["state", "last_arrival_at"])


def downgrade() -> None:
    op.drop_index("exams_state", table_name="exams")
    op.drop_table("exams")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("kind")
        batch.drop_column("image_view")
        batch.drop_column("laterality")
