"""The Storage SCP: PACS sends echo loops here by C-STORE, and checks the node with C-ECHO.

Each instance is validated in the form it arrived in, stored byte for byte with a File Meta
header of the node's own, recorded in the database, and only then acknowledged. A refused
instance leaves nothing behind, except one that contradicts what is recorded (its patient is
not its study's, its series is another study's, or its SOP Instance UID is stored for another
patient or study; 0xC230-0xC232): that one is kept in the quarantine, outside every study, for
an admin. The reason goes to the sender as the status and to the log (logger
``echo_agent.dicom``; UIDs and AE titles, never patient names).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.events import Event
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from pacs_agent.config import Config
from pacs_agent.db.engine import make_session_factory
from pacs_agent.dicom import contexts
from pacs_agent.dicom.ae import MAX_PDU_BYTES as MAX_PDU_BYTES  # re-exported (tests)
from pacs_agent.dicom.ae import node_ae
from pacs_agent.dicom.filemeta import encode_file_meta
from pacs_agent.dicom.server import AcceptorTimeouts, ListenerServer
from pacs_agent.dicom.status import (
    CONFLICT_RESPONSES,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    SUCCESS,
    response,
)
from pacs_agent.dicom.tls import server_tls_context
from pacs_agent.dicom.validate import InvalidInstanceError, inspect_dataset
from pacs_agent.ingest import find_instance
from pacs_agent.logcontext import log_context
from pacs_agent.startup import StartupError, check_port_free, dicom_address
from pacs_agent.store import (
    InstanceStore,
    OutOfSpaceError,
    QuarantinedError,
    StoreError,
    open_store,
    store_instance,
    sweep_partial_files,
)

log = logging.getLogger("echo_agent.dicom")

ACSE_TIMEOUT_S = 30.0
DIMSE_TIMEOUT_S = 60.0
# An association that sends nothing for this long is released by pynetdicom; a connection that
# stalls inside a PDU is closed after the same time by the socket timeout.
NETWORK_TIMEOUT_S = 60.0
TLS_HANDSHAKE_TIMEOUT_S = 10.0
SHUTDOWN_GRACE_S = 30.0


@dataclass(frozen=True)
class StoreService:
    """The C-STORE handler's state: where instances go and how they are recorded."""

    store: InstanceStore
    sessions: sessionmaker[Session]

    def handle_store(self, event: Event) -> Dataset:
        """EVT_C_STORE: validate, store, record, then answer; never raises into pynetdicom."""
        started = time.perf_counter()
        request = event.request
        calling_ae = str(event.assoc.requestor.ae_title).strip()
        syntax = str(event.context.transfer_syntax)
        sop_class = str(request.AffectedSOPClassUID)
        sop_instance = str(request.AffectedSOPInstanceUID)
        # the dataset exactly as received; a view, so a loop of hundreds of MB is not copied
        data = request.DataSet.getbuffer()
        try:
            with log_context(instance_uid=sop_instance):
                return self._store(data, syntax, sop_class, sop_instance, calling_ae, started)
        finally:
            data.release()

    def _store(
        self,
        data: memoryview,
        syntax: str,
        sop_class: str,
        sop_instance: str,
        calling_ae: str,
        started: float,
    ) -> Dataset:
        try:
            header = inspect_dataset(data, syntax, sop_class, sop_instance)
        except InvalidInstanceError as exc:
            log.warning(
                "refused SOP instance %s from %s (0x%04X): %s",
                sop_instance,
                calling_ae,
                exc.refusal.status,
                exc.refusal.reason,
            )
            return exc.refusal.as_response()
        meta = encode_file_meta(header.sop_class_uid, header.sop_instance_uid, syntax)
        try:
            result = store_instance(self.store, self.sessions, header, [meta, data], calling_ae)
        except QuarantinedError as exc:
            code, comment = CONFLICT_RESPONSES[exc.kind]
            # the reason names the attribute that differs, never its value: no PHI in the log
            log.warning(
                "refused SOP instance %s of study %s from %s (0x%04X): %s; kept in quarantine "
                "as %s (entry %d)",
                sop_instance,
                header.study_instance_uid,
                calling_ae,
                code,
                exc.reason,
                exc.relative_path,
                exc.quarantine_id,
            )
            return response(code, comment)
        except OutOfSpaceError as exc:
            log.error("refused SOP instance %s from %s: %s", sop_instance, calling_ae, exc)
            return response(OUT_OF_RESOURCES, "out of disk space")
        except StoreError as exc:
            log.error("could not store SOP instance %s: %s", sop_instance, exc)
            return response(PROCESSING_FAILURE, "the node could not store the instance")
        except SQLAlchemyError as exc:
            # no traceback: SQLAlchemy's messages repeat the statement's parameters (PHI)
            log.error("could not record SOP instance %s: %s", sop_instance, _db_error(exc))
            return response(PROCESSING_FAILURE, "the node could not record the instance")
        except Exception:
            log.exception("could not store SOP instance %s", sop_instance)
            return response(PROCESSING_FAILURE, "the node could not store the instance")
        elapsed = time.perf_counter() - started
        if result.stored:
            log.info(
                "stored %s %s (%s, %d frames, %.1f MB) from %s in %.2f s",
                contexts.sop_class_name(header.sop_class_uid),
                sop_instance,
                contexts.transfer_syntax_name(syntax),
                header.number_of_frames,
                result.size_bytes / 1e6,
                calling_ae,
                elapsed,
            )
        else:
            log.info(
                "SOP instance %s from %s already stored; acknowledged", sop_instance, calling_ae
            )
        return response(SUCCESS)


def _db_error(exc: SQLAlchemyError) -> str:
    if isinstance(exc, StatementError) and exc.orig is not None:
        first_line = str(exc.orig).splitlines()[0] if str(exc.orig) else ""
        return f"{type(exc.orig).__name__}: {first_line}"
    return type(exc).__name__


class StorageSCP:
    """A running listener. ``shutdown()`` stops it; the object is not reusable afterwards."""

    def __init__(
        self,
        ae: AE,
        server: ListenerServer,
        thread: threading.Thread,
        store: InstanceStore,
        config: Config,
    ) -> None:
        self._ae = ae
        self._server = server
        self._thread = thread
        self._config = config
        self.store = store
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def ae_title(self) -> str:
        return self._config.dicom.ae_title

    def active_associations(self) -> int:
        return len(self._server.active_associations)

    def shutdown(self, timeout_s: float = SHUTDOWN_GRACE_S) -> None:
        """Stops accepting, lets open associations finish for ``timeout_s``, aborts the rest.

        Instances are acknowledged only after they are complete on disk and in the database,
        so an aborted association leaves nothing partial: its sender retries what it was not
        told was stored.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._server.shutdown()
        self._thread.join(timeout=5.0)
        deadline = time.monotonic() + timeout_s
        associations = list(self._server.active_associations)
        for assoc in associations:
            assoc.join(timeout=max(0.0, deadline - time.monotonic()))
        remaining = [assoc for assoc in associations if assoc.is_alive()]
        if remaining:
            log.warning("aborting %d association(s) still open at shutdown", len(remaining))
        for assoc in remaining:
            assoc.abort()
        for assoc in remaining:
            assoc.join(timeout=5.0)
        if not any(assoc.is_alive() for assoc in associations):
            # nothing writes any more: a partial file can only be one a killed handler left
            sweep_partial_files(self.store)
        log.info("DICOM listener on %s:%d stopped", self.host, self.port)

    def __enter__(self) -> StorageSCP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def start_storage_scp(config: Config, engine: Engine) -> StorageSCP:
    """Starts the listener in background threads and returns at once.

    The database must already have the current schema. Raises ``StartupError`` when the port
    is taken or the TLS files cannot be loaded. ``dicom.port`` 0 picks a free port (tests,
    benchmarks); ``StorageSCP.port`` tells which.
    """
    if pynetdicom_config.STORE_RECV_CHUNKED_DATASET:
        # process-wide pynetdicom switch: datasets would arrive as temp files outside the store
        raise StartupError(
            "pynetdicom's STORE_RECV_CHUNKED_DATASET is on in this process; the DICOM listener "
            "needs received datasets in memory"
        )
    dicom = config.dicom
    store = open_store(config.store_path, dicom.min_free_disk_mb, data_dir=config.home_path)
    tls_context = server_tls_context(dicom)
    service = StoreService(store=store, sessions=make_session_factory(engine))
    _check_database(service.sessions)

    ae = node_ae(dicom)  # the process's AE, shared with the node's sends

    handlers: list[Any] = [
        (evt.EVT_C_STORE, service.handle_store),
        (evt.EVT_REJECTED, _log_rejection, [config]),
        (evt.EVT_ESTABLISHED, _log_established),
    ]
    check_port_free(dicom_address(config))  # pynetdicom would raise a bare OSError
    try:
        server = ae.make_server(
            (dicom.host, dicom.port),
            ae_title=dicom.ae_title,
            contexts=contexts.storage_scp_contexts(),
            evt_handlers=handlers,
            server_class=ListenerServer,
            tls_context=tls_context,
            handshake_timeout_s=TLS_HANDSHAKE_TIMEOUT_S,
            socket_timeout_s=NETWORK_TIMEOUT_S,
            timeouts=AcceptorTimeouts(
                acse_s=ACSE_TIMEOUT_S, dimse_s=DIMSE_TIMEOUT_S, network_s=NETWORK_TIMEOUT_S
            ),
            one_buffer_pdu_reads=dicom.one_buffer_pdu_reads,
        )
    except OSError as exc:
        raise StartupError(
            f"cannot listen on {dicom.host}:{dicom.port} for DICOM: {exc.strerror} "
            "(see dicom.port / ECHO_AGENT_DICOM_PORT)"
        ) from None
    thread = threading.Thread(
        target=server.serve_forever, name="echo-agent-dicom-accept", daemon=True
    )
    thread.start()
    scp = StorageSCP(ae, server, thread, store, config)
    log.info(
        "DICOM listener %s on %s:%d (%s, max %d associations, store %s)",
        dicom.ae_title,
        scp.host,
        scp.port,
        "TLS with client certificates" if tls_context else "no TLS",
        dicom.max_associations,
        store.root,
    )
    return scp


def _check_database(sessions: sessionmaker[Session]) -> None:
    """Fails at start, not at the first C-STORE, when the database does not answer."""
    try:
        with sessions() as session:
            find_instance(session, "")
    except SQLAlchemyError as exc:
        raise StartupError(
            f"DICOM listener: the database does not answer: {_db_error(exc)}"
        ) from None


def _log_established(event: Event) -> None:
    requestor = event.assoc.requestor
    log.debug(
        "association from %s (%s:%s) accepted",
        str(requestor.ae_title).strip(),
        requestor.address,
        requestor.port,
    )


def _log_rejection(event: Event, config: Config) -> None:
    """Says why pynetdicom rejected an association; its own log line gives no reason."""
    requestor = event.assoc.requestor
    calling = str(requestor.ae_title).strip()
    primitive = requestor.primitive
    called = str(getattr(primitive, "called_ae_title", "") or "").strip()
    allowed = config.dicom.allowed_calling_aes
    if allowed and calling not in allowed:
        reason = f"calling AE title {calling!r} is not in dicom.allowed_calling_aes"
    elif config.dicom.check_called_ae and called != config.dicom.ae_title:
        reason = f"called AE title {called!r} is not this node's {config.dicom.ae_title!r}"
    else:
        reason = f"dicom.max_associations ({config.dicom.max_associations}) reached"
    log.warning("association from %s:%s rejected: %s", requestor.address, requestor.port, reason)
