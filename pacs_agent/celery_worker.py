"""The worker side of the Celery backend: what an ``echo-agent worker`` process does with a
delivered message. It claims the job with a conditional UPDATE (a duplicate or a job running
elsewhere is a no-op), runs it under a heartbeat, records the outcome, and re-publishes a
failed attempt with a countdown. Its engine and models are built once per process
(``WorkerRuntime``), never per task. The broker settings and the node side (publishing,
the sweeper) are in ``pacs_agent.celery_queue``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import Celery
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from pacs_agent import jobs
from pacs_agent.celery_queue import QUEUE_NAME, TASK_NAME, make_celery_app, publish
from pacs_agent.config import Config, QueueConfig
from pacs_agent.db.models import utcnow
from pacs_agent.readiness import CNN, ModelStatus
from pacs_agent.states import JobState
from reporting.warmup import warm_dicom_writers

if TYPE_CHECKING:
    from inference.model_cache import ModelCache

log = logging.getLogger("echo_agent.celery")


class JobHeartbeat:
    """Stamps the job's heartbeat every ``interval_s`` while a worker runs it (a thread, so a
    long model call in the task does not stop the beat)."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        job_id: int,
        worker_id: str,
        interval_s: float,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._args = (session_factory, job_id, worker_id, clock)
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id}")
        self._thread.daemon = True

    def __enter__(self) -> JobHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        session_factory, job_id, worker_id, clock = self._args
        while not self._stop.wait(self._interval_s):
            try:
                jobs.heartbeat(session_factory, [(job_id, worker_id)], clock())
            except Exception:
                log.exception("heartbeat of job %d failed", job_id)


def deliver_job(
    session_factory: sessionmaker[Session],
    job_id: int,
    worker_id: str,
    runner: Callable[[int], None],
    queue_config: QueueConfig,
    clock: Callable[[], dt.datetime] = utcnow,
) -> str:
    """What a delivered message does: claim the job, run it with a heartbeat, record the
    outcome. Returns the job's new state, or "skipped" when the claim lost (the job is done,
    not due, or running with a fresh heartbeat elsewhere): a duplicate changes nothing."""
    now = clock()
    stale_before = now - dt.timedelta(seconds=queue_config.heartbeat_stale_s)
    if not jobs.claim_job(session_factory, job_id, worker_id, now, stale_before):
        log.info("job %d: nothing to do for this delivery (done, not due, or running)", job_id)
        return "skipped"
    backoff = jobs.Backoff(queue_config.backoff_initial_s, queue_config.backoff_max_s)
    interval_s = queue_config.heartbeat_stale_s / 3
    with JobHeartbeat(session_factory, job_id, worker_id, interval_s, clock):
        state = jobs.execute_job(session_factory, job_id, worker_id, runner, backoff, clock)
    log.info("job %d -> %s on %s", job_id, state, worker_id)
    return state or "lost"


class WorkerRuntime:
    """What one worker process holds: its database engine and its models, made once per
    process on first use (or at ``preload``), never per task. A prefork child builds its own
    (an engine's connections must not cross a fork)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._engine: Engine | None = None
        self._session_factory: sessionmaker[Session] | None = None
        self._runner: Callable[[int], None] | None = None
        self._models: ModelCache | None = None
        self.model_status = ModelStatus()  # what this process's /metrics reports
        # publishes the delivery jobs an analysis queues (set by ``register_worker_task``);
        # None: they wait in the table for the listener's sweeper
        self.publish: Callable[[int], None] | None = None

    @property
    def worker_id(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}:celery"

    def preload(self) -> None:
        """Builds the engine, loads the networks and parses highdicom's standard tables now,
        so the first job does not wait."""
        self._ensure()
        assert self._models is not None
        try:
            self.model_status.track(CNN, self._models.get)
        except ValueError as exc:
            log.error("models not usable: %s (jobs will fail until fixed)", exc)
        try:  # so the first job's first SEG/SR does not parse highdicom's standard tables
            log.info("highdicom standard tables parsed in %.2f s", warm_dicom_writers())
        except Exception as exc:
            log.error("highdicom standard tables not pre-loaded: %s", exc)

    def deliver(self, job_id: int) -> str:
        session_factory, runner = self._ensure()
        return deliver_job(session_factory, job_id, self.worker_id, runner, self.config.queue)

    def seconds_until_due(self, job_id: int) -> float | None:
        session_factory, _ = self._ensure()
        with session_factory() as session:
            return jobs.seconds_until_due(session, job_id, utcnow())

    def _ensure(self) -> tuple[sessionmaker[Session], Callable[[int], None]]:
        from inference.model_cache import ModelCache
        from pacs_agent.analysis import model_settings
        from pacs_agent.db import make_engine, make_session_factory
        from pacs_agent.db.engine import PoolSettings
        from pacs_agent.deliveries import job_runner
        from pacs_agent.drafting import TextModelCache
        from pacs_agent.pipeline import run_job

        with self._lock:
            if self._pid != os.getpid():
                config = self.config
                db = config.database
                self._engine = make_engine(
                    config.database_url,
                    echo_sql=db.echo_sql,
                    pool=PoolSettings(db.pool_size, db.max_overflow, db.pool_recycle_s),
                )
                session_factory = make_session_factory(self._engine)
                models = ModelCache(model_settings(config))
                text_models = TextModelCache(config)

                def analyse(job_id: int) -> None:
                    run_job(
                        job_id, session_factory, config, models, text_models, submit=self.publish
                    )

                self._session_factory, self._runner, self._models = (
                    session_factory,
                    job_runner(session_factory, config, analyse),
                    models,
                )
                self._pid = os.getpid()
            assert self._session_factory is not None and self._runner is not None
            return self._session_factory, self._runner


def register_worker_task(app: Celery, runtime: WorkerRuntime) -> Any:
    """Registers the task that runs delivered jobs with ``runtime``; returns it."""
    runtime.publish = lambda job_id: publish(app, job_id)

    @app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    def run_job_task(job_id: int) -> str:
        state = runtime.deliver(int(job_id))
        # a failed attempt with attempts left: come back when it is due
        if state == JobState.QUEUED:
            delay_s = runtime.seconds_until_due(int(job_id))
            if delay_s is not None:
                publish(app, int(job_id), countdown_s=delay_s)
        return state

    return run_job_task


def run_worker(config: Config, metrics_address: tuple[str, int] | None = None) -> int:
    """``echo-agent worker``: a Celery worker on ``queue.broker_url``. One job at a time per
    process: the ``solo`` pool when ``queue.workers`` is 1 (a SIGKILL ends exactly the
    process that runs the job), else ``prefork`` with that many children.

    ``metrics_address`` (host, port): serve this process's own metrics (its models' load time
    and readiness, GPU memory); counts of studies and jobs come from the web role's
    ``/metrics``, which reads the shared database, so nothing is counted twice."""
    from celery.signals import worker_process_init

    from pacs_agent.db import ensure_schema, make_engine

    engine = make_engine(config.database_url)
    try:
        revision = ensure_schema(engine, config.database_url)
    finally:
        engine.dispose()
    log.info("database %s at schema %s", config.database_url.split("@")[-1], revision)
    app = make_celery_app(config)
    runtime = WorkerRuntime(config)
    register_worker_task(app, runtime)
    if metrics_address is not None:
        from pacs_agent.metrics import process_registry, serve_metrics

        if config.queue.workers > 1:  # prefork: the models load in the children, not here
            log.warning("worker metrics show the parent process only (no model states)")
        serve_metrics(process_registry(runtime.model_status), *metrics_address)
        log.info("worker metrics at http://%s:%d/metrics", *metrics_address)
    pool = "solo" if config.queue.workers == 1 else "prefork"
    if pool == "solo":
        runtime.preload()
    else:
        worker_process_init.connect(lambda **_: runtime.preload(), weak=False)
    worker = app.Worker(
        pool=pool,
        concurrency=config.queue.workers,
        loglevel=config.logging.level,
        hostname=f"echo-agent@{socket.gethostname()}.{os.getpid()}",
        queues=[QUEUE_NAME],
        without_gossip=True,
        without_mingle=True,
        without_heartbeat=True,
        optimization="fair",
    )
    print(f"echo-agent worker {runtime.worker_id} consuming {QUEUE_NAME}", flush=True)
    worker.start()
    return int(worker.exitcode or 0)
