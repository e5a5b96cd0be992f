"""Migration 0007 (the analysed loop's height and weight on ``analyses``) on a database that
already holds an analysis, on both backends: the analysis survives the upgrade with no height
and weight (NULL: never guessed), takes them afterwards, and a downgrade drops the two columns
and keeps the row."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy import select

from pacs_agent.db import make_engine, make_session_factory, upgrade
from pacs_agent.db.migrate import downgrade
from pacs_agent.db.models import Analysis, Instance, Job, Patient, Series, Study


def _seed_analysis(engine: sa.Engine) -> int:
    """A study with one loop, its job and its analysis, written at revision 0006 (the analysis
    row by SQL: the model already has the new columns)."""
    sessions = make_session_factory(engine)
    with sessions.begin() as s:
        study = Study(
            study_instance_uid=f"2.25.{uuid.uuid4().int}",
            patient=Patient(patient_id=uuid.uuid4().hex[:16]),
            status="drafted",
        )
        series = Series(series_instance_uid=f"2.25.{uuid.uuid4().int}", study=study)
        instance = Instance(sop_instance_uid=f"2.25.{uuid.uuid4().int}", sop_class_uid="1.2",
                            series=series, transfer_syntax_uid="1.2.840.10008.1.2.1",
                            file_path="x.dcm", file_size_bytes=1, sha256="0" * 64)  # fmt: skip
        s.add_all([study, series, instance])
        s.flush()
        job = Job(study=study, instance_fk=instance.id, state="done", attempts=1)
        s.add(job)
        s.flush()
        job_id, instance_id = job.id, instance.id
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO analyses (job_fk, instance_fk, model_preset, demo_models, "
                    "ef_percent, measurements, created_at) VALUES (:job, :instance, 'demo', "
                    ":demo, 41.5, '{}', CURRENT_TIMESTAMP)"),
            {"job": job_id, "instance": instance_id, "demo": True},
        )  # fmt: skip
        return int(conn.scalar(sa.text("SELECT id FROM analyses WHERE job_fk = :j"), {"j": job_id}))


def _columns(engine: sa.Engine) -> set[str]:
    return {c["name"] for c in sa.inspect(engine).get_columns("analyses")}


def test_the_upgrade_keeps_analyses_and_adds_nullable_height_and_weight(database_url: str) -> None:
    upgrade(database_url, "0006")
    engine = make_engine(database_url)
    try:
        analysis_id = _seed_analysis(engine)
        assert "patient_height_cm" not in _columns(engine)

        upgrade(database_url)
        engine.dispose()  # SQLite's batch rebuild: read the table afresh
        sessions = make_session_factory(engine)
        with sessions.begin() as s:
            row = s.get(Analysis, analysis_id)
            assert row is not None and row.ef_percent == 41.5
            assert (row.patient_height_cm, row.patient_weight_kg) == (None, None)
            row.patient_height_cm, row.patient_weight_kg = 165.0, 60.0
        with sessions() as s:
            stored = s.execute(select(Analysis.patient_height_cm, Analysis.patient_weight_kg))
            assert tuple(stored.one()) == (165.0, 60.0)

        downgrade(database_url, "0006")
        engine.dispose()
        assert {"patient_height_cm", "patient_weight_kg"}.isdisjoint(_columns(engine))
        with engine.connect() as conn:
            kept = conn.execute(sa.text("SELECT id, ef_percent FROM analyses")).all()
        assert [tuple(r) for r in kept] == [(analysis_id, 41.5)]
    finally:
        engine.dispose()
