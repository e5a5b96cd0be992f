"""Migration 0005 (artifact kinds ``echo_sr`` and ``hl7_oru``) on a database that already
holds results: the artifacts, their export tries and their delivery jobs survive the upgrade
on both backends (on SQLite the ``artifacts`` table is rebuilt with foreign keys on, whose
cascade would otherwise empty ``export_attempts``), the new kinds are accepted afterwards and an
unknown kind is still refused; a downgrade removes the new kinds' rows and restores the old
constraint."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from pacs_agent.db import make_engine, make_session_factory, upgrade
from pacs_agent.db.migrate import downgrade
from pacs_agent.db.models import Artifact, ExportAttempt, Job, Patient, Study


def _seed(sessions: sessionmaker[Session], kind: str = "sr") -> dict[str, int]:
    """A study with its artifact, two tries of it and its delivery job (0005 adds no column,
    so the models write a database at 0004 too)."""
    with sessions.begin() as s:
        study = Study(
            study_instance_uid=f"2.25.{uuid.uuid4().int}",
            patient=Patient(patient_id=uuid.uuid4().hex[:16]),
            status="drafted",
        )
        artifact = Artifact(
            study=study,
            kind=kind,
            file_path=f"out/{uuid.uuid4().hex}",
            media_type="application/dicom",
            sha256="f" * 64,
        )
        s.add_all([study, artifact])
        s.flush()
        s.add_all(
            [
                ExportAttempt(artifact_fk=artifact.id, destination="pacs", state=state, attempt=n)
                for n, state in ((1, "failed"), (2, "sent"))
            ]
        )
        job = Job(
            study_fk=study.id,
            artifact_fk=artifact.id,
            destination="pacs",
            kind="deliver_dicom",
            state="done",
            attempts=2,
        )
        s.add(job)
        s.flush()
        return {"study": study.id, "artifact": artifact.id, "job": job.id}


def _add_artifact(sessions: sessionmaker[Session], study: int, kind: str) -> None:
    with sessions.begin() as s:
        s.add(
            Artifact(
                study_fk=study,
                kind=kind,
                file_path=uuid.uuid4().hex,
                media_type="x",
                sha256="0" * 64,
            )
        )


def _tries(sessions: sessionmaker[Session], artifact: int) -> list[tuple[int, str]]:
    with sessions() as s:
        rows = s.scalars(
            select(ExportAttempt)
            .where(ExportAttempt.artifact_fk == artifact)
            .order_by(ExportAttempt.attempt)
        )
        return [(r.attempt, r.state) for r in rows]


def test_the_upgrade_keeps_results_and_admits_the_new_kinds(database_url: str) -> None:
    upgrade(database_url, "0004")
    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    try:
        ids = _seed(sessions)
        with pytest.raises(IntegrityError):  # 0004 does not know the kind yet
            _add_artifact(sessions, ids["study"], "echo_sr")

        upgrade(database_url)

        assert _tries(sessions, ids["artifact"]) == [(1, "failed"), (2, "sent")]
        with sessions() as s:
            job = s.get(Job, ids["job"])
            assert job is not None and (job.artifact_fk, job.state) == (ids["artifact"], "done")
            assert s.scalars(select(Artifact.kind)).all() == ["sr"]
        _add_artifact(sessions, ids["study"], "echo_sr")
        _add_artifact(sessions, ids["study"], "hl7_oru")
        with pytest.raises(IntegrityError):
            _add_artifact(sessions, ids["study"], "mystery")
        # the rebuilt table still cascades: deleting an artifact takes its tries
        with sessions.begin() as s:
            s.execute(delete(Artifact).where(Artifact.id == ids["artifact"]))
        assert _tries(sessions, ids["artifact"]) == []

        kept = _seed(sessions)
        gone = _seed(sessions, kind="hl7_oru")
        downgrade(database_url, "0004")
        with sessions() as s:
            assert sorted(s.scalars(select(Artifact.kind)).all()) == ["sr"]
            assert s.get(Job, gone["job"]) is None and s.get(Job, kept["job"]) is not None
        assert _tries(sessions, kept["artifact"]) == [(1, "failed"), (2, "sent")]
        with pytest.raises(IntegrityError):
            _add_artifact(sessions, kept["study"], "echo_sr")
    finally:
        engine.dispose()
