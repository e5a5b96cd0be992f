"""Jobs on both databases: atomic claiming under competing workers, back-off and final
failure, heartbeats, start-up recovery of jobs a crash left running, and the pipeline a job
runs (a corrupt loop fails its job, not the worker; a re-run does not duplicate outputs)."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
from dicom_helpers import Ids, fake_encapsulated, us_loop_dataset, with_meta, write_instance
from pydicom.uid import JPEGBaseline8Bit
from sqlalchemy import select

from pacs_agent import jobs
from pacs_agent.config import Config
from pacs_agent.db import make_engine, make_session_factory, upgrade
from pacs_agent.db.models import Instance, Job, Patient, Series, Study
from pacs_agent.pipeline import (
    DECODED_SUMMARY_NAME,
    PixelDataError,
    decode_loop,
    job_output_dir,
    read_log,
    run_job,
)
from pacs_agent.queue import LocalThreadQueue

T0 = dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
FAST = jobs.Backoff(initial_s=10.0, max_s=25.0)


@pytest.fixture
def sessions(database_url: str):
    upgrade(database_url)
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


def add_study(sessions, n_instances: int, status: str = "analysing") -> tuple[int, list[int]]:
    """A study with one series of ``n_instances`` instances; returns (study id, instance ids)."""
    with sessions.begin() as s:
        count = s.scalar(select(Study.id).order_by(Study.id.desc()).limit(1)) or 0
        tag = f"{count + 1}.{time.monotonic_ns()}"
        patient = Patient(patient_id=f"P{tag}"[:64])
        study = Study(study_instance_uid=f"1.2.9.{tag}", patient=patient, status=status)
        series = Series(series_instance_uid=f"1.2.9.{tag}.1", study=study, modality="US")
        instances = [
            Instance(
                sop_instance_uid=f"1.2.9.{tag}.1.{i}",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.3.1",
                series=series,
                instance_number=i,
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                number_of_frames=10,
                file_path=f"x/{i}.dcm",
                file_size_bytes=1,
                sha256="0" * 64,
            )
            for i in range(n_instances)
        ]
        s.add_all([patient, study, series, *instances])
        s.flush()
        return study.id, [i.id for i in instances]


def queued_jobs(sessions, n: int, max_attempts: int = 3) -> list[int]:
    study_id, instance_ids = add_study(sessions, n)
    with sessions.begin() as s:
        created = [jobs.create_job(s, study_id, i, T0, max_attempts) for i in instance_ids]
        assert all(c is not None for c in created)
        return jobs.enqueue(s, [c for c in created if c is not None], T0)


def job(sessions, job_id: int) -> Job:
    with sessions() as s:
        found = s.get(Job, job_id)
        assert found is not None
        return found


def test_backoff_doubles_and_is_capped() -> None:
    backoff = jobs.Backoff(initial_s=2.0, max_s=10.0)
    assert [backoff.delay_s(a) for a in (1, 2, 3, 4, 5)] == [2.0, 4.0, 8.0, 10.0, 10.0]
    with pytest.raises(ValueError):
        backoff.delay_s(0)


def test_a_job_is_created_once_per_instance_and_kind(sessions) -> None:
    study_id, (instance_id,) = add_study(sessions, 1)
    with sessions.begin() as s:
        first = jobs.create_job(s, study_id, instance_id, T0, 3)
        again = jobs.create_job(s, study_id, instance_id, T0, 3)
        other_kind = jobs.create_job(s, study_id, instance_id, T0, 3, kind="export")
    assert first is not None and again is None and other_kind not in (None, first)
    assert job(sessions, first).state == "received"
    with sessions.begin() as s:
        assert jobs.enqueue(s, [first, first], T0) == [first]


def test_two_competing_threads_never_claim_the_same_job(sessions) -> None:
    ids = queued_jobs(sessions, 24)
    claimed: dict[str, list[int]] = {"a": [], "b": []}
    start = threading.Barrier(2)

    def worker(name: str) -> None:
        start.wait()
        while (got := jobs.claim_next(sessions, name, T0)) is not None:
            claimed[name].append(got)

    threads = [threading.Thread(target=worker, args=(n,)) for n in claimed]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not set(claimed["a"]) & set(claimed["b"])
    assert sorted(claimed["a"] + claimed["b"]) == sorted(ids)
    for job_id in ids:
        row = job(sessions, job_id)
        assert (row.state, row.attempts) == ("running", 1)
        assert row.worker_id in claimed and job_id in claimed[row.worker_id]


def test_a_queue_with_two_workers_runs_every_job_exactly_once(sessions) -> None:
    ids = queued_jobs(sessions, 10)
    runs: list[int] = []
    lock = threading.Lock()

    def runner(job_id: int) -> None:
        time.sleep(0.02)
        with lock:
            runs.append(job_id)

    queue = LocalThreadQueue(sessions, runner, workers=2, poll_interval_s=0.05)
    queue.start()
    for job_id in ids:
        queue.submit(job_id)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(runs) < len(ids):
        time.sleep(0.05)
    assert queue.stop(timeout_s=10)
    assert sorted(runs) == sorted(ids)
    assert {job(sessions, i).state for i in ids} == {"done"}
    workers = {job(sessions, i).worker_id for i in ids}
    assert all(":w" in w for w in workers)


def test_failed_attempts_back_off_exponentially_then_fail_for_good(sessions) -> None:
    (job_id,) = queued_jobs(sessions, 1, max_attempts=3)

    def broken(_job_id: int) -> None:
        raise RuntimeError("decoder exploded")

    now = T0
    for attempt in (1, 2, 3):
        assert jobs.claim_next(sessions, "w", now) == job_id
        state = jobs.execute_job(sessions, job_id, "w", broken, FAST, lambda: now)  # noqa: B023
        row = job(sessions, job_id)
        assert row.attempts == attempt
        assert "RuntimeError: decoder exploded" in row.last_error
        if attempt == 3:
            assert state == "failed" and row.finished_at is not None
            break
        assert state == "queued"
        delay = dt.timedelta(seconds=FAST.delay_s(attempt))  # 10 s, then 20 s
        assert jobs.utc(row.next_attempt_at) == now + delay
        # not due a moment before the back-off ends, due when it does
        assert jobs.claim_next(sessions, "w", now + delay - dt.timedelta(seconds=1)) is None
        now += delay
    assert jobs.claim_next(sessions, "w", now + dt.timedelta(days=1)) is None
    with sessions() as s:
        study = s.get(Study, job(sessions, job_id).study_fk)
        assert study is not None
        assert study.status == "failed", "a study whose every job failed says so"


def test_back_off_is_capped(sessions) -> None:
    (job_id,) = queued_jobs(sessions, 1, max_attempts=5)
    now = T0
    for attempt in (1, 2, 3):
        assert jobs.claim_next(sessions, "w", now) == job_id
        jobs.fail_attempt(sessions, job_id, "w", "boom", now, FAST)
        wait = jobs.utc(job(sessions, job_id).next_attempt_at) - now
        assert wait == dt.timedelta(seconds=min(25.0, 10.0 * 2 ** (attempt - 1)))
        now += wait


def test_a_permanent_error_fails_the_job_without_retries(sessions) -> None:
    (job_id,) = queued_jobs(sessions, 1, max_attempts=3)

    def corrupt(_job_id: int) -> None:
        raise jobs.PermanentJobError("pixel data truncated")

    assert jobs.claim_next(sessions, "w", T0) == job_id
    assert jobs.execute_job(sessions, job_id, "w", corrupt, FAST, lambda: T0) == "failed"
    row = job(sessions, job_id)
    assert (row.state, row.attempts, row.last_error) == ("failed", 1, "pixel data truncated")


def test_start_up_recovery_requeues_running_jobs_and_counts_the_attempt(sessions) -> None:
    crashed, spent, fresh = queued_jobs(sessions, 3, max_attempts=2)
    with sessions.begin() as s:
        s.get(Job, spent).attempts = 1  # one attempt already used before this crash
    assert jobs.claim_next(sessions, "old-node:w0", T0) == crashed
    assert jobs.claim_next(sessions, "old-node:w0", T0) == spent
    with sessions.begin() as s:
        s.get(Job, fresh).state = "received"  # created, never queued, before the crash
    # the old node dies here: nothing finishes its jobs
    later = T0 + dt.timedelta(minutes=5)
    with sessions.begin() as s:
        recovery = jobs.recover_interrupted(s, later)
    assert sorted(recovery.requeued) == sorted([crashed, fresh])
    assert recovery.failed == (spent,)
    row = job(sessions, crashed)
    assert (row.state, row.attempts) == ("queued", 1)
    assert "interrupted" in row.last_error
    spent_row = job(sessions, spent)
    assert (spent_row.state, spent_row.attempts) == ("failed", 2)
    assert "no attempts left" in spent_row.last_error

    assert jobs.claim_next(sessions, "new-node:w0", later) in (crashed, fresh)
    assert jobs.claim_next(sessions, "new-node:w0", later) in (crashed, fresh)
    assert job(sessions, crashed).attempts == 2, "the interrupted attempt stays counted"
    # the old worker, were it still alive somewhere, can no longer finish the job
    assert not jobs.finish_job(sessions, crashed, "old-node:w0", later)
    assert jobs.finish_job(sessions, crashed, "new-node:w0", later)
    assert job(sessions, crashed).state == "done"


def test_heartbeats_stamp_only_the_owners_running_jobs(sessions) -> None:
    a, b = queued_jobs(sessions, 2)
    assert jobs.claim_next(sessions, "w1", T0) == a
    later = T0 + dt.timedelta(seconds=30)
    jobs.heartbeat(sessions, [(a, "w1"), (b, "w1")], later)
    assert jobs.utc(job(sessions, a).heartbeat_at) == later
    assert job(sessions, b).heartbeat_at is None, "a queued job has no heartbeat"
    jobs.heartbeat(sessions, [(a, "someone-else")], later + dt.timedelta(seconds=5))
    assert jobs.utc(job(sessions, a).heartbeat_at) == later


def test_stopping_the_queue_leaves_a_long_job_running_for_recovery(sessions) -> None:
    (job_id,) = queued_jobs(sessions, 1)
    started, release = threading.Event(), threading.Event()

    def slow(_job_id: int) -> None:
        started.set()
        release.wait(30)

    queue = LocalThreadQueue(sessions, slow, workers=1, poll_interval_s=0.05)
    queue.start()
    queue.submit(job_id)
    assert started.wait(20)
    assert queue.stop(timeout_s=0.2) is False
    assert job(sessions, job_id).state == "running"
    release.set()


def corrupt_jpeg_loop(path) -> None:
    """A loop whose header is fine and whose JPEG fragments are garbage."""
    ds = us_loop_dataset(Ids.new(), frames=3, rows=32, columns=40)
    ds.PixelData = fake_encapsulated([b"\xff\xd8 not a jpeg at all"] * 3)
    ds["PixelData"].VR = "OB"
    with_meta(ds, JPEGBaseline8Bit)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def test_corrupt_pixel_data_fails_its_job_and_the_worker_goes_on(sessions, tmp_path) -> None:
    config = Config(home=str(tmp_path / "home"))
    study_id, (bad, good) = add_study(sessions, 2)  # stored as x/0.dcm and x/1.dcm
    corrupt_jpeg_loop(config.store_path / "x" / "0.dcm")
    write_instance(config.store_path / "x" / "1.dcm", us_loop_dataset(Ids.new(), frames=5))
    with sessions.begin() as s:
        ids = [jobs.create_job(s, study_id, i, T0, 3) for i in (bad, good)]
        jobs.enqueue(s, ids, T0)
    queue = LocalThreadQueue(
        sessions, lambda j: run_job(j, sessions, config), workers=1, poll_interval_s=0.05
    )
    queue.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if all(job(sessions, i).state in jobs.TERMINAL_STATES for i in ids):
            break
        time.sleep(0.05)
    assert queue.stop(timeout_s=10)
    failed, done = (job(sessions, i) for i in ids)
    assert (failed.state, failed.attempts) == ("failed", 1), "no retry for corrupt pixel data"
    assert failed.last_error.startswith("cannot decode pixel data (JPEG Baseline"), failed
    assert (done.state, done.last_error) == ("done", "")
    with pytest.raises(PixelDataError):
        decode_loop(config.store_path / "x" / "0.dcm")


def test_running_a_job_twice_does_not_duplicate_its_outputs(sessions, tmp_path) -> None:
    config = Config(home=str(tmp_path / "home"))
    study_id, (instance_id,) = add_study(sessions, 1)
    write_instance(config.store_path / "x" / "0.dcm", us_loop_dataset(Ids.new(), frames=7))
    with sessions.begin() as s:
        job_id = jobs.create_job(s, study_id, instance_id, T0, 3)
    assert job_id is not None
    run_job(job_id, sessions, config)
    out = job_output_dir(config, job_id)
    first = sorted(p.name for p in out.iterdir())
    summary = (out / DECODED_SUMMARY_NAME).read_text()
    run_job(job_id, sessions, config)
    assert sorted(p.name for p in out.iterdir()) == first
    assert (out / DECODED_SUMMARY_NAME).read_text() == summary
    events = [e["event"] for e in read_log(out)]
    assert events.count("decoded") == 2 and events.count("finished") == 2
    decoded = next(e for e in read_log(out) if e["event"] == "decoded")
    assert (decoded["n_frames"], decoded["frame_time_ms"]) == (7, 33.3)
    assert decoded["duration_s"] == pytest.approx(7 * 0.0333)  # frames on screen x frame time


def test_a_job_whose_file_left_the_store_fails_clearly(sessions, tmp_path) -> None:
    config = Config(home=str(tmp_path / "home"))
    study_id, (instance_id,) = add_study(sessions, 1)
    with sessions.begin() as s:
        job_id = jobs.create_job(s, study_id, instance_id, T0, 3)
    assert job_id is not None
    with pytest.raises(jobs.PermanentJobError, match=r"x/0\.dcm is missing from the store"):
        run_job(job_id, sessions, config)
