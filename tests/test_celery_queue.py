"""The Celery backend's guarantees, on both databases and a real Redis: a job delivered twice
(or twice at once) runs once, a running job is taken over only when its heartbeat is stale,
and the sweeper re-queues jobs of dead workers and publishes lost messages again without
flooding a broker whose messages are intact."""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import time

import pytest
import redis
from support import require_or_skip
from test_jobs import T0, job, queued_jobs

from pacs_agent import jobs
from pacs_agent.celery_queue import QUEUE_NAME, CeleryQueue, make_celery_app
from pacs_agent.celery_worker import deliver_job
from pacs_agent.config import ConfigError, QueueConfig, load_config

REDIS_DB = 14  # this module's own database on the shared Redis, flushed before and after
CELERY_ENV = {
    "ECHO_AGENT_QUEUE_BACKEND": "celery",
    "ECHO_AGENT_QUEUE_BROKER_URL": f"redis://127.0.0.1:6379/{REDIS_DB}",
}
QUEUE = QueueConfig(
    backend="celery",
    broker_url=f"redis://127.0.0.1:6379/{REDIS_DB}",
    heartbeat_stale_s=30.0,
    republish_after_s=60.0,
    backoff_initial_s=10.0,
)


@pytest.fixture
def sessions(database_url: str):
    from pacs_agent.db import make_engine, make_session_factory, upgrade

    upgrade(database_url)
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


class Recorder:
    """A job runner that records each run (and can take its time)."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.calls: list[int] = []
        self.seconds = seconds
        self.lock = threading.Lock()

    def __call__(self, job_id: int) -> None:
        with self.lock:
            self.calls.append(job_id)
        time.sleep(self.seconds)


def at(seconds: float):
    return lambda: T0 + dt.timedelta(seconds=seconds)


def test_a_job_delivered_twice_runs_once(sessions) -> None:
    (job_id,) = queued_jobs(sessions, 1)
    runner = Recorder()
    assert deliver_job(sessions, job_id, "w1", runner, QUEUE, at(1)) == "done"
    assert deliver_job(sessions, job_id, "w2", runner, QUEUE, at(2)) == "skipped"
    assert runner.calls == [job_id]
    done = job(sessions, job_id)
    assert (done.state, done.attempts, done.worker_id) == ("done", 1, "w1")


def test_two_deliveries_at_once_claim_the_job_once(sessions) -> None:
    (job_id,) = queued_jobs(sessions, 1)
    runner = Recorder(seconds=0.5)
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def deliver(worker_id: str) -> None:
        barrier.wait()
        outcomes.append(deliver_job(sessions, job_id, worker_id, runner, QUEUE, at(1)))

    threads = [threading.Thread(target=deliver, args=(f"w{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["done", "skipped"]
    assert runner.calls == [job_id]


def test_a_running_job_is_taken_over_only_when_its_heartbeat_is_stale(sessions) -> None:
    (job_id,) = queued_jobs(sessions, 1)
    assert jobs.claim_next(sessions, "dead", T0) == job_id  # then the worker dies
    runner = Recorder()
    fresh = deliver_job(sessions, job_id, "w2", runner, QUEUE, at(QUEUE.heartbeat_stale_s - 1))
    assert fresh == "skipped" and runner.calls == []
    stale = deliver_job(sessions, job_id, "w2", runner, QUEUE, at(QUEUE.heartbeat_stale_s + 1))
    assert stale == "done" and runner.calls == [job_id]
    taken = job(sessions, job_id)
    assert (taken.state, taken.attempts, taken.worker_id) == ("done", 2, "w2")


def test_a_job_not_yet_due_is_not_run_early(sessions) -> None:
    (job_id,) = queued_jobs(sessions, 1)

    def fails(_job_id: int) -> None:
        raise RuntimeError("transient")

    assert deliver_job(sessions, job_id, "w1", fails, QUEUE, at(0)) == "queued"
    runner = Recorder()
    assert deliver_job(sessions, job_id, "w1", runner, QUEUE, at(1)) == "skipped"
    with sessions() as s:
        assert jobs.seconds_until_due(s, job_id, T0 + dt.timedelta(seconds=1)) == pytest.approx(9)
    assert deliver_job(sessions, job_id, "w1", runner, QUEUE, at(11)) == "done"
    assert runner.calls == [job_id]


def test_a_dead_workers_job_out_of_attempts_fails_instead_of_running(sessions) -> None:
    (job_id,) = queued_jobs(sessions, 1, max_attempts=1)
    assert jobs.claim_next(sessions, "dead", T0) == job_id
    runner = Recorder()
    assert deliver_job(sessions, job_id, "w2", runner, QUEUE, at(999)) == "skipped"
    with sessions.begin() as s:
        recovery = jobs.requeue_stale(s, at(999)(), at(1)())
    assert recovery.failed == (job_id,) and runner.calls == []
    assert job(sessions, job_id).state == "failed"


@pytest.fixture
def broker():
    client = redis.Redis.from_url(QUEUE.broker_url)
    try:
        client.ping()
    except redis.RedisError as exc:
        require_or_skip(f"Redis not reachable at {QUEUE.broker_url}: {exc}")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def queued_messages(client: redis.Redis) -> list[int]:
    """The job ids of the messages waiting in the broker's queue (Celery's JSON protocol)."""
    ids = []
    for raw in client.lrange(QUEUE_NAME, 0, -1):
        message = json.loads(raw)
        body = json.loads(base64.b64decode(message["body"]))
        ids.append(int(body[0][0]))
    return sorted(ids)


def test_the_sweeper_requeues_dead_workers_jobs_and_republishes_lost_ones(
    sessions, broker
) -> None:
    stale, lost, backlog = queued_jobs(sessions, 3)
    assert jobs.claim_next(sessions, "dead", T0) == stale
    app = make_celery_app(load_config(environ=CELERY_ENV))
    clock = at(QUEUE.republish_after_s + 5)  # every job waited past both limits
    queue = CeleryQueue(app, sessions, QUEUE, sweep=False, clock=clock)
    try:
        queue.submit(backlog)  # intact in the broker; the message of `lost` never arrived
        first = queue.sweep_once()
        assert first.requeued == (stale,)
        # fewer messages than waiting jobs: the ones not published lately go out again
        assert first.republished == (lost,)
        assert queued_messages(broker) == sorted([backlog, stale, lost])
        second = queue.sweep_once()
        assert second.requeued == () and second.republished == ()
        assert queued_messages(broker) == sorted([backlog, stale, lost]), "no duplicates"
        broker.flushdb()  # a broker restart that kept nothing
        later = CeleryQueue(app, sessions, QUEUE, sweep=False, clock=clock)
        # the requeued job was due only now: the next sweeps publish it once it waits too long
        assert set(later.sweep_once().republished) == {lost, backlog}
        assert queued_messages(broker) == sorted([backlog, lost])
    finally:
        app.close()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ECHO_AGENT_QUEUE_BACKEND": "celery"}, "queue.broker_url"),
        (
            {"ECHO_AGENT_QUEUE_BACKEND": "celery", "ECHO_AGENT_QUEUE_BROKER_URL": "http://x"},
            "queue.broker_url",
        ),
        ({"ECHO_AGENT_QUEUE_HEARTBEAT_STALE_S": "1"}, "queue.heartbeat_stale_s"),
        ({"ECHO_AGENT_QUEUE_VISIBILITY_TIMEOUT_S": "0"}, "queue.visibility_timeout_s"),
    ],
)
def test_bad_celery_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(environ=env)


def test_celery_settings_load_from_the_environment() -> None:
    config = load_config(
        environ={
            "ECHO_AGENT_QUEUE_BACKEND": "celery",
            "ECHO_AGENT_QUEUE_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//",
            "ECHO_AGENT_QUEUE_HEARTBEAT_STALE_S": "20",
        }
    )
    assert config.queue.broker_url.startswith("amqp://")
    assert config.queue.heartbeat_stale_s == 20.0
    app = make_celery_app(config)
    assert app.conf.task_acks_late and app.conf.task_reject_on_worker_lost
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.broker_transport_options["visibility_timeout"] == 600.0


def role_config(tmp_path, **env: str):
    from orthanc_helpers import free_tcp_port

    return load_config(
        environ={
            "ECHO_AGENT_HOME": str(tmp_path / "home"),
            "ECHO_AGENT_DICOM_PORT": str(free_tcp_port()),
            "ECHO_AGENT_WEB_PORT": str(free_tcp_port()),
            "ECHO_AGENT_LLM_CHAT": "false",
            "ECHO_AGENT_LLM_DRAFT": "false",  # no model warm-up thread outliving the test
            **env,
        }
    )


def accepts(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_the_web_role_serves_the_review_app_and_nothing_else(tmp_path) -> None:
    import urllib.request

    from echo_agent.node import start_node

    config = role_config(tmp_path)
    node = start_node(config, role="web")
    try:
        assert node.scp is None and node.queue is None and node.dicom_port is None
        with urllib.request.urlopen(f"http://127.0.0.1:{node.web_port}/healthz") as resp:
            assert resp.status == 200
        assert not accepts(config.dicom.port)
    finally:
        node.stop()


def test_the_listener_role_takes_dicom_and_serves_no_web(tmp_path) -> None:
    from echo_agent.node import start_node

    config = role_config(tmp_path)
    node = start_node(config, role="listener")
    try:
        assert node.web_port is None and node.queue is not None
        assert accepts(config.dicom.port)
        assert not accepts(config.web.port)
    finally:
        node.stop()
    assert not accepts(config.dicom.port)


def test_an_unknown_role_is_refused(tmp_path) -> None:
    from echo_agent.node import start_node

    with pytest.raises(ConfigError, match="role must be one of"):
        start_node(role_config(tmp_path), role="worker")


def test_worker_command_needs_the_celery_backend(tmp_path, monkeypatch, capsys) -> None:
    from echo_agent.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ECHO_AGENT_HOME", str(tmp_path / "home"))
    assert main(["worker"]) == 2
    assert "echo-agent worker needs queue.backend = 'celery'" in capsys.readouterr().err


def test_rabbitmq_carries_the_messages_and_reports_the_backlog() -> None:
    """The sweeper's loss check reads the queue length; with RabbitMQ too (the other broker)."""
    url = "amqp://guest:guest@127.0.0.1:5672//"
    app = make_celery_app(
        load_config(
            environ={"ECHO_AGENT_QUEUE_BACKEND": "celery", "ECHO_AGENT_QUEUE_BROKER_URL": url}
        )
    )
    try:
        try:
            with app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1)
        except Exception as exc:
            require_or_skip(f"RabbitMQ not reachable at {url}: {exc}")
        queue = CeleryQueue(app, None, QUEUE, sweep=False)  # type: ignore[arg-type]
        queue.submit(7)  # declares the queue, then publishes
        app.control.purge()
        assert queue.broker_backlog() == 0
        queue.submit(7)
        queue.submit(8)
        assert wait_for(lambda: queue.broker_backlog() == 2)
        with app.connection_for_write() as conn:
            received = []
            with conn.SimpleQueue(QUEUE_NAME) as simple:
                for _ in range(2):
                    message = simple.get(timeout=10)
                    received.append(message.payload[0][0])
                    message.ack()
        assert sorted(received) == [7, 8]
    finally:
        app.control.purge()
        app.close()


def wait_for(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True
