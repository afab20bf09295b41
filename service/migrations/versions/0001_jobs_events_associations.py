"""Jobs, their state history and the association audit.

Revision ID: 0001
Revises:
Stores made before migrations existed (a ``schema_version`` table, same
tables) are adopted: tables that exist are left as they are.
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "jobs" not in existing:
        op.create_table(
            "jobs",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("sop_instance_uid", sa.Text, nullable=False),
            sa.Column("sop_class_uid", sa.Text, nullable=False),
            sa.Column("study_instance_uid", sa.Text, nullable=False),
            sa.Column("series_instance_uid", sa.Text, nullable=False),
            sa.Column("transfer_syntax_uid", sa.Text, nullable=False),
            sa.Column("calling_ae_title", sa.Text, nullable=False),
            sa.Column("association_id", sa.Text, nullable=False),
            sa.Column("path", sa.Text, nullable=False),
            sa.Column("state", sa.Text, nullable=False),
            sa.Column("reason", sa.Text, nullable=False, server_default=""),
            sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
            sa.Column("next_attempt_at", sa.Float(precision=53)),
            sa.Column("first_send_failure_at", sa.Float(precision=53)),
            sa.Column("created_at", sa.Float(precision=53), nullable=False),
            sa.Column("updated_at", sa.Float(precision=53), nullable=False),
            sa.Column("timings", sa.Text, nullable=False, server_default="{}"),
            sa.Column("results", sa.Text, nullable=False, server_default="{}"),
            sa.Column("delivered", sa.Text, nullable=False, server_default="[]"),
        )
        op.create_index("jobs_state", "jobs", ["state", "next_attempt_at"])
        op.create_index("jobs_sop", "jobs", ["sop_instance_uid"])
    if "job_events" not in existing:
        op.create_table(
            "job_events",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("job_id", sa.Integer, nullable=False),
            sa.Column("at", sa.Float(precision=53), nullable=False),
            sa.Column("state", sa.Text, nullable=False),
            sa.Column("detail", sa.Text, nullable=False, server_default=""),
        )
        op.create_index("job_events_job", "job_events", ["job_id", "id"])
        op.create_index("job_events_state", "job_events", ["state", "at"])
    if "associations" not in existing:
        op.create_table(
            "associations",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("association_id", sa.Text, nullable=False),
            sa.Column("calling_ae_title", sa.Text, nullable=False),
            sa.Column("address", sa.Text, nullable=False),
            sa.Column("started_at", sa.Float(precision=53), nullable=False),
            sa.Column("ended_at", sa.Float(precision=53)),
            sa.Column("instances", sa.Integer, nullable=False, server_default="0"),
            sa.Column("outcome", sa.Text, nullable=False),
        )
        op.create_index("associations_started", "associations", ["started_at"])
        op.create_index("associations_open", "associations", ["association_id", "ended_at"])
    if "schema_version" in existing:
        op.drop_table("schema_version")  # superseded by alembic_version


def downgrade() -> None:
    op.drop_table("associations")
    op.drop_table("job_events")
    op.drop_table("jobs")
