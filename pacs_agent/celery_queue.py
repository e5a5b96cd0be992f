"""The Celery queue backend: job ids travel through a broker to ``echo-agent worker`` processes.

The jobs table stays the truth; a message only says "look at job N". A delivered task claims
its job with the same kind of conditional UPDATE the local threads use, so:

- a message delivered twice (a redelivery after a lost ack, a sweeper's re-publish) finds the
  job done, or running with a fresh heartbeat elsewhere, and does nothing;
- a message of a worker killed mid-job comes back (``acks_late``: RabbitMQ on the dropped
  connection, Redis after ``visibility_timeout``) and the next worker takes the job over once
  its heartbeat is stale;
- a message lost with the broker (Redis that keeps nothing on disk, restarted) is published
  again by the listener's sweeper, which also re-queues running jobs whose worker stopped
  beating. Several sweepers at once do no harm: every transition is conditional and a
  duplicate message is a no-op.

The Celery app is built from a ``Config`` by ``make_celery_app``; there is no module-level app,
so a worker's settings are exactly those of its configuration file and environment. This module
is the broker configuration and the node side (publishing, the sweeper); what a worker process
does with a message is in ``pacs_agent.celery_worker``.

Delivery jobs (``pacs_agent.deliveries``) travel the same way and the worker dispatches by the
job's kind. A delivery makes one try per message, bounded by the transport's timeout, and a
failed try comes back as a message published with a countdown, so no worker process sleeps
through a back-off; an analysis behind it in the queue waits at most one try's timeout (more
workers, ``queue.workers``, take that away too).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from pacs_agent import jobs
from pacs_agent.config import Config, QueueConfig
from pacs_agent.db.models import utcnow

log = logging.getLogger("echo_agent.celery")

TASK_NAME = "echo_agent.run_job"
QUEUE_NAME = "echo-agent"
# How often Redis looks for unacknowledged messages past their visibility timeout.
UNACKED_RESTORE_INTERVAL_S = 5


def make_celery_app(config: Config) -> Celery:
    """A Celery app for ``config.queue``; publishing needs nothing more, a worker also
    registers the task with ``register_worker_task``."""
    queue = config.queue
    app = Celery("echo_agent", broker=queue.broker_url, set_as_current=False)
    app.conf.update(
        task_default_queue=QUEUE_NAME,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # acknowledge after the job, and give the message back if the worker process dies
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # a worker holds only the message it is running: a killed one strands one job
        worker_prefetch_multiplier=1,
        broker_transport_options={
            "visibility_timeout": queue.visibility_timeout_s,
            "unacked_restore_interval": UNACKED_RESTORE_INTERVAL_S,
            "unacked_restore_throttle": 1,
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        enable_utc=True,
    )
    return app


def publish(app: Celery, job_id: int, countdown_s: float | None = None) -> None:
    """Publishes "run job ``job_id``" (straight to the queue by name, so a broker that lost
    its exchange bindings in a restart still routes it)."""
    app.send_task(TASK_NAME, args=(job_id,), queue=QUEUE_NAME, countdown=countdown_s)


class CeleryQueue:
    """The node side of the Celery backend: ``submit`` publishes, and with ``sweep`` a thread
    re-queues jobs of dead workers and re-publishes jobs whose message is lost."""

    def __init__(
        self,
        app: Celery,
        session_factory: sessionmaker[Session],
        queue_config: QueueConfig,
        sweep: bool = True,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._app = app
        self._session_factory = session_factory
        self._config = queue_config
        self._sweep = sweep
        self._clock = clock
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._published_at: dict[int, float] = {}  # job id -> monotonic time, for the sweeper
        self._published_lock = threading.Lock()

    @property
    def sweep_interval_s(self) -> float:
        return max(1.0, min(self._config.heartbeat_stale_s, self._config.republish_after_s) / 3)

    def submit(self, job_id: int) -> None:
        """Publishes the job; a broker that is down is logged, not raised: the job is queued
        in the table and the sweeper publishes it once the broker is back."""
        try:
            publish(self._app, job_id)
        except Exception as exc:
            log.warning("cannot publish job %d (%s); the sweeper will retry", job_id, exc)
            return
        with self._published_lock:
            self._published_at[job_id] = time.monotonic()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("queue already started")
        if self._sweep:
            self._thread = threading.Thread(target=self._sweep_forever, name="job-sweeper")
            self._thread.daemon = True
            self._thread.start()

    def stop(self, timeout_s: float) -> bool:
        """Stops the sweeper; jobs run in the workers, so none is left running here."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self._app.close()
        return True

    def sweep_once(self) -> SweepResult:
        """One pass: stale running jobs back to queued (published); then, when fewer messages
        wait in the broker than jobs have been due for over ``republish_after_s`` (so some
        message was lost), those jobs are published again, each at most once per
        ``republish_after_s`` from this process. A long backlog with its messages intact is
        left alone, so a busy node does not flood the queue with duplicates."""
        now = self._clock()
        with self._session_factory.begin() as session:
            stale_before = now - dt.timedelta(seconds=self._config.heartbeat_stale_s)
            recovery = jobs.requeue_stale(session, now, stale_before)
        with self._session_factory() as session:
            due_before = now - dt.timedelta(seconds=self._config.republish_after_s)
            waiting = jobs.queued_waiting_since(session, due_before)
        waiting = [job_id for job_id in waiting if job_id not in recovery.requeued]
        self._forget_publishes_before(time.monotonic() - self._config.republish_after_s)
        # counted before this pass publishes anything, so its own messages hide no loss
        backlog = self.broker_backlog() if waiting else None
        for job_id in recovery.requeued:
            log.warning("job %d lost its worker (heartbeat stale): queued again", job_id)
            self.submit(job_id)
        for job_id in recovery.failed:
            log.warning("job %d lost its worker and has no attempts left: failed", job_id)
        republished: list[int] = []
        if waiting and (backlog is None or backlog < len(waiting)):
            for job_id in waiting:
                with self._published_lock:
                    last = self._published_at.get(job_id)
                if last is not None and time.monotonic() - last < self._config.republish_after_s:
                    continue
                self.submit(job_id)
                republished.append(job_id)
        if republished:
            log.warning(
                "%d job(s) due and not taken while the broker holds fewer messages: "
                "published again: %s",
                len(republished),
                republished,
            )
        return SweepResult(recovery.requeued, recovery.failed, tuple(republished))

    def _forget_publishes_before(self, cutoff: float) -> None:
        """Keeps the memory of publishes bounded: only those recent enough to matter."""
        with self._published_lock:
            for job_id in [j for j, at in self._published_at.items() if at < cutoff]:
                del self._published_at[job_id]

    def broker_backlog(self) -> int | None:
        """Messages waiting in the broker's queue (not those a worker holds), or None when the
        broker cannot say (down): then the sweeper publishes anyway."""
        try:
            with self._app.connection_for_write() as conn:
                declared = conn.default_channel.queue_declare(QUEUE_NAME, passive=True)
                return int(declared.message_count)
        except Exception as exc:
            log.info("cannot read the broker's queue length: %s", exc)
            return None

    def _sweep_forever(self) -> None:
        while not self._stopping.wait(self.sweep_interval_s):
            try:
                self.sweep_once()
            except Exception:  # a database or broker hiccup must not end sweeping for good
                log.exception("job sweep failed; trying again")


@dataclass(frozen=True)
class SweepResult:
    requeued: tuple[int, ...]
    failed: tuple[int, ...]
    republished: tuple[int, ...]
