"""artifact kinds for the TID 5200 echo SR and the HL7 v2 ORU^R01 messages

``artifacts.kind`` is held to a list by a CHECK constraint; the list gains ``echo_sr`` (the
TID 5200 Echocardiography Procedure Report beside the TID 1500 SR) and ``hl7_oru`` (one stored
ORU^R01 per report version and HL7 destination, resent as it is by its delivery job).

PostgreSQL replaces the constraint in place. SQLite cannot alter a CHECK constraint, so
``artifacts`` is rebuilt (batch mode). With foreign keys on, as the node runs, dropping the old
table deletes every export attempt through ``export_attempts.artifact_fk ON DELETE CASCADE``,
and ``PRAGMA foreign_keys`` cannot be switched off inside the migration's transaction: the
attempts are copied aside first and put back, ids and all, once the new table holds the same
artifact ids. (``jobs.artifact_fk`` has no foreign key; see 0004.)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

CONSTRAINT = "ck_artifacts_kind_valid"  # the 0001 name (naming convention ck_<table>_<name>)
OLD_KINDS = ("seg", "sr", "secondary_capture", "pdf", "fhir", "overlay_video", "rendering")
NEW_KINDS = (*OLD_KINDS, "echo_sr", "hl7_oru")
SAVED_ATTEMPTS = "_export_attempts_0005"


def _condition(kinds: tuple[str, ...]) -> str:
    return "kind IN ({})".format(", ".join(f"'{kind}'" for kind in kinds))


def _replace_check(kinds: tuple[str, ...]) -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        op.execute(f"CREATE TEMP TABLE {SAVED_ATTEMPTS} AS SELECT * FROM export_attempts")
    # recreate="auto": a rebuild on SQLite, ALTER TABLE ... DROP/ADD CONSTRAINT elsewhere
    with op.batch_alter_table("artifacts", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f(CONSTRAINT), type_="check")
        batch_op.create_check_constraint(batch_op.f(CONSTRAINT), _condition(kinds))
    if sqlite:
        op.execute(
            f"INSERT INTO export_attempts SELECT * FROM {SAVED_ATTEMPTS} "
            "WHERE id NOT IN (SELECT id FROM export_attempts)"
        )
        op.execute(f"DROP TABLE {SAVED_ATTEMPTS}")


def upgrade() -> None:
    _replace_check(NEW_KINDS)


def downgrade() -> None:
    # the older code knows neither kind: their rows (and the jobs and tries that send them) go
    new_only = ", ".join(f"'{kind}'" for kind in NEW_KINDS if kind not in OLD_KINDS)
    op.execute(
        "DELETE FROM jobs WHERE artifact_fk IN "
        f"(SELECT id FROM artifacts WHERE kind IN ({new_only}))"
    )
    op.execute(
        "DELETE FROM export_attempts WHERE artifact_fk IN "
        f"(SELECT id FROM artifacts WHERE kind IN ({new_only}))"
    )
    op.execute(f"DELETE FROM artifacts WHERE kind IN ({new_only})")
    _replace_check(OLD_KINDS)
