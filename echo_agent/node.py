"""The running node: DICOM listener, study assembler, job workers and web app in one process.

Start-up order puts the durable state first: the schema is checked, jobs a crash left running
are queued again, workers start, and only then does the listener accept studies. Shutdown runs
the other way round: the listener stops accepting (open associations may finish, then are
aborted; an instance is acknowledged only once complete on disk, so nothing partial stays), the
assembler stops, workers finish their current job or leave it "running" for the next start's
recovery, and the web server closes last.
"""

from __future__ import annotations

import functools
import logging
import signal
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import waitress
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from waitress import wasyncore

from echo_agent.node_models import chat_backend_for, warm_models
from inference.model_cache import ModelCache
from inference.view_classifier import ViewClassifierError, load_view_classifier
from pacs_agent import __version__
from pacs_agent.analysis import model_settings
from pacs_agent.assembly import Judge, assemble, judge_file
from pacs_agent.config import Config, ConfigError
from pacs_agent.db import ensure_schema, make_engine, make_session_factory
from pacs_agent.db.engine import PoolSettings
from pacs_agent.db.models import utcnow
from pacs_agent.deliveries import job_runner
from pacs_agent.dicom import StorageSCP, start_storage_scp
from pacs_agent.drafting import TextModelCache
from pacs_agent.jobs import Backoff, recover_interrupted
from pacs_agent.pipeline import run_job
from pacs_agent.queue import JobQueue, make_queue
from pacs_agent.readiness import ModelStatus
from pacs_agent.startup import bind_listen_socket, web_address

log = logging.getLogger("echo_agent.node")

ASSEMBLE_INTERVAL_S = 1.0
# local backend: worker threads for delivery jobs, beside [queue] workers for analysis (see
# pacs_agent.queue for why deliveries have their own lane)
DELIVERY_WORKERS = 1
# How long shutdown waits for a running job before leaving it to start-up recovery.
WORKER_STOP_TIMEOUT_S = 10.0
ASSOCIATION_GRACE_S = 10.0
ROLE_ALL = "all"
ROLE_LISTENER = "listener"
ROLE_WEB = "web"
ROLES = (ROLE_ALL, ROLE_LISTENER, ROLE_WEB)


@dataclass
class RunningNode:
    """Handles on everything ``start_node`` started; ``stop`` ends them in order, once."""

    config: Config
    engine: Engine
    session_factory: sessionmaker[Session]
    # None where the role does not run the part (see ROLES)
    queue: JobQueue | None
    scp: StorageSCP | None
    web_port: int | None
    _assembler: threading.Thread | None
    _web_thread: threading.Thread | None
    _stopping: threading.Event
    _web_map: dict[int, Any]
    _web_server: Any
    _stopped: bool = field(default=False)
    # what the banner, /readyz and /metrics say about this process's models
    model_status: ModelStatus = field(default_factory=ModelStatus)

    @property
    def dicom_port(self) -> int | None:
        return None if self.scp is None else self.scp.port

    def stop(self, worker_timeout_s: float = WORKER_STOP_TIMEOUT_S) -> None:
        if self._stopped:
            return
        self._stopped = True
        log.info("stopping: DICOM listener first")
        self._stopping.set()
        if self.scp is not None:
            self.scp.shutdown(ASSOCIATION_GRACE_S)
        if self._assembler is not None:
            self._assembler.join(timeout=30.0)
        if self.queue is not None and not self.queue.stop(worker_timeout_s):
            log.warning("a job was still running; it stays 'running' and is resumed at start")
        if self._web_thread is not None:
            _close_web(self._web_server, self._web_map)
            self._web_thread.join(timeout=5.0)
        self.engine.dispose()
        log.info("echo-agent stopped")


def start_node(
    config: Config, web_socket: socket.socket | None = None, role: str = ROLE_ALL
) -> RunningNode:
    """Starts every part ``role`` runs and returns; raises (having started nothing) on a
    start-up problem.

    ``all``: one process does everything (the embedded default). ``listener``: DICOM, study
    assembly and job submission (with the local backend its threads also run the jobs; with
    Celery, ``echo-agent worker`` processes do, and this process sweeps for lost ones).
    ``web``: the review app only. Every role uses the same database and instance store.
    """
    if role not in ROLES:
        raise ConfigError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    listens = role in (ROLE_ALL, ROLE_LISTENER)
    try:
        classifier = load_view_classifier(config.selection.view_classifier)
    except ViewClassifierError as exc:
        raise ConfigError(str(exc)) from None
    if role == ROLE_LISTENER:
        web_socket = None
    elif web_socket is None:
        web_socket = bind_listen_socket(web_address(config))
    engine = make_engine(
        config.database_url, echo_sql=config.database.echo_sql, pool=pool_settings(config)
    )
    started: list[Callable[[], None]] = [engine.dispose]
    if web_socket is not None:
        started.append(web_socket.close)
    try:
        revision = ensure_schema(engine, config.database_url)
        log.info("database %s at schema %s", engine.url.render_as_string(), revision)
        session_factory = make_session_factory(engine)
        models = ModelCache(model_settings(config))
        # one language model per process, loaded on first use: the drafts and the chat share it
        text_models = TextModelCache(config)
        model_status = ModelStatus()
        queue: JobQueue | None = None
        scp: StorageSCP | None = None
        assembler: threading.Thread | None = None
        stopping = threading.Event()
        if listens:
            queue = _start_queue(config, session_factory, models, text_models, model_status)
            started.insert(0, functools.partial(queue.stop, WORKER_STOP_TIMEOUT_S))
            scp = start_storage_scp(config, engine)
            started.insert(0, scp.shutdown)
            judge = judge_file(config, classifier)
            assembler = threading.Thread(
                target=_assemble_forever,
                args=(stopping, session_factory, config, judge, queue),
                name="assembler",
                daemon=True,
            )
            assembler.start()
            started.insert(0, stopping.set)
        web_server: Any = None
        web_thread: threading.Thread | None = None
        web_map: dict[int, Any] = {}
        if web_socket is not None:
            from web.app import create_app  # the web package imports pacs_agent, not the reverse

            app = create_app(
                engine,
                config,
                chat_backend=chat_backend_for(config, text_models),
                model_status=model_status,
                submit_job=queue.submit if queue is not None else _web_submitter(config),
            )
            web_server = waitress.create_server(
                app,
                map=web_map,
                sockets=[web_socket],
                threads=8,
                ident="echo-agent",
            )
            web_thread = threading.Thread(
                target=_serve_web, args=(web_server, stopping), name="web", daemon=True
            )
            web_thread.start()
            _resume_signoff_exports(app)
    except BaseException:
        for undo in started:
            try:
                undo()
            except Exception:
                log.exception("cleanup after a failed start")
        raise
    return RunningNode(
        config=config,
        engine=engine,
        session_factory=session_factory,
        queue=queue,
        scp=scp,
        web_port=None if web_socket is None else int(web_socket.getsockname()[1]),
        _assembler=assembler,
        _web_thread=web_thread,
        _stopping=stopping,
        _web_map=web_map,
        _web_server=web_server,
        model_status=model_status,
    )


def _left_in_the_table(job_id: int) -> None:
    """The listener's delivery worker polls the shared jobs table: nothing to hand on."""


def _web_submitter(config: Config) -> Callable[[int], None]:
    """How a ``web``-role process hands on the delivery jobs a sign-off queues: with the local
    backend the listener's delivery worker finds them in the shared table (within its poll
    interval); with Celery they are published for the workers."""
    if config.queue.backend != "celery":
        return _left_in_the_table
    from pacs_agent.celery_queue import make_celery_app, publish

    return functools.partial(publish, make_celery_app(config))


def _resume_signoff_exports(app: Any) -> None:
    """Sign-off sends a stop cut short go on (``web.export_resume``). A failure here is
    logged, never fatal: the study pages still show where each send stands."""
    try:
        app.config["ECHO_AGENT_EXPORTS"].resume_unfinished()
    except Exception:
        log.exception("could not look for sign-off exports to resume")


def _start_queue(
    config: Config,
    session_factory: sessionmaker[Session],
    models: ModelCache,
    text_models: TextModelCache,
    model_status: ModelStatus,
) -> JobQueue:
    """The started queue of a listening process. Local backend: jobs a crash left running are
    queued again, the models load, and worker threads here run the jobs (deliveries on their
    own thread, ``DELIVERY_WORKERS``). Celery: a publisher whose sweeper recovers jobs of dead
    workers and lost messages; the workers hold the models, and start-up recovery must not run
    (other machines' running jobs would look interrupted).
    """
    if config.queue.backend == "celery":
        from pacs_agent.celery_queue import CeleryQueue, make_celery_app

        celery_queue = CeleryQueue(make_celery_app(config), session_factory, config.queue)
        celery_queue.start()
        return celery_queue
    with session_factory.begin() as session:
        recovery = recover_interrupted(session, utcnow())
    if recovery.requeued or recovery.failed:
        log.info(
            "recovered jobs: %d queued again, %d out of attempts",
            len(recovery.requeued),
            len(recovery.failed),
        )
    warm_models(config, models, text_models, model_status)

    def analyse(job_id: int) -> None:
        # the analysis hands the delivery jobs it queues to this queue's delivery worker
        run_job(job_id, session_factory, config, models, text_models, submit=queue.submit)

    queue = make_queue(
        config.queue.backend,
        session_factory,
        job_runner(session_factory, config, analyse),
        config.queue.workers,
        Backoff(config.queue.backoff_initial_s, config.queue.backoff_max_s),
        delivery_workers=DELIVERY_WORKERS,
    )
    queue.start()
    for job_id in recovery.requeued:
        queue.submit(job_id)
    return queue


def run_node(
    config: Config,
    web_socket: socket.socket | None = None,
    on_started: Callable[[RunningNode], None] | None = None,
    role: str = ROLE_ALL,
) -> None:
    """Runs the node until SIGTERM or SIGINT, then shuts it down cleanly.

    ``on_started`` runs in its own thread once every part is up (the demo uses it to send
    phantom studies to the node over DICOM, as a PACS would).

    The handlers go in before anything starts, so a signal during start-up also ends in an
    orderly stop rather than the default abrupt exit.
    """
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        node = start_node(config, web_socket, role)
        try:
            url = f"http://{config.web.host}:{node.web_port}/healthz"
            dicom = f"DICOM {config.dicom.ae_title} on {config.dicom.host}:{node.dicom_port}"
            parts = {ROLE_ALL: f"{dicom}, health at {url}", ROLE_LISTENER: dicom, ROLE_WEB: url}
            log.info("echo-agent %s serving (role %s): %s", __version__, role, parts[role])
            print(f"echo-agent is running ({role}): {parts[role]}", flush=True)
            if on_started is not None:
                threading.Thread(
                    target=on_started, args=(node,), name="on-started", daemon=True
                ).start()
            while not stop.wait(1.0):
                pass
        finally:
            node.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _assemble_forever(
    stopping: threading.Event,
    session_factory: sessionmaker[Session],
    config: Config,
    judge: Judge,
    queue: JobQueue,
) -> None:
    while not stopping.wait(ASSEMBLE_INTERVAL_S):
        try:
            result = assemble(session_factory, config, judge, utcnow())
        except Exception:  # a database hiccup must not end assembly for good
            log.exception("study assembly pass failed; trying again")
            continue
        for job_id in result.queued_job_ids:
            queue.submit(job_id)


def _serve_web(server: Any, stopping: threading.Event) -> None:
    try:
        server.run()
    except (OSError, ValueError):
        if not stopping.is_set():
            raise  # the loop broke while the node was meant to run: let it show


def _close_web(server: Any, web_map: dict[int, Any]) -> None:
    """Finishes requests in progress, then closes every socket from inside the server's loop
    (closing them from another thread races its poll)."""
    server.task_dispatcher.shutdown(timeout=5)
    try:
        server.trigger.pull_trigger(lambda: wasyncore.close_all(web_map))
    except OSError:  # the loop is already gone
        wasyncore.close_all(web_map, ignore_all=True)


def pool_settings(config: Config) -> PoolSettings:
    db = config.database
    return PoolSettings(db.pool_size, db.max_overflow, db.pool_recycle_s)
