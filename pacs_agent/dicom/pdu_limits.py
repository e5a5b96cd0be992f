"""How long a PDU the listener reads, and how it refuses longer ones without reading them.

A PDU header states the length of what follows in four bytes. pynetdicom reads that many bytes
into memory before decoding anything, so a header claiming 4 GiB let any peer that could open
a TCP connection grow the node by whatever it streamed, before an AE title was checked. Here
the association's socket compares each length with the limit for the association's state and
refuses, with an A-ABORT, before reading the body:

* before the association is accepted, ``ASSOCIATION_REQUEST_MAX_BYTES``: an A-ASSOCIATE-RQ with
  128 presentation contexts of 10 transfer syntaxes each and an 8 KB user identity token is
  about 43 KB, with all 39 transfer syntaxes pydicom knows about 137 KB; dcmtk caps it at 1 MB;
* afterwards, the maximum PDU length the node announced in its A-ASSOCIATE-AC (PS3.8 D.1: the
  largest P-DATA-TF variable field it receives); every other PDU is far shorter.

With ``dicom.one_buffer_pdu_reads`` (the default) the socket also reads each allowed PDU with
``recv_into`` into one buffer: pynetdicom reads 4 KiB per ``recv`` call, in Python (25,000
calls for a 100 MB loop). One buffer takes the reading thread's CPU for 252 MB of 4 MiB PDUs
from 0.17 s to 0.04 s; end to end (``echo-agent bench ingest`` against ``--plain-pdu-reads``,
314 MB, 2 cores, 6 Dec 2026) that was 1.00 s vs 1.31 s and 1.10 s vs 1.52 s on a lightly
loaded machine, within noise under heavy load. The buffer is allocated up front, which is safe
because nothing longer than the limit is read at all. Both the limit and the fast read rely on
pynetdicom's private reader calling ``AssociationSocket.recv(6)`` for a header and
``recv(length)`` for the body; ``tests/test_pdu_limits.py`` pins that.
"""

from __future__ import annotations

import contextlib
import logging
import struct
from dataclasses import dataclass
from queue import Queue
from typing import Any, cast

from pynetdicom.transport import AssociationSocket

log = logging.getLogger("echo_agent.dicom")

ASSOCIATION_REQUEST_MAX_BYTES = 256 * 1024
# DUL states (PS3.8 9.2) in which no association is established yet: reading an A-ASSOCIATE-RQ
STATES_BEFORE_ASSOCIATION = frozenset({"Sta1", "Sta2", "Sta3", "Sta4", "Sta5"})
# PS3.8 9.3.8: A-ABORT from the DICOM UL service-provider, "invalid-PDU-parameter value"
_ABORT_SOURCE_SERVICE_PROVIDER = 0x02
_ABORT_REASON_INVALID_PARAMETER_VALUE = 0x06
# PS3.8 9.3.4: rejected-transient, service-provider (presentation), local-limit-exceeded
_REJECT_TRANSIENT = 0x02
_REJECT_SOURCE_PRESENTATION = 0x03
_REJECT_LOCAL_LIMIT_EXCEEDED = 0x02


@dataclass(frozen=True)
class PduLimits:
    """The longest PDU body (bytes after the 6-byte header) read in each phase."""

    association_request_bytes: int
    data_bytes: int

    def __post_init__(self) -> None:
        if self.association_request_bytes <= 0 or self.data_bytes <= 0:
            # pynetdicom's 0 means "unlimited", which is what these limits exist to prevent
            raise ValueError(f"PDU limits must be positive: {self}")

    def for_state(self, state: str) -> int:
        """The limit in DUL state ``state`` (pynetdicom's names, "Sta1" to "Sta13")."""
        if state in STATES_BEFORE_ASSOCIATION:
            return self.association_request_bytes
        return self.data_bytes


def abort_pdu() -> bytes:
    """An A-ABORT saying that a PDU parameter (here: its length) is invalid."""
    return _short_pdu(
        0x07, 0, _ABORT_SOURCE_SERVICE_PROVIDER, _ABORT_REASON_INVALID_PARAMETER_VALUE
    )


def local_limit_reject_pdu() -> bytes:
    """An A-ASSOCIATE-RJ telling the peer to try again later: too many associations."""
    return _short_pdu(
        0x03, _REJECT_TRANSIENT, _REJECT_SOURCE_PRESENTATION, _REJECT_LOCAL_LIMIT_EXCEEDED
    )


def _short_pdu(pdu_type: int, first: int, second: int, third: int) -> bytes:
    return struct.pack(">BBLBBBB", pdu_type, 0, 4, 0, first, second, third)


class LimitedPduSocket(AssociationSocket):
    """pynetdicom's association socket, refusing over-long PDUs and reading the rest fast.

    pynetdicom's reader calls ``recv(6)`` for a PDU header and then ``recv(length)`` for its
    body; no header is longer than any limit, so checking every ``recv`` checks every body.
    Made by changing the class of the socket pynetdicom built (``limit_socket``).
    """

    pdu_limits: PduLimits
    one_buffer_reads: bool

    def recv(self, nr_bytes: int) -> bytearray:
        """Up to ``nr_bytes``, fewer only if the peer closed; nothing if the length is refused.

        Returning nothing is pynetdicom's "connection closed" (its event 17): its state machine
        then closes the socket and ends the association.
        """
        state = self.assoc.dul.state_machine.current_state
        limit = self.pdu_limits.for_state(state)
        if nr_bytes > limit:
            self._refuse(nr_bytes, limit, state)
            return bytearray()
        if not self.one_buffer_reads:
            return super().recv(nr_bytes)
        sock = self.socket
        assert sock is not None
        buffer = bytearray(nr_bytes)
        received = 0
        with memoryview(buffer) as view:
            while received < nr_bytes:
                count = sock.recv_into(view[received:], nr_bytes - received)
                if count == 0:
                    break
                received += count
        if received < nr_bytes:
            del buffer[received:]
        return buffer

    def _refuse(self, nr_bytes: int, limit: int, state: str) -> None:
        before = state in STATES_BEFORE_ASSOCIATION
        requestor = self.assoc.requestor
        log.warning(
            "PDU of %d bytes from %s:%s refused %s (limit %d bytes); association aborted",
            nr_bytes,
            requestor.address,
            requestor.port,
            "before association" if before else "inside the association",
            limit,
        )
        sock = self.socket
        if sock is not None:
            # the peer may be gone already; the connection is closed either way
            with contextlib.suppress(OSError):
                sock.sendall(abort_pdu())
        if before:
            # The association thread waits (for the ACSE timeout) for a request that will not
            # come; an empty item is what its timeout returns, so it ends now and frees its slot
            # under max_associations.
            cast("Queue[Any]", self.assoc.dul.to_user_queue).put(None)


def limit_socket(
    sock: AssociationSocket, limits: PduLimits, *, one_buffer_reads: bool = True
) -> None:
    """Makes pynetdicom's freshly built association socket a ``LimitedPduSocket``; with
    ``one_buffer_reads`` it reads each PDU into one buffer, else with pynetdicom's own loop.

    The socket was created (and announced to the state machine) by pynetdicom; only how it
    reads changes, so its class is swapped rather than a second socket created.
    """
    if type(sock) is not AssociationSocket:
        raise TypeError(f"expected pynetdicom's AssociationSocket, got {type(sock).__name__}")
    sock.__class__ = LimitedPduSocket
    cast(LimitedPduSocket, sock).pdu_limits = limits
    cast(LimitedPduSocket, sock).one_buffer_reads = one_buffer_reads
