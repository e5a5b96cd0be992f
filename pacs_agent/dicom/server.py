"""pynetdicom's threaded association server, hardened and sped up for a listener of loops.

Three changes, all in the per-connection thread rather than the accept loop:

* TLS: pynetdicom wraps and handshakes each client socket inside ``get_request``, i.e. in the
  one thread that accepts connections, so a client that connects and sends nothing stalls every
  other sender. Here the handshake runs in the connection's own thread, under a timeout.
* Socket timeout: pynetdicom reads a PDU with blocking ``recv`` once ``select`` says data is
  waiting; a peer that stops in the middle of a PDU would hold the association (and its slot
  under ``max_associations``) forever. A socket timeout turns that into a closed connection.
* Reading: pynetdicom reads every PDU 4 KiB per ``recv`` call, in Python; a 100 MB loop is
  25,000 calls. ``PduReadingSocket`` reads each PDU with ``recv_into`` into one buffer, which
  made storing uncompressed loops about a third faster end to end (storescu -> node, measured
  like ``echo-agent bench ingest``).
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
from typing import Any

from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

log = logging.getLogger("echo_agent.dicom")

# Above the listener's maximum PDU (4 MiB, see scp.MAX_PDU_BYTES): every PDU a peer may send.
PREALLOCATE_LIMIT_BYTES = 8 * 1024 * 1024


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
        **kwargs: Any,
    ) -> None:
        self._tls_context = tls_context
        self._handshake_timeout_s = handshake_timeout_s
        self._socket_timeout_s = socket_timeout_s
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
        super().process_request_thread(request, client_address)

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


class PduReadingSocket(AssociationSocket):
    """pynetdicom's association socket, reading ``nr_bytes`` in as few system calls as it can."""

    def recv(self, nr_bytes: int) -> bytearray:
        """Same contract as pynetdicom's: up to ``nr_bytes``, fewer only if the peer closed.

        The buffer is allocated up front only for lengths a conforming peer sends; a PDU header
        claiming gigabytes is read pynetdicom's way, so that memory grows with the data that
        actually arrives rather than with what a hostile peer announces.
        """
        if nr_bytes > PREALLOCATE_LIMIT_BYTES:
            return super().recv(nr_bytes)
        sock = self.socket
        assert sock is not None
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        received = 0
        with view:
            while received < nr_bytes:
                count = sock.recv_into(view[received:], nr_bytes - received)
                if count == 0:
                    break
                received += count
        if received < nr_bytes:
            del buffer[received:]
        return buffer


class _RequestHandler(RequestHandler):
    """pynetdicom's handler; the association's socket reads PDUs with ``PduReadingSocket``."""

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        sock = assoc.dul.socket
        # The socket was built (and announced to the state machine) by pynetdicom; only its
        # read method changes, so its class is swapped rather than a second socket created.
        if type(sock) is AssociationSocket:
            sock.__class__ = PduReadingSocket
        return assoc


def _peer(client_address: Any) -> str:
    if isinstance(client_address, tuple) and len(client_address) >= 2:
        return f"{client_address[0]}:{client_address[1]}"
    return str(client_address)
