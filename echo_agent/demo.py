"""The first-run demo: phantom studies sent to the node over DICOM, as a PACS would send them.

Going through the real listener (not a shortcut into the store) means a newcomer sees the whole
path work: association, C-STORE, durable store, assembly, selection and the job.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select

from echo_agent.node import RunningNode
from pacs_agent.config import Config, DestinationConfig
from pacs_agent.db import ensure_schema, make_engine, make_session_factory
from pacs_agent.db.models import User
from pacs_agent.export import c_store_file, calling_ae
from pacs_agent.readiness import ModelStatus
from pacs_agent.users import add_user

log = logging.getLogger("echo_agent.demo")

DEMO_USERNAME = "demo"

DEMO_CALLING_AE = "ECHODEMO"


def send_studies(node: RunningNode, folder: Path) -> int:
    """C-STOREs every ``*.dcm`` under ``folder`` to the running node; returns how many landed."""
    self_destination = DestinationConfig(
        name="self",
        ae_title=node.config.dicom.ae_title,
        host=_loopback_host(node.config.dicom.host),
        port=node.dicom_port,
    )
    sent = 0
    files = sorted(folder.glob("*.dcm"))
    for path in files:
        outcome = c_store_file(path, self_destination, calling_ae(DEMO_CALLING_AE))
        if outcome.ok:
            sent += 1
        else:
            log.warning("demo: %s not sent: %s", path.name, outcome.error or outcome.status_code)
    log.info(
        "demo: sent %d of %d phantom loops to %s", sent, len(files), node.config.dicom.ae_title
    )
    return sent


def follow_model_status(
    status: ModelStatus,
    emit: Callable[[str], None] = print,
    poll_s: float = 0.5,
    stop: threading.Event | None = None,
) -> str:
    """Prints each new model-loading message ("Loading the segmentation and EF models...",
    "Converting the embedded language model (first run only)...", "Ready") until the models
    are ready or one failed; returns that final state. A first run converts the embedded
    language model, so a newcomer sees why the first minute is slow."""
    stop = stop or threading.Event()
    last = ""
    while True:
        snapshot = status.snapshot()
        if snapshot["message"] != last:
            last = snapshot["message"]
            emit(f"models: {last}")
        if snapshot["state"] in ("ready", "failed") or stop.wait(poll_s):
            return str(snapshot["state"])


def _loopback_host(listen_host: str) -> str:
    """Where to reach a listener bound to ``listen_host`` from this machine."""
    if listen_host in {"0.0.0.0", ""}:
        return "127.0.0.1"
    if listen_host == "::":
        return "::1"
    return listen_host


def ensure_demo_account(config: Config) -> str | None:
    """Creates a cardiologist account ``demo`` with a random password when the node has no
    account at all, and returns the password (to be printed once); None when accounts exist."""
    engine = make_engine(config.database_url)
    try:
        ensure_schema(engine, config.database_url)
        with make_session_factory(engine).begin() as session:
            if session.scalar(select(func.count()).select_from(User)):
                return None
            password = secrets.token_urlsafe(12)
            add_user(session, DEMO_USERNAME, password, "cardiologist", "Demo Cardiologist")
            return password
    finally:
        engine.dispose()
