"""Tell someone: webhook notices, persisted before they are sent (issue 15, part 6).

Revision ID: 0008
Revises: 0007

- ``webhook_notices``: one row per event and receiver URL, written in the
  same transaction as the job's DONE or FAILED (service/store/claims.py), or
  by ``store.notices.notify`` for other events. ``body`` is the JSON sent, fixed
  when the row is written (no patient data: UIDs, states, reasons, model);
  ``delivery_id`` goes out as ``X-Mammoseg-Delivery`` on every attempt, so a
  receiver can drop a repeat. ``state``: PENDING (due at ``next_attempt_at``),
  DELIVERED, or DEAD (given up: the dead letters). ``last_error`` says why
  the last attempt failed (status code or exception, never the response body).
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_notices",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("delivery_id", sa.Text, nullable=False, unique=True),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("job_id", sa.Integer, nullable=True),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("next_attempt_at", sa.Float, nullable=True),
        sa.Column("last_error", sa.Text, nullable=False, server_default=""),
    )
    op.create_index("webhook_notices_due", "webhook_notices", ["state", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("webhook_notices_due", table_name="webhook_notices")
    op.drop_table("webhook_notices")
