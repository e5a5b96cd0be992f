"""Export: send artifacts to the configured DICOM destinations by C-STORE, and check them by
C-ECHO.

Every try is one ``ExportAttempt`` row (pending while it runs, then sent or failed), so what
happened per destination is visible without reading logs. Failed tries are retried with
exponential back-off up to ``export.max_attempts``; after that the artifact is "failed" for that
destination until an operator asks again. An export interrupted by a crash resumes where it
stopped: its dangling "pending" try is closed as failed and counts, and an artifact already
sent is not sent again. The node sends through delivery jobs (``pacs_agent.deliveries``), one
try per job run (``export_once``); ``export_artifact`` retries in the caller's thread.

Files go out in their own transfer syntax (the only one proposed), byte for byte: converting a
SEG or SR on the way could silently change what a cardiologist signed.

Every send uses the process's one AE (``pacs_agent.dicom.ae``, shared with the listener) and
passes its presentation contexts to that association alone, so concurrent sends do not touch
each other.
"""

from __future__ import annotations

import datetime as dt
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, build_context, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from sqlalchemy.orm import Session, sessionmaker

from pacs_agent.attempts import (
    DestinationStatus,
    RetryPolicy,
    Wait,
    send_once,
    send_with_retries,
    sleep_wait,
    standing,
)
from pacs_agent.config import Config, DestinationConfig, DicomConfig
from pacs_agent.db.models import Artifact, utcnow
from pacs_agent.dicom.ae import SCU_DIMSE_TIMEOUT_S, SCU_NETWORK_TIMEOUT_S, node_ae
from pacs_agent.jobs import Backoff

log = logging.getLogger(__name__)

# per network step against a peer that never answers (the node's AE's requestor timeouts)
NETWORK_TIMEOUT_S = SCU_NETWORK_TIMEOUT_S
DIMSE_TIMEOUT_S = SCU_DIMSE_TIMEOUT_S
SUCCESS = 0x0000
WARNING_STATUSES = frozenset({0x0001, 0xB000, 0xB006, 0xB007})

@dataclass(frozen=True)
class EchoResult:
    """One destination's answer to C-ECHO."""

    destination: str
    ae_title: str
    host: str
    port: int
    ok: bool
    detail: str
    elapsed_ms: float


@dataclass(frozen=True)
class StoreOutcome:
    """One C-STORE try: ``status_code`` as hex ("0x0000"), "" when no response came."""

    ok: bool
    status_code: str
    error: str


def calling_ae(ae_title: str) -> AE:
    """The process's AE that calls peers as ``ae_title``: the node's own when ``ae_title`` is
    the node's (with its default listener rules), another AE for another title (the demo
    sending as a PACS would)."""
    return node_ae(DicomConfig(ae_title=ae_title))


def _tls_args(dest: DestinationConfig) -> tuple[ssl.SSLContext, str] | None:
    """TLS with the destination's CA (or the system's) and, when given, a client certificate."""
    if not dest.tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=dest.tls_ca_file or None)
    if dest.tls_cert_file:
        context.load_cert_chain(dest.tls_cert_file, dest.tls_key_file or None)
    return context, dest.host


def _where(dest: DestinationConfig) -> str:
    return f"{dest.ae_title}@{dest.host}:{dest.port}"


def echo_destination(dest: DestinationConfig, ae: AE) -> EchoResult:
    """C-ECHO one destination from ``ae``; never raises for network trouble, it is the
    answer."""
    start = time.monotonic()

    def result(ok: bool, detail: str) -> EchoResult:
        elapsed = (time.monotonic() - start) * 1000.0
        return EchoResult(dest.name, dest.ae_title, dest.host, dest.port, ok, detail, elapsed)

    try:
        assoc, connected = _associate(ae, dest, [build_context(Verification)])
    except (OSError, ssl.SSLError, ValueError) as exc:
        return result(False, f"cannot connect to {_where(dest)}: {exc}")
    try:
        if not assoc.is_established:
            return result(False, _association_failure(assoc, connected, dest))
        status = assoc.send_c_echo()
        if not status or "Status" not in status:
            return result(False, "no response to C-ECHO (timeout or connection lost)")
        code = int(status.Status)
        if code != SUCCESS:
            return result(False, f"C-ECHO status 0x{code:04X}")
        return result(True, "C-ECHO succeeded")
    finally:
        if assoc.is_established:
            assoc.release()


def check_destinations(config: Config) -> list[EchoResult]:
    """C-ECHO every configured destination, in configuration order."""
    ae = node_ae(config.dicom)
    return [echo_destination(dest, ae) for dest in config.destinations]


def _associate(
    ae: AE, dest: DestinationConfig, contexts: list[PresentationContext]
) -> tuple[Association, bool]:
    """Requests an association proposing ``contexts`` (this association's only; the AE's own
    list is never touched); also says whether the TCP connection opened, because pynetdicom
    reports a refused connection as an aborted association."""
    opened: list[bool] = []
    assoc = ae.associate(
        dest.host,
        dest.port,
        contexts=contexts,
        ae_title=dest.ae_title,
        tls_args=_tls_args(dest),
        evt_handlers=[(evt.EVT_CONN_OPEN, lambda _event: opened.append(True))],
    )
    return assoc, bool(opened)


def _association_failure(assoc: Association, connected: bool, dest: DestinationConfig) -> str:
    if not connected:
        return f"cannot connect to {_where(dest)} (connection refused or timed out)"
    if assoc.is_rejected:
        return f"association rejected by {_where(dest)} (check its AE title and ours)"
    return f"association aborted by {_where(dest)}"


def c_store_file(path: Path, dest: DestinationConfig, ae: AE) -> StoreOutcome:
    """Sends one DICOM file from ``ae`` in its own transfer syntax; never raises for network
    trouble."""
    try:
        meta = read_file_meta_info(path)
        sop_class = str(meta.MediaStorageSOPClassUID)
        syntax = str(meta.TransferSyntaxUID)
    except (OSError, InvalidDicomError, AttributeError) as exc:
        return StoreOutcome(False, "", f"cannot read {path.name}: {exc}")
    try:
        assoc, connected = _associate(ae, dest, [build_context(sop_class, [syntax])])
    except (OSError, ssl.SSLError, ValueError) as exc:
        return StoreOutcome(False, "", f"cannot connect to {_where(dest)}: {exc}")
    try:
        if not assoc.is_established:
            return StoreOutcome(False, "", _association_failure(assoc, connected, dest))
        if not any(cx.abstract_syntax == sop_class for cx in assoc.accepted_contexts):
            return StoreOutcome(
                False, "", f"{_where(dest)} accepts neither SOP class {sop_class} in {syntax}"
            )
        try:
            status = assoc.send_c_store(path)
        except (OSError, ValueError, RuntimeError) as exc:
            return StoreOutcome(False, "", f"C-STORE failed: {type(exc).__name__}: {exc}")
        if not status or "Status" not in status:
            return StoreOutcome(False, "", "no response to C-STORE (timeout or connection lost)")
        code = int(status.Status)
        text = f"0x{code:04X}"
        if code == SUCCESS or code in WARNING_STATUSES:
            return StoreOutcome(True, text, "")
        comment = str(status.get("ErrorComment", "") or "")
        suffix = f": {comment}" if comment else ""
        return StoreOutcome(False, text, f"C-STORE status {text}{suffix}")
    finally:
        if assoc.is_established:
            assoc.release()


def artifact_path(config: Config, artifact: Artifact) -> Path:
    """``Artifact.file_path`` is absolute or relative to the node's home."""
    path = Path(artifact.file_path)
    return path if path.is_absolute() else config.home_path / path


def destination_status(
    session: Session, artifact_id: int, destination: str, max_attempts: int
) -> DestinationStatus:
    return standing(session, artifact_id, destination, max_attempts)


def export_status(session: Session, artifact_id: int, config: Config) -> list[DestinationStatus]:
    """The artifact's standing with every configured destination."""
    return [
        destination_status(session, artifact_id, d.name, config.export.max_attempts)
        for d in config.destinations
    ]


def export_policy(config: Config) -> RetryPolicy:
    """``[export]``: how many tries per artifact and destination, and the back-off between."""
    limits = config.export
    return RetryPolicy(limits.max_attempts, Backoff(limits.backoff_initial_s, limits.backoff_max_s))


def _stored_path(session_factory: sessionmaker[Session], artifact_id: int, config: Config) -> Path:
    with session_factory() as session:
        artifact = session.get(Artifact, artifact_id)
        if artifact is None:
            raise ValueError(f"artifact {artifact_id} does not exist")
        return artifact_path(config, artifact)


def export_artifact(
    session_factory: sessionmaker[Session],
    artifact_id: int,
    dest: DestinationConfig,
    config: Config,
    wait: Wait = sleep_wait,
    clock: Callable[[], dt.datetime] = utcnow,
) -> DestinationStatus:
    """Sends the artifact to ``dest``, retrying with back-off; blocks until sent, out of
    attempts, or ``wait`` says stop. Safe to call again: resumes, never resends a sent one."""
    path = _stored_path(session_factory, artifact_id, config)
    return send_with_retries(
        session_factory,
        artifact_id,
        dest.name,
        lambda: c_store_file(path, dest, node_ae(config.dicom)),
        export_policy(config),
        wait,
        clock,
    )


def export_once(
    session_factory: sessionmaker[Session],
    artifact_id: int,
    dest: DestinationConfig,
    config: Config,
    clock: Callable[[], dt.datetime] = utcnow,
) -> DestinationStatus:
    """One C-STORE try of the artifact to ``dest`` (none when it is already sent or failed for
    good); at most ``NETWORK_TIMEOUT_S`` per network step against a peer that never answers."""
    path = _stored_path(session_factory, artifact_id, config)
    return send_once(
        session_factory,
        artifact_id,
        dest.name,
        lambda: c_store_file(path, dest, node_ae(config.dicom)),
        export_policy(config),
        clock,
    )


def export_to_all(
    session_factory: sessionmaker[Session],
    artifact_id: int,
    config: Config,
    wait: Wait = sleep_wait,
) -> list[DestinationStatus]:
    """Sends to every configured destination in turn."""
    return [
        export_artifact(session_factory, artifact_id, dest, config, wait)
        for dest in config.destinations
    ]
