"""The schema: migrations apply on SQLite and PostgreSQL, agree with the models, and enforce
the rules later code relies on (one row per SOP instance, one job per loop, valid states)."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.exc import IntegrityError
from werkzeug.security import check_password_hash

from pacs_agent.db import current_revision, ensure_schema, head_revision, make_engine, upgrade
from pacs_agent.db.engine import make_session_factory
from pacs_agent.db.migrate import SchemaError, downgrade
from pacs_agent.db.models import (
    Analysis,
    Artifact,
    AuditEvent,
    Base,
    ChatMessage,
    ExportAttempt,
    Instance,
    Job,
    Patient,
    ReportVersion,
    Series,
    Study,
    User,
)
from pacs_agent.users import UserError, add_user


@pytest.fixture
def migrated_engine(database_url: str):
    upgrade(database_url)
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def _study_graph(session) -> tuple[Study, Instance]:
    patient = Patient(patient_id="PAT-1", name="Doe^Jane", birth_date=dt.date(1960, 5, 1), sex="F")
    study = Study(study_instance_uid="1.2.3.1", patient=patient, accession_number="ACC1")
    series = Series(series_instance_uid="1.2.3.1.1", study=study, modality="US")
    instance = Instance(
        sop_instance_uid="1.2.3.1.1.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.3.1",
        series=series,
        transfer_syntax_uid="1.2.840.10008.1.2.4.50",
        number_of_frames=96,
        file_path="ab/cd/1.2.3.1.1.1.dcm",
        file_size_bytes=1234567,
        sha256="0" * 64,
    )
    session.add_all([patient, study, series, instance])
    session.flush()
    return study, instance


def test_migrations_reach_head_and_match_the_models(database_url: str) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        assert current_revision(engine) == head_revision()
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == [], f"models and migrations disagree: {diff}"
        tables = set(sa.inspect(engine).get_table_names())
        expected = {
            "patients", "studies", "series", "instances", "jobs", "analyses", "artifacts",
            "report_versions", "chat_messages", "users", "audit_events", "export_attempts",
        }
        assert expected <= tables
    finally:
        engine.dispose()


def test_downgrade_to_base_and_upgrade_again(database_url: str) -> None:
    upgrade(database_url)
    downgrade(database_url, "base")
    engine = make_engine(database_url)
    try:
        assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(database_url)
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()


def test_full_graph_round_trips(migrated_engine) -> None:
    factory = make_session_factory(migrated_engine)
    with factory.begin() as session:
        study, instance = _study_graph(session)
        user = add_user(session, "cardio1", "a long enough secret", "cardiologist")
        job = Job(study=study, instance_fk=instance.id, state="queued", attempts=1)
        session.add(job)
        session.flush()
        session.add(
            Analysis(
                job=job, instance_fk=instance.id, model_preset="demo", demo_models=True,
                ef_percent=57.5, measurements={"ef_percent": 57.5, "beats": [], "flags": []},
            )
        )
        report = ReportVersion(
            study=study, version=1, status="preliminary", narrative_text="Normal LV size.",
            grounding_verdict="pass", grounding_reasons=[], author_fk=user.id,
        )
        session.add(report)
        session.flush()
        artifact = Artifact(
            study=study, job_fk=job.id, report_version_fk=report.id, kind="sr",
            sop_instance_uid="1.2.3.9", file_path="out/sr.dcm", media_type="application/dicom",
            sha256="f" * 64,
        )
        session.add(artifact)
        session.flush()
        session.add(ExportAttempt(artifact=artifact, destination="pacs:ORTHANC", state="sent"))
        session.add(ChatMessage(study_fk=study.id, user_fk=user.id, role="user", content="EF?"))
        session.add(AuditEvent(user_fk=user.id, username="cardio1", action="view",
                               study_fk=study.id, detail={"page": "study"}))
    with factory() as session:
        study = session.scalars(sa.select(Study)).one()
        assert study.patient.name == "Doe^Jane"
        assert study.patient.birth_date == dt.date(1960, 5, 1)
        assert [s.instances[0].number_of_frames for s in study.series] == [96]
        job = study.jobs[0]
        assert job.analysis is not None and job.analysis.measurements["ef_percent"] == 57.5
        assert study.report_versions[0].narrative_text == "Normal LV size."
        assert study.artifacts[0].exports[0].state == "sent"
        user = session.scalars(sa.select(User)).one()
        assert user.password_hash != "a long enough secret"
        assert check_password_hash(user.password_hash, "a long enough secret")
        assert session.scalars(sa.select(AuditEvent)).one().detail == {"page": "study"}


def test_a_sop_instance_is_stored_once(migrated_engine) -> None:
    factory = make_session_factory(migrated_engine)
    with factory.begin() as session:
        _study_graph(session)
    with pytest.raises(IntegrityError), factory.begin() as session:
        series = session.scalars(sa.select(Series)).one()
        session.add(
            Instance(sop_instance_uid="1.2.3.1.1.1", sop_class_uid="1.2", series=series,
                     transfer_syntax_uid="1.2.840.10008.1.2.1", file_path="x", file_size_bytes=1,
                     sha256="1" * 64)
        )


def test_one_job_per_loop_and_kind(migrated_engine) -> None:
    factory = make_session_factory(migrated_engine)
    with factory.begin() as session:
        study, instance = _study_graph(session)
        session.add(Job(study=study, instance_fk=instance.id))
        study_id, instance_id = study.id, instance.id
    with pytest.raises(IntegrityError), factory.begin() as session:
        session.add(Job(study_fk=study_id, instance_fk=instance_id))


@pytest.mark.parametrize(
    ("model", "column", "bad"),
    [(Job, "state", "exploded"), (Study, "status", "lost"), (Artifact, "kind", "video_game")],
)
def test_states_outside_the_state_machine_are_refused(migrated_engine, model, column, bad) -> None:
    factory = make_session_factory(migrated_engine)
    with factory.begin() as session:
        study, instance = _study_graph(session)
        study_id, instance_id = study.id, instance.id
    values = {
        Job: {"study_fk": study_id, "instance_fk": instance_id},
        Study: {"study_instance_uid": "9.9", "patient_fk": 1},
        Artifact: {"study_fk": study_id, "file_path": "x", "media_type": "x", "sha256": "x"},
    }[model]
    with pytest.raises(IntegrityError), factory.begin() as session:
        session.add(model(**values, **{column: bad}))


def test_deleting_a_study_with_children_cascades_but_a_patient_with_studies_is_kept(
    migrated_engine,
) -> None:
    factory = make_session_factory(migrated_engine)
    with factory.begin() as session:
        _study_graph(session)
    with pytest.raises(IntegrityError), factory.begin() as session:
        session.execute(sa.delete(Patient))
    with factory.begin() as session:
        session.execute(sa.delete(Study))
    with factory() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Instance)) == 0


def test_duplicate_and_weak_accounts_are_refused(migrated_engine) -> None:
    factory = make_session_factory(migrated_engine)
    with factory.begin() as session:
        add_user(session, "admin1", "long enough password", "admin")
    with factory.begin() as session:
        with pytest.raises(UserError, match="already exists"):
            add_user(session, "admin1", "another long password", "admin")
        with pytest.raises(UserError, match="at least"):
            add_user(session, "bob", "short", "sonographer")
        with pytest.raises(UserError, match="role"):
            add_user(session, "bob", "long enough password", "surgeon")


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'node.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert (tmp_path / "node.db-wal").exists()
    finally:
        engine.dispose()


def test_sqlite_concurrent_writers_wait_instead_of_failing(tmp_path) -> None:
    """The listener and the workers write at once; WAL plus busy_timeout must serialise them."""
    url = f"sqlite:///{tmp_path / 'node.db'}"
    upgrade(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for i in range(25):
                with factory.begin() as session:
                    session.add(Patient(patient_id=f"P{worker}-{i}", name="X"))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        with factory() as session:
            assert session.scalar(sa.select(sa.func.count()).select_from(Patient)) == 100
    finally:
        engine.dispose()


def test_embedded_sqlite_is_brought_to_head_but_postgres_needs_an_explicit_upgrade(
    tmp_path, postgres_url: str
) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'auto.db'}"
    sqlite_engine = make_engine(sqlite_url)
    pg_engine = make_engine(postgres_url)
    try:
        assert ensure_schema(sqlite_engine, sqlite_url) == head_revision()
        with pytest.raises(SchemaError, match="echo-agent db upgrade"):
            ensure_schema(pg_engine, postgres_url)
        upgrade(postgres_url)
        assert ensure_schema(pg_engine, postgres_url) == head_revision()
    finally:
        sqlite_engine.dispose()
        pg_engine.dispose()
