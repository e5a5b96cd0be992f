"""PostgreSQL connections killed under the node (``pg_terminate_backend``, as a database restart
or a failover does): the next operation succeeds and a job still finishes."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import POSTGRES_ADMIN_URL
from held_analysis import held_loader
from running_node import (
    first_a4c_loop,
    node_config,
    running_node,
    send_as_patient,
    wait_for_jobs_done,
)

from echo_agent.node import pool_settings
from inference import model_cache
from pacs_agent import jobs
from pacs_agent.config import ConfigError, QueueConfig, load_config
from pacs_agent.db import make_engine, make_session_factory, upgrade
from pacs_agent.db.engine import RETRY_ATTEMPTS, PoolSettings, retry_on_disconnect
from pacs_agent.db.models import Instance, Job, Patient, Series, Study, utcnow

pytestmark = pytest.mark.postgres


@pytest.fixture
def admin() -> Iterator[sa.Engine]:
    engine = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    yield engine
    engine.dispose()


def terminate_backends(admin: sa.Engine, database: str) -> int:
    """Kills every session on ``database`` (the admin's own is on another database)."""
    with admin.connect() as conn:
        return len(conn.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = :db AND pid <> pg_backend_pid()"
            ),
            {"db": database},
        ).all())


def kill_on_first(engine: sa.Engine, admin: sa.Engine, marker: str) -> list[str]:
    """Terminates the connection that is about to run the first statement containing
    ``marker``, from the server side, so that statement meets a dead connection."""
    killed: list[str] = []

    def before(conn, _cursor, statement, _params, _context, _many) -> None:
        if marker in statement and not killed:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            with admin.connect() as other:
                other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            killed.append(statement)

    sa.event.listen(engine, "before_cursor_execute", before)
    return killed


def test_retry_survives_a_killed_connection_and_stops_on_other_errors(
    postgres_url: str, admin: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(postgres_url)
    database = engine.url.database
    calls: list[int] = []

    @retry_on_disconnect("a test query")
    def answer() -> int:
        calls.append(1)
        with engine.connect() as conn:
            if len(calls) == 1:
                terminate_backends(admin, database)
            return int(conn.execute(sa.text("SELECT 41 + 1")).scalar_one())

    @retry_on_disconnect("bad SQL")
    def bad() -> None:
        calls.append(1)
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT * FROM no_such_table"))

    @retry_on_disconnect("a database that stays away")
    def always_killed() -> None:
        calls.append(1)
        with engine.connect() as conn:
            terminate_backends(admin, database)
            conn.execute(sa.text("SELECT 1"))

    try:
        with caplog.at_level(logging.WARNING, logger="echo_agent.db"):
            assert answer() == 42
        assert len(calls) == 2
        assert "database connection lost during a test query (try 1 of" in caplog.text
        calls.clear()
        with pytest.raises(sa.exc.ProgrammingError):
            bad()
        assert len(calls) == 1  # not a disconnect: not retried
        calls.clear()
        with pytest.raises(sa.exc.OperationalError) as raised:
            always_killed()
        assert raised.value.connection_invalidated
        assert len(calls) == RETRY_ATTEMPTS
    finally:
        engine.dispose()


def test_a_claim_whose_connection_dies_is_retried_once_and_counted_once(
    postgres_url: str, admin: sa.Engine
) -> None:
    upgrade(postgres_url)
    engine = make_engine(postgres_url, pool=PoolSettings(pool_size=2, max_overflow=0))
    factory = make_session_factory(engine)
    try:
        with factory.begin() as session:
            patient = Patient(patient_id="P")
            session.add(patient)
            session.flush()
            study = Study(study_instance_uid="2.25.1", patient_fk=patient.id, status="analysing")
            session.add(study)
            session.flush()
            series = Series(series_instance_uid="2.25.2", study_fk=study.id)
            session.add(series)
            session.flush()
            instance = Instance(sop_instance_uid="2.25.3", sop_class_uid="1.2", series_fk=series.id,
                                transfer_syntax_uid="1.2.840.10008.1.2.1", file_path="a.dcm",
                                file_size_bytes=1, sha256="0" * 64)
            session.add(instance)
            session.flush()
            job_id = jobs.create_job(session, study.id, instance.id, utcnow(), max_attempts=3)
            jobs.enqueue(session, [job_id], utcnow())
        killed = kill_on_first(engine, admin, "UPDATE jobs")
        assert jobs.claim_next(factory, "w1", utcnow()) == job_id
        assert killed  # the first claim's UPDATE met a dead connection
        with factory() as session:
            job = session.get(Job, job_id)
            assert (job.state, job.worker_id, job.attempts) == ("running", "w1", 1)
        terminate_backends(admin, engine.url.database)  # idle pool connections die too
        jobs.heartbeat(factory, [(job_id, "w1")], utcnow())
        assert jobs.finish_job(factory, job_id, "w1", utcnow())
    finally:
        engine.dispose()


def test_a_node_on_postgresql_finishes_its_job_while_its_connections_are_killed(
    tmp_path: Path,
    postgres_url: str,
    admin: sa.Engine,
    phantom_studies: list[Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = threading.Event()  # the job's analysis waits for it: set once the kills are over
    monkeypatch.setattr(model_cache, "load_models", held_loader(release))
    config = node_config(tmp_path / "home", postgres_url)
    config = dataclasses.replace(
        config, queue=QueueConfig(backoff_initial_s=0.5, backoff_max_s=1.0, max_attempts=5)
    )
    database = sa.engine.make_url(postgres_url).database
    with running_node(config) as node, caplog.at_level(logging.INFO):
        time.sleep(1.5)
        assert terminate_backends(admin, database) >= 1  # the idle pool, under the loops
        send_as_patient(node, first_a4c_loop(phantom_studies), "Roe^Ann", tmp_path / "send")

        def job_running() -> bool:
            with node.session_factory() as session:
                return session.scalar(sa.select(Job.state)) == "running"

        deadline = time.monotonic() + 60
        while not job_running():
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.1)
        stop = threading.Event()
        kills: list[int] = []

        def keep_killing() -> None:
            while not stop.wait(0.5):
                kills.append(terminate_backends(admin, database))

        killer = threading.Thread(target=keep_killing)
        killer.start()
        try:
            time.sleep(4)  # heartbeat, claim polls and assembler ticks meet dead connections
        finally:
            stop.set()
            killer.join()
            release.set()
        wait_for_jobs_done(node, 1)
        with node.session_factory() as session:
            job = session.scalars(sa.select(Job)).one()
            assert job.state == "done"
    assert sum(kills) >= 1
    assert "job 1 -> done" in caplog.text


def test_the_pool_follows_the_database_settings(postgres_url: str) -> None:
    config = load_config(environ={
        "ECHO_AGENT_DATABASE_URL": postgres_url,
        "ECHO_AGENT_DATABASE_POOL_SIZE": "3",
        "ECHO_AGENT_DATABASE_MAX_OVERFLOW": "1",
        "ECHO_AGENT_DATABASE_POOL_RECYCLE_S": "60",
    })
    engine = make_engine(config.database_url, pool=pool_settings(config))
    try:
        held = [engine.connect() for _ in range(4)]  # pool_size + max_overflow
        assert engine.pool.checkedout() == 4
        with pytest.raises(sa.exc.TimeoutError):
            engine.pool._timeout = 0.2  # only so the fifth checkout gives up quickly
            engine.connect()
        for conn in held:
            conn.close()
        assert engine.pool.size() == 3 and engine.pool._recycle == 60
        assert engine.pool._pre_ping
    finally:
        engine.dispose()
    with pytest.raises(ConfigError, match="pool_size"):
        load_config(environ={"ECHO_AGENT_DATABASE_POOL_SIZE": "0"})
