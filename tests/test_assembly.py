"""Study assembly on both databases, fed by the node's real Storage SCP: the stable-age rule,
the verdicts recorded per series, and a late instance that reopens a study without any loop
being queued twice."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from dicom_helpers import Ids, send_files, us_loop_dataset, write_instance
from sqlalchemy import func, select

from pacs_agent.assembly import assemble, complete_stable_studies, judge_file
from pacs_agent.config import Config, DatabaseConfig, DicomConfig
from pacs_agent.db import make_engine, make_session_factory, upgrade
from pacs_agent.db.models import Instance, Job, Series, Study
from pacs_agent.dicom import start_storage_scp
from pacs_agent.jobs import utc

STABLE_AGE_S = 5.0


@pytest.fixture
def node(database_url: str, tmp_path: Path, free_port: int):
    upgrade(database_url)
    engine = make_engine(database_url)
    config = Config(
        home=str(tmp_path / "home"),
        dicom=DicomConfig(port=free_port, stable_age_s=STABLE_AGE_S, min_free_disk_mb=0),
        database=DatabaseConfig(url=database_url),
    )
    scp = start_storage_scp(config, engine)
    yield config, make_session_factory(engine), scp
    scp.shutdown()
    engine.dispose()


def loop_file(tmp_path: Path, ids: Ids, name: str, frames: int = 40, description="A4C") -> Path:
    """A small grey loop: 40 frames at 33.3 ms (1.3 s) is a whole cycle without a heart rate."""
    ds = us_loop_dataset(ids, frames=frames, rows=32, columns=40)
    ds.SeriesDescription = description
    return write_instance(tmp_path / f"{name}.dcm", ds)


def send(scp, *files: Path) -> None:
    assert send_files(scp.host, scp.port, list(files)) == [0] * len(files)


def last_received(sessions, study_uid: str) -> dt.datetime:
    with sessions() as s:
        value = s.scalar(
            select(Study.last_received_at).where(Study.study_instance_uid == study_uid)
        )
    assert value is not None
    return utc(value)


def study_row(sessions, study_uid: str) -> Study:
    with sessions() as s:
        study = s.scalars(select(Study).where(Study.study_instance_uid == study_uid)).one()
        return study


def series_row(sessions, series_uid: str) -> Series:
    with sessions() as s:
        return s.scalars(select(Series).where(Series.series_instance_uid == series_uid)).one()


def test_a_study_completes_after_the_stable_age_and_only_once(node, tmp_path) -> None:
    _config, sessions, scp = node
    ids = Ids.new()
    send(scp, loop_file(tmp_path, ids, "a"))
    received = last_received(sessions, ids.study)
    with sessions.begin() as s:
        early = received + dt.timedelta(seconds=STABLE_AGE_S - 0.5)
        assert complete_stable_studies(s, early, STABLE_AGE_S) == []
    assert study_row(sessions, ids.study).status == "receiving"
    at = received + dt.timedelta(seconds=STABLE_AGE_S)
    with sessions.begin() as s:
        done = complete_stable_studies(s, at, STABLE_AGE_S)
        assert [d.study_instance_uid for d in done] == [ids.study]
    study = study_row(sessions, ids.study)
    assert study.status == "complete"
    assert utc(study.completed_at) == at
    with sessions.begin() as s:
        assert complete_stable_studies(s, at + dt.timedelta(hours=1), STABLE_AGE_S) == []


def test_assembly_records_every_verdict_and_queues_the_a4c_loop(node, tmp_path) -> None:
    config, sessions, scp = node
    study = Ids.new()
    a4c = Ids.new(study.study)
    still = Ids.new(study.study)
    unnamed = Ids.new(study.study)
    send(
        scp,
        loop_file(tmp_path, a4c, "a4c"),
        loop_file(tmp_path, still, "still", frames=1),
        loop_file(tmp_path, unnamed, "unnamed", description=""),
    )
    judge = judge_file(config, classifier=None)
    now = last_received(sessions, study.study) + dt.timedelta(seconds=STABLE_AGE_S)
    result = assemble(sessions, config, judge, now)
    assert len(result.completed_study_ids) == 1 and len(result.queued_job_ids) == 1
    with sessions() as s:
        job = s.get(Job, result.queued_job_ids[0])
        instance = s.get(Instance, job.instance_fk)
        assert (job.state, job.attempts, instance.sop_instance_uid) == ("queued", 0, a4c.sop)
    assert series_row(sessions, a4c.series).eligibility == "eligible"
    rejected = series_row(sessions, still.series)
    assert rejected.eligibility == "not_eligible"
    assert rejected.not_analysed_reason == "a still image (one frame), not a cine loop"
    unknown = series_row(sessions, unnamed.series)
    assert unknown.eligibility == "not_eligible"
    assert unknown.not_analysed_reason.startswith("view unknown")
    assert study_row(sessions, study.study).status == "analysing"


def test_a_late_instance_reopens_the_study_and_only_new_loops_get_jobs(node, tmp_path) -> None:
    config, sessions, scp = node
    first = Ids.new()
    send(scp, loop_file(tmp_path, first, "first"))
    judge = judge_file(config, classifier=None)
    now = last_received(sessions, first.study) + dt.timedelta(seconds=STABLE_AGE_S)
    (first_job,) = assemble(sessions, config, judge, now).queued_job_ids

    late = Ids.new(first.study)
    send(scp, loop_file(tmp_path, late, "late"), loop_file(tmp_path, first, "first"))  # + a resend
    reopened = study_row(sessions, first.study)
    assert reopened.status == "receiving"
    assert reopened.status_reason.startswith("reopened")
    received = last_received(sessions, first.study)
    early = assemble(sessions, config, judge, received + dt.timedelta(seconds=1))
    assert early.completed_study_ids == () and early.queued_job_ids == ()
    again = assemble(sessions, config, judge, received + dt.timedelta(seconds=STABLE_AGE_S))
    assert len(again.completed_study_ids) == 1
    (late_job,) = again.queued_job_ids
    assert late_job != first_job
    with sessions() as s:
        jobs = s.scalars(select(Job).order_by(Job.id)).all()
        assert [j.id for j in jobs] == [first_job, late_job]
        assert s.get(Instance, jobs[1].instance_fk).sop_instance_uid == late.sop
        assert s.scalar(select(func.count()).select_from(Instance)) == 2
    assert study_row(sessions, first.study).status == "analysing"
    # a third quiet pass finds nothing more to do
    later = assemble(sessions, config, judge, received + dt.timedelta(minutes=10))
    assert later == type(later)((), ())


def test_a_study_without_an_eligible_loop_is_marked_not_eligible(node, tmp_path) -> None:
    config, sessions, scp = node
    ids = Ids.new()
    send(scp, loop_file(tmp_path, ids, "short", frames=10))  # 0.3 s, no heart rate
    now = last_received(sessions, ids.study) + dt.timedelta(seconds=STABLE_AGE_S)
    result = assemble(sessions, config, judge_file(config, None), now)
    assert result.queued_job_ids == ()
    study = study_row(sessions, ids.study)
    assert study.status == "not_eligible"
    assert "no loop eligible" in study.status_reason
    assert series_row(sessions, ids.series).not_analysed_reason.startswith(
        "shorter than selection.min_duration_s"
    )


def test_a_series_with_several_loops_names_each_one_not_analysed(node, tmp_path) -> None:
    config, sessions, scp = node
    good = Ids.new()
    bad = Ids.new(good.study, good.series)
    bad_file = loop_file(tmp_path, bad, "bad", frames=1)
    from pydicom import dcmread

    ds = dcmread(bad_file)
    ds.InstanceNumber = 2
    ds.save_as(bad_file)
    send(scp, loop_file(tmp_path, good, "good"), bad_file)
    now = last_received(sessions, good.study) + dt.timedelta(seconds=STABLE_AGE_S)
    result = assemble(sessions, config, judge_file(config, None), now)
    assert len(result.queued_job_ids) == 1
    series = series_row(sessions, good.series)
    assert series.eligibility == "eligible"
    assert series.not_analysed_reason == "instance 2: a still image (one frame), not a cine loop"


def test_a_study_left_complete_but_unjudged_is_judged_on_the_next_pass(node, tmp_path) -> None:
    config, sessions, scp = node
    ids = Ids.new()
    send(scp, loop_file(tmp_path, ids, "a"))
    now = last_received(sessions, ids.study) + dt.timedelta(seconds=STABLE_AGE_S)
    with sessions.begin() as s:  # completed, then the node died before judging it
        assert len(complete_stable_studies(s, now, STABLE_AGE_S)) == 1
    result = assemble(sessions, config, judge_file(config, None), now)
    assert result.completed_study_ids == () and len(result.queued_job_ids) == 1
    assert study_row(sessions, ids.study).status == "analysing"
