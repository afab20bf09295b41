"""Find jobs: the Accession Number of each job, searchable (issue 15, "find and act").

Revision ID: 0004
Revises: 0003

- ``accession_number``: the received dataset's Accession Number (0008,0050),
  read at admission; "" when it has none (and for jobs admitted before this
  revision: their spool files are not read again). It is patient-adjacent:
  the API shows it only to callers who may see patient data.
- Indexes for the exact-match search ``GET /api/v1/jobs?q=``: Accession Number
  and Study Instance UID (the SOP Instance UID has ``jobs_sop`` already).
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("accession_number", sa.Text, nullable=False, server_default=""))
    op.create_index("jobs_accession", "jobs", ["accession_number"])
    op.create_index("jobs_study", "jobs", ["study_instance_uid"])


def downgrade() -> None:
    op.drop_index("jobs_study", table_name="jobs")
    op.drop_index("jobs_accession", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("accession_number")
