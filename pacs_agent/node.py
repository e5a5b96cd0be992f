"""The running node: DICOM listener, study assembler, job workers and web app in one process.

Start-up order puts the durable state first: the schema is checked, jobs a crash left running
are queued again, workers start, and only then does the listener accept studies. Shutdown runs
the other way round: the listener stops accepting (open associations may finish, then are
aborted; an instance is acknowledged only once complete on disk, so nothing partial stays), the
assembler stops, workers finish their current job or leave it "running" for the next start's
recovery, and the web server closes last.
"""

from __future__ import annotations

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

from pacs_agent import __version__
from pacs_agent.analysis import ModelCache
from pacs_agent.assembly import Judge, assemble, judge_file
from pacs_agent.config import Config, ConfigError
from pacs_agent.db import ensure_schema, make_engine, make_session_factory
from pacs_agent.db.models import utcnow
from pacs_agent.dicom import StorageSCP, start_storage_scp
from pacs_agent.jobs import Backoff, recover_interrupted
from pacs_agent.pipeline import run_job
from pacs_agent.queue import JobQueue, make_queue
from pacs_agent.startup import bind_listen_socket, web_address
from pacs_agent.view_classifier import ViewClassifierError, load_view_classifier

log = logging.getLogger("echo_agent.node")

ASSEMBLE_INTERVAL_S = 1.0
# How long shutdown waits for a running job before leaving it to start-up recovery.
WORKER_STOP_TIMEOUT_S = 10.0
ASSOCIATION_GRACE_S = 10.0


@dataclass
class RunningNode:
    """Handles on everything ``start_node`` started; ``stop`` ends them in order, once."""

    config: Config
    engine: Engine
    session_factory: sessionmaker[Session]
    queue: JobQueue
    scp: StorageSCP
    web_port: int
    _assembler: threading.Thread
    _web_thread: threading.Thread
    _stopping: threading.Event
    _web_map: dict[int, Any]
    _web_server: Any
    _stopped: bool = field(default=False)

    @property
    def dicom_port(self) -> int:
        return self.scp.port

    def stop(self, worker_timeout_s: float = WORKER_STOP_TIMEOUT_S) -> None:
        if self._stopped:
            return
        self._stopped = True
        log.info("stopping: DICOM listener first")
        self._stopping.set()
        self.scp.shutdown(ASSOCIATION_GRACE_S)
        self._assembler.join(timeout=30.0)
        if not self.queue.stop(worker_timeout_s):
            log.warning("a job was still running; it stays 'running' and is resumed at start")
        _close_web(self._web_server, self._web_map)
        self._web_thread.join(timeout=5.0)
        self.engine.dispose()
        log.info("echo-agent stopped")


def start_node(config: Config, web_socket: socket.socket | None = None) -> RunningNode:
    """Starts every part and returns; raises (having started nothing) on a start-up problem."""
    try:
        classifier = load_view_classifier(config.selection.view_classifier)
    except ViewClassifierError as exc:
        raise ConfigError(str(exc)) from None
    if config.queue.backend != "local":
        raise ConfigError(
            f"queue.backend {config.queue.backend!r} is not available yet (use 'local')"
        )
    if web_socket is None:
        web_socket = bind_listen_socket(web_address(config))
    engine = make_engine(config.database_url, echo_sql=config.database.echo_sql)
    started: list[Callable[[], None]] = [engine.dispose, web_socket.close]
    try:
        revision = ensure_schema(engine, config.database_url)
        log.info("database %s at schema %s", engine.url.render_as_string(), revision)
        session_factory = make_session_factory(engine)
        with session_factory.begin() as session:
            recovery = recover_interrupted(session, utcnow())
        if recovery.requeued or recovery.failed:
            log.info(
                "recovered jobs: %d queued again, %d out of attempts",
                len(recovery.requeued),
                len(recovery.failed),
            )

        models = ModelCache(config)
        models.preload_in_background()

        def runner(job_id: int) -> None:
            run_job(job_id, session_factory, config, models)

        queue = make_queue(
            config.queue.backend,
            session_factory,
            runner,
            config.queue.workers,
            Backoff(config.queue.backoff_initial_s, config.queue.backoff_max_s),
        )
        queue.start()
        started.insert(0, lambda: queue.stop(WORKER_STOP_TIMEOUT_S))
        for job_id in recovery.requeued:
            queue.submit(job_id)
        scp = start_storage_scp(config, engine)
        started.insert(0, scp.shutdown)
        stopping = threading.Event()
        judge = judge_file(config, classifier)
        assembler = threading.Thread(
            target=_assemble_forever,
            args=(stopping, session_factory, config, judge, queue),
            name="assembler",
            daemon=True,
        )
        assembler.start()
        started.insert(0, stopping.set)
        web_map: dict[int, Any] = {}
        from web.app import create_app  # the web package imports pacs_agent, not the reverse

        web_server = waitress.create_server(
            create_app(engine, config, chat_backend=chat_backend_for(config)),
            map=web_map,
            sockets=[web_socket],
            threads=8,
            ident="echo-agent",
        )
        web_thread = threading.Thread(
            target=_serve_web, args=(web_server, stopping), name="web", daemon=True
        )
        web_thread.start()
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
        web_port=int(web_socket.getsockname()[1]),
        _assembler=assembler,
        _web_thread=web_thread,
        _stopping=stopping,
        _web_map=web_map,
        _web_server=web_server,
    )


def run_node(
    config: Config,
    web_socket: socket.socket | None = None,
    on_started: Callable[[RunningNode], None] | None = None,
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
        node = start_node(config, web_socket)
        try:
            url = f"http://{config.web.host}:{node.web_port}/healthz"
            log.info(
                "echo-agent %s serving: DICOM %s on %s:%d, health at %s",
                __version__,
                config.dicom.ae_title,
                config.dicom.host,
                node.dicom_port,
                url,
            )
            print(f"echo-agent is running: {url}", flush=True)
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


def chat_backend_for(config: Config) -> Any:
    """The language model behind the study chat, loaded on the first question (so the node
    serves at once); None (the measurement-quoting fallback) when ``llm.chat`` is off."""
    if not config.llm.chat:
        return None
    from inference.llm.backend import LlmSettings, open_text_model
    from web.chat_backend import language_model_backend

    settings = LlmSettings(
        model_path=config.llm.model_path,
        cache_dir=config.llm.cache_dir,
        device=config.llm.device,
        max_new_tokens=config.llm.max_new_tokens,
        max_time_s=config.llm.max_time_s,
    )

    def load() -> Any:
        log.info("loading the language model (the embedded one is converted once) ...")
        return open_text_model(settings, config.home_path, progress=log.info)

    return language_model_backend(load)
