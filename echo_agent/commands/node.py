"""``echo-agent serve``, ``worker`` and ``demo``: the commands that run the node."""

from __future__ import annotations

import argparse
import functools
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from echo_agent.commands.common import require_config
from pacs_agent.config import Config, ConfigError
from pacs_agent.startup import (
    StartupError,
    bind_listen_socket,
    check_port_free,
    dicom_address,
    prepare_home,
    web_address,
)

if TYPE_CHECKING:
    from echo_agent.node import RunningNode

log = logging.getLogger("echo_agent")


def add_node_parsers(sub: Any) -> None:
    """Adds ``serve``, ``worker`` and ``demo``."""
    serve = sub.add_parser(
        "serve", help="run the node: DICOM listener, study assembly, analysis workers, web"
    )
    serve.add_argument(
        "--role",
        choices=("all", "listener", "web"),
        default="all",
        help="all: everything in one process (default); listener: DICOM, assembly, job "
        "submission; web: the review app only (scale-out: see README)",
    )
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser(
        "worker", help="run a Celery worker that analyses jobs (queue.backend = 'celery')"
    )
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve this worker's own metrics (model load time, GPU memory) at "
        "http://127.0.0.1:PORT/metrics (0: off; the web role serves the shared counts)",
    )
    worker.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port")
    worker.set_defaults(func=cmd_worker)

    demo = sub.add_parser("demo", help="run the node and send it demo phantom studies over DICOM")
    demo.add_argument("--studies", type=int, default=2, help="number of phantom studies")
    demo.set_defaults(func=cmd_demo)


def cmd_serve(args: argparse.Namespace, config: Config | None) -> int:
    return serve_node(require_config(config), role=args.role)


def serve_node(
    config: Config,
    on_started: Callable[[RunningNode], None] | None = None,
    role: str = "all",
) -> int:
    from echo_agent.node import run_node  # pynetdicom, waitress, Flask: only when serving

    prepare_home(config)
    web_socket = None if role == "listener" else bind_listen_socket(web_address(config))
    try:
        if role != "web":
            check_port_free(dicom_address(config))
    except StartupError:
        if web_socket is not None:
            web_socket.close()
        raise
    run_node(config, web_socket=web_socket, on_started=on_started, role=role)
    return 0


def cmd_worker(args: argparse.Namespace, config: Config | None) -> int:
    """A Celery worker: loads the models once, then runs the jobs the broker delivers."""
    config = require_config(config)
    if config.queue.backend != "celery":
        raise ConfigError(
            "echo-agent worker needs queue.backend = 'celery' and queue.broker_url "
            f"(got backend {config.queue.backend!r})"
        )
    from pacs_agent.celery_worker import run_worker  # celery only when asked for

    if not 0 <= args.metrics_port <= 65535:
        raise ConfigError(f"--metrics-port must be 0..65535, got {args.metrics_port}")
    prepare_home(config)
    metrics = (args.metrics_host, args.metrics_port) if args.metrics_port else None
    return run_worker(config, metrics_address=metrics)


def cmd_demo(args: argparse.Namespace, config: Config | None) -> int:
    """Writes phantom studies once, runs the node, and sends the studies to it over DICOM."""
    from echo_agent.demo import (
        DEMO_USERNAME,
        ensure_demo_account,
        follow_model_status,
        send_studies,
    )
    from inference.phantom import generate_phantoms

    config = require_config(config)
    prepare_home(config)
    demo_dir = config.home_path / "demo-studies"
    if not any(demo_dir.glob("*.dcm")):
        log.info("writing %d demo phantom studies to %s", args.studies, demo_dir)
        generate_phantoms(demo_dir, n=args.studies, seed=20261122, fmt="dicom")
    password = ensure_demo_account(config)
    review_url = f"http://{config.web.host}:{config.web.port}/"

    def on_started(node: RunningNode) -> None:
        progress = functools.partial(print, flush=True)
        threading.Thread(
            target=follow_model_status, args=(node.model_status, progress), daemon=True
        ).start()
        send_studies(node, demo_dir)
        lines = [f"Review the demo studies at {review_url}"]
        if password is not None:
            lines.append(f"  user: {DEMO_USERNAME}   password: {password}   (shown once)")
        print("\n".join(lines), flush=True)

    return serve_node(config, on_started=on_started)
