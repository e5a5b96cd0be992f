"""Delivery jobs on both databases, against a real peer (dcmtk's storescp) or a closed port:
one try per run with the destination's own back-off in the table between tries, the lanes that
keep deliveries and analyses apart, start-up recovery of a try a stop cut short, and sign-off
queueing jobs for the node's queue instead of sending from the web process."""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
from pathlib import Path

import pytest
from dicom_helpers import PEER_AET, Ids, storescp, us_loop_dataset, write_instance
from pydicom.uid import JPEGBaseline8Bit
from sqlalchemy import select

from pacs_agent import jobs
from pacs_agent.config import Config, DestinationConfig, DicomConfig, ExportConfig
from pacs_agent.db import make_engine, make_session_factory, upgrade
from pacs_agent.db.models import Artifact, ExportAttempt, Job, Patient, Study, utcnow
from pacs_agent.deliveries import job_runner, queue_deliveries
from web.signoff import ExportRunner

BACKOFF_S = 30.0
QUEUE_BACKOFF = jobs.Backoff(initial_s=1.0, max_s=1.0)  # what a delivery must NOT use


@pytest.fixture
def sessions(database_url: str):
    upgrade(database_url)
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


def config_for(home: Path, port: int, max_attempts: int = 2) -> Config:
    return Config(
        home=str(home),
        dicom=DicomConfig(ae_title="ECHOAGENT"),
        export=ExportConfig(
            max_attempts=max_attempts, backoff_initial_s=BACKOFF_S, backoff_max_s=BACKOFF_S
        ),
        destinations=[
            DestinationConfig(name="pacs", ae_title=PEER_AET, host="127.0.0.1", port=port)
        ],
    )


def drafted_study_with_artifact(sessions, home: Path) -> tuple[int, int]:
    """An analysed ("drafted") study and one DICOM artifact of it on disk: (study, artifact)."""
    ids = Ids.new()
    path = write_instance(
        home / "artifacts" / f"{ids.sop}.dcm",
        us_loop_dataset(ids, frames=2, rows=16, columns=16),
        JPEGBaseline8Bit,
    )
    with sessions.begin() as s:
        study = Study(
            study_instance_uid=ids.study,
            patient=Patient(patient_id=ids.sop[-20:]),
            status="drafted",
        )
        artifact = Artifact(
            study=study,
            kind="sr",
            sop_instance_uid=ids.sop,
            file_path=str(path.relative_to(home)),
            media_type="application/dicom",
            sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        )
        s.add_all([study, artifact])
        s.flush()
        return study.id, artifact.id


def queued_delivery(sessions, config: Config, study_id: int, artifact_id: int) -> int:
    with sessions.begin() as s:
        (job_id,) = queue_deliveries(s, config, study_id, utcnow(), dicom_artifacts=[artifact_id])
        # a second request for the same artifact and destination finds the job there
        assert queue_deliveries(s, config, study_id, utcnow(), dicom_artifacts=[artifact_id]) == []
    return job_id


def no_analysis(job_id: int) -> None:
    raise AssertionError(f"job {job_id} was run as an analysis")


def tries(sessions, artifact_id: int) -> list[tuple[int, str]]:
    with sessions() as s:
        rows = s.scalars(
            select(ExportAttempt)
            .where(ExportAttempt.artifact_fk == artifact_id)
            .order_by(ExportAttempt.attempt)
        )
        return [(r.attempt, r.state) for r in rows]


def run_claimed(sessions, config: Config, job_id: int, worker: str) -> str | None:
    runner = job_runner(sessions, config, no_analysis)
    return jobs.execute_job(sessions, job_id, worker, runner, QUEUE_BACKOFF, utcnow)


def test_each_run_is_one_try_and_the_back_off_waits_in_the_table(
    sessions, tmp_path, free_port
) -> None:
    home = tmp_path / "home"
    config = config_for(home, free_port)  # nothing listens there: every try is refused
    study_id, artifact_id = drafted_study_with_artifact(sessions, home)
    job_id = queued_delivery(sessions, config, study_id, artifact_id)

    now = utcnow()
    assert jobs.claim_next(sessions, "a0", now, lane=jobs.LANE_ANALYSIS) is None
    assert jobs.claim_next(sessions, "d0", now, lane=jobs.LANE_DELIVERY) == job_id
    assert run_claimed(sessions, config, job_id, "d0") == "queued"
    assert tries(sessions, artifact_id) == [(1, "failed")]
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.attempts == 1
        assert "connection refused or timed out" in job.last_error
        # the destination's back-off ([export]), not the queue's
        wait_s = (jobs.utc(job.next_attempt_at) - jobs.utc(job.heartbeat_at)).total_seconds()
    assert wait_s == pytest.approx(BACKOFF_S)
    assert jobs.claim_next(sessions, "d0", utcnow(), lane=jobs.LANE_DELIVERY) is None

    later = utcnow() + dt.timedelta(seconds=BACKOFF_S + 1)
    assert jobs.claim_next(sessions, "d0", later, lane=jobs.LANE_DELIVERY) == job_id
    assert run_claimed(sessions, config, job_id, "d0") == "failed"  # out of [export] attempts
    assert tries(sessions, artifact_id) == [(1, "failed"), (2, "failed")]
    with sessions() as s:
        assert s.get(Study, study_id).status == "drafted", "a failed send fails no analysis"


def test_a_try_cut_short_by_a_stop_is_closed_and_the_next_run_sends(
    sessions, tmp_path, free_port
) -> None:
    home = tmp_path / "home"
    config = config_for(home, free_port, max_attempts=3)
    study_id, artifact_id = drafted_study_with_artifact(sessions, home)
    job_id = queued_delivery(sessions, config, study_id, artifact_id)
    assert jobs.claim_next(sessions, "old:d0", utcnow(), lane=jobs.LANE_DELIVERY) == job_id
    with sessions.begin() as s:  # the node died during this try
        s.add(ExportAttempt(artifact_fk=artifact_id, destination="pacs", attempt=1))

    with sessions.begin() as s:
        recovery = jobs.recover_interrupted(s, utcnow())
    assert recovery.requeued == (job_id,)
    assert jobs.claim_next(sessions, "new:d0", utcnow(), lane=jobs.LANE_DELIVERY) == job_id
    with storescp(free_port, tmp_path / "peer") as received:
        assert run_claimed(sessions, config, job_id, "new:d0") == "done"
        assert len([p for p in received.iterdir() if p.is_file()]) == 1
    assert tries(sessions, artifact_id) == [(1, "failed"), (2, "sent")]
    with sessions() as s:
        first = s.scalars(
            select(ExportAttempt).where(ExportAttempt.artifact_fk == artifact_id)
        ).first()
        assert first is not None and first.error.startswith("interrupted")


def test_sign_off_inside_a_node_hands_its_sends_to_the_queue(sessions, tmp_path, free_port) -> None:
    """With the node's queue, sign-off queues delivery jobs and starts no thread; the study's
    sends count as running until their jobs end."""
    home = tmp_path / "home"
    config = config_for(home, free_port)
    study_id, artifact_id = drafted_study_with_artifact(sessions, home)
    submitted: list[int] = []
    runner = ExportRunner(sessions, config, submitted.append)
    threads_before = threading.active_count()

    job_ids = runner.start(study_id, [artifact_id], user_id=1, username="cardio")

    assert job_ids is not None and job_ids == submitted and len(job_ids) == 1
    assert threading.active_count() == threads_before
    with sessions() as s:
        job = s.get(Job, job_ids[0])
        assert job is not None
        assert (job.kind, job.state, job.artifact_fk, job.destination) == (
            jobs.KIND_DELIVER_DICOM, "queued", artifact_id, "pacs")  # fmt: skip
    assert runner.running(study_id)
    with storescp(free_port, tmp_path / "peer"):
        assert jobs.claim_next(sessions, "d0", utcnow(), lane=jobs.LANE_DELIVERY) == job_ids[0]
        assert run_claimed(sessions, config, job_ids[0], "d0") == "done"
    assert not runner.running(study_id)
    assert runner.start(study_id, [], user_id=1, username="cardio") is None  # nothing to send
