"""deliveries as durable jobs

A delivery job (``pacs_agent.deliveries``) names the artifact it sends and the destination it
sends to; one job per (artifact, destination, kind). Analysis jobs keep both columns NULL and
stay unique per (study, instance, kind) as before.

Both columns are added in place and the uniqueness is an index, so SQLite never rebuilds
``jobs``: a batch-mode rebuild drops the old table, and with foreign keys on (as the node runs)
that drop deletes every analysis through ``analyses.job_fk ON DELETE CASCADE``. That is also
why ``artifact_fk`` has no foreign key (SQLite reflects a key added in place without its name
or ON DELETE rule, and adds a named one only by rebuilding): ``pacs_agent.outputs`` deletes an
artifact's delivery jobs together with the artifact, and a delivery whose artifact is gone
ends without sending.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UNIQUE_NAME = "uq_jobs_artifact_destination_kind"


def upgrade() -> None:
    op.add_column("jobs", sa.Column("artifact_fk", sa.Integer(), nullable=True))
    op.add_column("jobs", sa.Column("destination", sa.String(length=256), nullable=True))
    op.create_index(UNIQUE_NAME, "jobs", ["artifact_fk", "destination", "kind"], unique=True)


def downgrade() -> None:
    # the older schema's code sends inside the analysis: its delivery jobs mean nothing there
    op.execute("DELETE FROM jobs WHERE artifact_fk IS NOT NULL")
    op.drop_index(UNIQUE_NAME, table_name="jobs")
    op.drop_column("jobs", "destination")  # in place on SQLite too (3.35+), no rebuild
    op.drop_column("jobs", "artifact_fk")
