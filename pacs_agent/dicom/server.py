"""pynetdicom's threaded association server, hardened and sped up for a listener of loops.

Five changes, all in the per-connection thread rather than the accept loop:

* TLS: pynetdicom wraps and handshakes each client socket inside ``get_request``, i.e. in the
  one thread that accepts connections, so a client that connects and sends nothing stalls every
  other sender. Here the handshake runs in the connection's own thread, under a timeout.
* Socket timeout: pynetdicom reads a PDU with blocking ``recv`` once ``select`` says data is
  waiting; a peer that stops in the middle of a PDU would hold the association (and its slot
  under ``max_associations``) forever. A socket timeout turns that into a closed connection.
* Reading: each association's socket refuses PDUs longer than the node allows before reading
  them, and reads the others into one buffer (``pdu_limits``).
* Admission: ``max_associations`` is counted when a connection arrives; one over the limit
  gets an A-ASSOCIATE-RJ (transient, local limit) before anything it sends is read.
* Timeouts: the node's one AE (``pacs_agent.dicom.ae``) carries the timeouts of its sends; each
  accepted association gets the listener's own (``AcceptorTimeouts``) before it reads anything.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, cast

from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from pacs_agent.dicom.pdu_limits import (
    ASSOCIATION_REQUEST_MAX_BYTES,
    PduLimits,
    limit_socket,
    local_limit_reject_pdu,
)

log = logging.getLogger("echo_agent.dicom")

# How long a refused connection may take to read its A-ASSOCIATE-RJ before it is closed: the
# request it sent meanwhile is read and dropped, so the close does not reset the reply away.
REFUSAL_LINGER_S = 2.0


@dataclass(frozen=True)
class AcceptorTimeouts:
    """pynetdicom's association timeouts for the associations the listener accepts."""

    acse_s: float
    dimse_s: float
    network_s: float


class ListenerServer(ThreadedAssociationServer):
    """Accepts connections; each gets a timeout and, with TLS, its handshake in its own thread.

    Built by ``ApplicationEntity.make_server(..., server_class=ListenerServer, ...)``; extra
    keyword arguments are this class's own.
    """

    def __init__(
        self,
        *args: Any,
        tls_context: ssl.SSLContext | None,
        handshake_timeout_s: float,
        socket_timeout_s: float,
        timeouts: AcceptorTimeouts,
        one_buffer_pdu_reads: bool,
        **kwargs: Any,
    ) -> None:
        self._tls_context = tls_context
        self.acceptor_timeouts = timeouts
        self.one_buffer_pdu_reads = one_buffer_pdu_reads
        self._handshake_timeout_s = handshake_timeout_s
        self._socket_timeout_s = socket_timeout_s
        # held while a connection is counted and its association thread started, so that two
        # connections arriving together cannot both take the last slot
        self._admission = threading.Lock()
        super().__init__(*args, request_handler=_RequestHandler, **kwargs)

    def get_request(self) -> tuple[socket.socket, Any]:
        assert self.socket is not None
        return self.socket.accept()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            if self._tls_context is not None:
                request = self._handshake(request, client_address)
                if request is None:
                    return
            request.settimeout(self._socket_timeout_s)
        except OSError as exc:
            log.warning(
                "connection from %s closed before it started: %s", _peer(client_address), exc
            )
            self.shutdown_request(request)
            return
        limit = self.ae.maximum_associations
        with self._admission:
            admitted = len(self.active_associations) < limit
            if admitted:
                super().process_request_thread(request, client_address)
        if not admitted:
            self._refuse(request, client_address, limit)

    def _refuse(self, request: socket.socket, client_address: Any, limit: int) -> None:
        """A-ASSOCIATE-RJ before reading the request: an over-limit peer costs no buffer."""
        log.warning(
            "association from %s rejected before its request was read: "
            "dicom.max_associations (%d) reached",
            _peer(client_address),
            limit,
        )
        try:
            request.sendall(local_limit_reject_pdu())
            request.shutdown(socket.SHUT_WR)
            _discard_until_closed(request, REFUSAL_LINGER_S, ASSOCIATION_REQUEST_MAX_BYTES)
        except OSError:
            pass  # the peer went away; nothing more to tell it
        finally:
            self.shutdown_request(request)

    def _handshake(self, request: socket.socket, client_address: Any) -> ssl.SSLSocket | None:
        assert self._tls_context is not None
        request.settimeout(self._handshake_timeout_s)
        try:
            return self._tls_context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            log.warning("TLS handshake with %s refused: %s", _peer(client_address), exc)
            request.close()
            return None

    def shutdown(self) -> None:
        """Stops the accept loop and closes the listening socket; associations keep running.

        pynetdicom's version also deregisters the server from its AE's list of servers, which
        this server never joined (it is started by the node, not by ``AE.start_server``).
        """
        socketserver.BaseServer.shutdown(self)
        self.server_close()


class _RequestHandler(RequestHandler):
    """pynetdicom's handler; the association's socket reads PDUs within ``PduLimits``, and
    the association runs under the listener's timeouts rather than the AE's (a sender's)."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        server = cast(ListenerServer, self.server)
        timeouts = server.acceptor_timeouts
        assoc.acse_timeout = timeouts.acse_s
        assoc.dimse_timeout = timeouts.dimse_s
        assoc.network_timeout = timeouts.network_s
        limits = PduLimits(
            association_request_bytes=ASSOCIATION_REQUEST_MAX_BYTES,
            data_bytes=assoc.acceptor.maximum_length,  # what the A-ASSOCIATE-AC announces
        )
        limit_socket(
            cast(AssociationSocket, assoc.dul.socket),
            limits,
            one_buffer_reads=server.one_buffer_pdu_reads,
        )
        return assoc


def _peer(client_address: Any) -> str:
    if isinstance(client_address, tuple) and len(client_address) >= 2:
        return f"{client_address[0]}:{client_address[1]}"
    return str(client_address)


def _discard_until_closed(sock: socket.socket, timeout_s: float, max_bytes: int) -> None:
    """Reads and drops what the peer sends until it closes, for at most ``timeout_s`` and
    ``max_bytes``; closing with unread data would send a reset that can destroy the reply."""
    deadline = time.monotonic() + timeout_s
    scratch = bytearray(64 * 1024)
    discarded = 0
    while discarded < max_bytes:
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            return
        sock.settimeout(remaining_s)
        count = sock.recv_into(scratch)
        if count == 0:
            return
        discarded += count
