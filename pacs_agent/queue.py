"""Job queues: how a job id reaches a worker. The jobs table, not the queue, is the truth.

``LocalThreadQueue`` (the default) runs worker threads inside the node that poll the table;
``submit`` only wakes one early. A job submitted just before the process dies is therefore not
lost: it is still ``queued`` in the table, and the next start-up finds it. The Celery backend
(``pacs_agent.celery_queue``) sits behind the same ``JobQueue`` interface.

Deliveries (``pacs_agent.deliveries``) run on their own worker thread, a lane apart from the
analysis workers, rather than on the analysis workers with a claim order that prefers analysis:
a preference only orders what is due at the moment of the claim, so a delivery claimed a moment
before a study arrives would still hold the (default: single) analysis worker for a whole
network timeout against a dead peer, per try. A thread that spends its time waiting on sockets
costs the node no CPU or GPU, so the analysis workers are never the ones that wait. Each try is
bounded by the transport's timeout (C-STORE ``export.NETWORK_TIMEOUT_S`` per step, the EHR's
``ehr.timeout_s``), and the back-off between tries is spent with the job queued in the table,
not by a sleeping worker, so a dead destination delays other deliveries by at most one timeout
per try.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Protocol

from sqlalchemy.orm import Session, sessionmaker

from pacs_agent import jobs
from pacs_agent.db.models import utcnow

log = logging.getLogger(__name__)


class JobQueue(Protocol):
    """What the node needs from a queue backend."""

    def submit(self, job_id: int) -> None:
        """Asks for the (already ``queued``) job to run soon."""

    def start(self) -> None:
        """Starts consuming jobs."""

    def stop(self, timeout_s: float) -> bool:
        """Stops taking new jobs and waits up to ``timeout_s`` for running ones.

        Returns False when a job was still running at the deadline; it stays ``running`` in
        the table and start-up recovery queues it again.
        """


class LocalThreadQueue:
    """``workers`` threads that claim due jobs from the table and run ``runner(job_id)``.

    With ``delivery_workers`` > 0, that many more threads run the delivery jobs and the
    ``workers`` run everything else (the lanes of ``jobs.claim_next``); with 0, the ``workers``
    run every kind.
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        runner: Callable[[int], None],
        workers: int = 1,
        poll_interval_s: float = 1.0,
        heartbeat_interval_s: float = 5.0,
        backoff: jobs.Backoff = jobs.DEFAULT_JOB_BACKOFF,
        clock: Callable[[], dt.datetime] = utcnow,
        delivery_workers: int = 0,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if delivery_workers < 0:
            raise ValueError(f"delivery_workers must not be negative, got {delivery_workers}")
        self._session_factory = session_factory
        self._runner = runner
        self._workers = workers
        self._delivery_workers = delivery_workers
        self._poll_interval_s = poll_interval_s
        self._heartbeat_interval_s = heartbeat_interval_s
        self._backoff = backoff
        self._clock = clock
        # one wake-up per lane: a delivery submitted must not be swallowed by an analysis worker
        self._wakeups = {lane: threading.Semaphore(0) for lane in self._lanes()}
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running: dict[int, str] = {}  # job id -> worker id, for the heartbeat thread
        self._running_lock = threading.Lock()
        # unique per process and thread, and readable in the jobs table
        self._id_prefix = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"

    def _lanes(self) -> tuple[str | None, ...]:
        if self._delivery_workers == 0:
            return (None,)
        return (jobs.LANE_ANALYSIS, jobs.LANE_DELIVERY)

    def _lane_workers(self) -> list[tuple[str | None, str, str]]:
        """(lane, worker id, thread name) of every worker thread."""
        if self._delivery_workers == 0:
            return [
                (None, f"{self._id_prefix}:w{i}", f"job-worker-{i}") for i in range(self._workers)
            ]
        analysis = [
            (jobs.LANE_ANALYSIS, f"{self._id_prefix}:w{i}", f"job-worker-{i}")
            for i in range(self._workers)
        ]
        delivery = [
            (jobs.LANE_DELIVERY, f"{self._id_prefix}:d{i}", f"delivery-worker-{i}")
            for i in range(self._delivery_workers)
        ]
        return analysis + delivery

    def submit(self, job_id: int) -> None:
        """Wakes one worker of each lane (the job's kind is in the table, not asked here):
        the one whose lane it is claims it, the other finds nothing and waits again."""
        for wakeup in self._wakeups.values():
            wakeup.release()

    def start(self) -> None:
        if self._threads:
            raise RuntimeError("queue already started")
        for lane, worker_id, name in self._lane_workers():
            thread = threading.Thread(
                target=self._work, args=(worker_id, lane), name=name, daemon=True
            )
            self._threads.append(thread)
        self._threads.append(threading.Thread(target=self._beat, name="job-heartbeat", daemon=True))
        for thread in self._threads:
            thread.start()

    def stop(self, timeout_s: float) -> bool:
        self._stopping.set()
        for _ in range(self._workers + self._delivery_workers):
            for wakeup in self._wakeups.values():
                wakeup.release()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        still = [t.name for t in self._threads if t.is_alive()]
        if still:
            with self._running_lock:
                left = sorted(self._running)
            log.warning("stopped waiting for %s; job(s) %s stay running for recovery", still, left)
        return not still

    def running_jobs(self) -> dict[int, str]:
        with self._running_lock:
            return dict(self._running)

    def _work(self, worker_id: str, lane: str | None) -> None:
        wakeup = self._wakeups[lane]
        while not self._stopping.is_set():
            try:
                job_id = jobs.claim_next(self._session_factory, worker_id, self._clock(), lane=lane)
            except Exception:
                log.exception("worker %s cannot claim jobs; retrying", worker_id)
                job_id = None
            if job_id is None:
                wakeup.acquire(timeout=self._poll_interval_s)
                continue
            with self._running_lock:
                self._running[job_id] = worker_id
            try:
                state = jobs.execute_job(
                    self._session_factory,
                    job_id,
                    worker_id,
                    self._runner,
                    self._backoff,
                    self._clock,
                )
                log.info("job %d -> %s", job_id, state)
            except Exception:
                # recording the outcome failed (database gone): the job stays running and is
                # recovered at the next start; the worker lives on
                log.exception("job %d: cannot record the outcome", job_id)
            finally:
                with self._running_lock:
                    self._running.pop(job_id, None)

    def _beat(self) -> None:
        while not self._stopping.wait(self._heartbeat_interval_s):
            running = self.running_jobs()
            if not running:
                continue
            try:
                jobs.heartbeat(self._session_factory, running.items(), self._clock())
            except Exception:
                log.exception("heartbeat failed")


def make_queue(
    backend: str,
    session_factory: sessionmaker[Session],
    runner: Callable[[int], None],
    workers: int,
    backoff: jobs.Backoff = jobs.DEFAULT_JOB_BACKOFF,
    delivery_workers: int = 0,
) -> JobQueue:
    """The queue named by ``queue.backend``."""
    if backend == "local":
        return LocalThreadQueue(
            session_factory,
            runner,
            workers=workers,
            backoff=backoff,
            delivery_workers=delivery_workers,
        )
    # celery needs the whole configuration (broker, timings): see pacs_agent.celery_queue
    raise ValueError(f"queue backend {backend!r} is not built here (make_queue runs 'local')")
