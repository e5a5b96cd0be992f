"""quarantine of instances whose patient identity conflicts with their study

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quarantined_instances",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("calling_ae", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=256), nullable=False),
        sa.Column("file_path", sa.String(length=512), nullable=False),
        sa.Column("file_size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quarantined_instances")),
    )
    with op.batch_alter_table("quarantined_instances", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_quarantined_instances_received_at"), ["received_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_quarantined_instances_sop_instance_uid"),
            ["sop_instance_uid"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_quarantined_instances_study_instance_uid"),
            ["study_instance_uid"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("quarantined_instances", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_quarantined_instances_study_instance_uid"))
        batch_op.drop_index(batch_op.f("ix_quarantined_instances_sop_instance_uid"))
        batch_op.drop_index(batch_op.f("ix_quarantined_instances_received_at"))

    op.drop_table("quarantined_instances")
