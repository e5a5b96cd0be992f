"""the analysed loop's height and weight on its analysis

Patient's Size (m, stored in cm) and Patient's Weight (kg) from the analysed A4C loop's header,
kept only when plausible (``reporting.body_size``): the review page's chat indexes the LV
volumes to body surface area by them. Nullable: most headers carry neither, and an analysis
recorded before this revision has none (its volumes stay unindexed, never guessed).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("analyses", schema=None) as batch_op:
        batch_op.add_column(sa.Column("patient_height_cm", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("patient_weight_kg", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("analyses", schema=None) as batch_op:
        batch_op.drop_column("patient_weight_kg")
        batch_op.drop_column("patient_height_cm")
