"""The listener refuses PDUs longer than it allows, before reading them (issue #15, item 2).

A PDU header states its length in four bytes; pynetdicom reads that many bytes into memory
before it looks at them, so one header claiming 4 GiB let a peer grow the node by whatever it
streamed, before any AE title was checked. These tests talk raw DICOM upper layer to a real
listener on 127.0.0.1 (in this process, so its memory is this process' RSS): oversized PDUs
before and inside an association, the association cap, ``max_associations`` counted before a
request is read, and ordinary stores (pynetdicom and dcmtk) at the negotiated maximum.
"""

from __future__ import annotations

import gc
import inspect
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dicom_helpers import (
    Ids,
    dataset_bytes,
    run_storescu,
    scu_ae,
    send_files,
    us_loop_dataset,
    wait_until,
    write_instance,
)
from pydicom.uid import AllTransferSyntaxes, ImplicitVRLittleEndian
from pynetdicom import StoragePresentationContexts, build_context
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    MaximumLengthNotification,
    UserIdentityNegotiation,
)
from pynetdicom.transport import AssociationSocket

from pacs_agent.config import Config, DatabaseConfig, DicomConfig
from pacs_agent.db import make_engine, upgrade
from pacs_agent.dicom import StorageSCP, start_storage_scp
from pacs_agent.dicom.pdu_limits import ASSOCIATION_REQUEST_MAX_BYTES, LimitedPduSocket
from pacs_agent.dicom.scp import MAX_PDU_BYTES
from pacs_agent.store import INCOMING_DIR_NAME

HOST = "127.0.0.1"
VERIFICATION = "1.2.840.10008.1.1"
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_ABORT = 0x07
CLAIMED_4_GIB = 0xFFFF_FFF0
MIB = 1024 * 1024
# what the client streams into an oversized PDU, and how much the node may grow meanwhile
STREAM_BYTES = 150 * MIB
RSS_ALLOWANCE_BYTES = 50 * MIB
# what the client can hand to the kernel's socket buffers before a node that reads nothing
# stalls it; a node that reads the body lets through all of STREAM_BYTES
UNREAD_BUFFER_BYTES = 32 * MIB
REPLY_TIMEOUT_S = 5.0


@dataclass
class Node:
    scp: StorageSCP
    config: Config
    engine: sa.Engine

    @property
    def port(self) -> int:
        return self.scp.port

    def stored_files(self) -> list[Path]:
        root = self.config.store_path
        return sorted(p for p in root.rglob("*.dcm") if INCOMING_DIR_NAME not in p.parts)


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Starts listeners in this process on free ports; stops them after the test."""
    nodes: list[Node] = []

    def start(**dicom: Any) -> Node:
        home = tmp_path / f"home{len(nodes)}"
        url = f"sqlite:///{home / 'echo-agent.db'}"
        config = Config(
            home=str(home),
            dicom=DicomConfig(port=0, min_free_disk_mb=0, **dicom),
            database=DatabaseConfig(url=url),
        )
        upgrade(url)
        engine = make_engine(url)
        node = Node(start_storage_scp(config, engine), config, engine)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.scp.shutdown(timeout_s=5)
        node.engine.dispose()


@pytest.fixture
def node(start_node: Callable[..., Node]) -> Node:
    return start_node()


# --- raw upper layer -------------------------------------------------------------------------


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=REPLY_TIMEOUT_S)
    sock.settimeout(REPLY_TIMEOUT_S)
    return sock


def _header(pdu_type: int, length: int) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, length)


def _recv_exactly(sock: socket.socket, count: int) -> bytes | None:
    """``count`` bytes, or None when the peer closed first (a reset counts as closed)."""
    data = bytearray()
    while len(data) < count:
        try:
            chunk = sock.recv(count - len(data))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _read_pdu(sock: socket.socket) -> tuple[int, bytes] | None:
    """The next PDU's type and body; None when the connection closed. Raises on timeout."""
    header = _recv_exactly(sock, 6)
    if header is None:
        return None
    pdu_type, _, length = struct.unpack(">BBL", header)
    assert length < MIB, f"the node sent a PDU of {length} bytes"
    body = _recv_exactly(sock, length)
    if body is None:
        return None
    return pdu_type, body


def _assert_closed(sock: socket.socket) -> None:
    """The node closed the connection (EOF or reset), within the socket's timeout."""
    assert _read_pdu(sock) is None


def _assert_aborted_and_closed(sock: socket.socket) -> None:
    """An A-ABORT from the service provider, then the end of the connection, in bounded time."""
    started = time.monotonic()
    pdu = _read_pdu(sock)
    assert pdu is not None, "closed without an A-ABORT"
    pdu_type, body = pdu
    assert pdu_type == A_ABORT, f"PDU type 0x{pdu_type:02X} instead of A-ABORT"
    assert body[2] == 0x02  # source: DICOM UL service-provider
    _assert_closed(sock)
    assert time.monotonic() - started < REPLY_TIMEOUT_S


def _association_request(called_ae: str = "ECHOAGENT") -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "RAWSCU"
    primitive.called_ae_title = called_ae
    context = build_context(VERIFICATION, ImplicitVRLittleEndian)
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16382
    primitive.user_information = [max_length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def _associate(port: int) -> socket.socket:
    """A raw connection with an accepted association (Verification only)."""
    sock = _connect(port)
    sock.sendall(_association_request())
    reply = _read_pdu(sock)
    assert reply is not None and reply[0] == A_ASSOCIATE_AC, reply
    return sock


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class StreamResult:
    sent_bytes: int
    closed_by_node: bool
    peak_growth_bytes: int


def _stream_into(sock: socket.socket, header: bytes, deadline_s: float = 15.0) -> StreamResult:
    """Sends ``header`` and then up to STREAM_BYTES of body in 1 MiB chunks, until the node
    closes; measures this process' RSS (the node's) after every chunk against its idle level."""
    gc.collect()
    idle = _rss_bytes()
    peak = idle
    chunk = memoryview(bytes(MIB))
    sent = 0
    closed = False
    deadline = time.monotonic() + deadline_s
    sock.settimeout(2.0)
    try:
        sock.sendall(header)
        while sent < STREAM_BYTES and time.monotonic() < deadline:
            sock.sendall(chunk)
            sent += len(chunk)
            peak = max(peak, _rss_bytes())
    except (BrokenPipeError, ConnectionResetError):
        closed = True
    except TimeoutError:
        # the node stopped reading; did it also close? (a reset or EOF says so)
        sock.settimeout(REPLY_TIMEOUT_S)
        closed = _drain_until_closed(sock)
    peak = max(peak, _rss_bytes())
    if not closed:
        sock.settimeout(REPLY_TIMEOUT_S)
        closed = _drain_until_closed(sock)
    return StreamResult(sent, closed, peak - idle)


def _drain_until_closed(sock: socket.socket) -> bool:
    """Reads what the node sent until it closes; False when it stays open past the timeout."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


# --- oversized PDUs ----------------------------------------------------------------------------


def test_header_claiming_4_gib_before_association_is_aborted_unread(node: Node) -> None:
    with _connect(node.port) as sock:
        sock.sendall(_header(P_DATA_TF, CLAIMED_4_GIB))
        _assert_aborted_and_closed(sock)
    with _connect(node.port) as sock:
        sock.sendall(_header(0x01, CLAIMED_4_GIB))
        _assert_aborted_and_closed(sock)
    # the refused connections hold no slot under max_associations (not for the ACSE timeout)
    wait_until(lambda: node.scp.active_associations() == 0, timeout_s=REPLY_TIMEOUT_S)


def test_association_request_over_the_cap_is_aborted_unread(node: Node) -> None:
    assert ASSOCIATION_REQUEST_MAX_BYTES < MAX_PDU_BYTES
    with _connect(node.port) as sock:
        # the header only: a node that waits for the body never answers
        sock.sendall(_header(0x01, ASSOCIATION_REQUEST_MAX_BYTES + 1))
        _assert_aborted_and_closed(sock)


def test_p_data_over_the_negotiated_maximum_is_aborted_unread(node: Node) -> None:
    with _associate(node.port) as sock:
        sock.sendall(_header(P_DATA_TF, MAX_PDU_BYTES + 1))
        _assert_aborted_and_closed(sock)
    wait_until(lambda: node.scp.active_associations() == 0, timeout_s=REPLY_TIMEOUT_S)


@pytest.mark.parametrize("inside_association", [False, True], ids=["before", "inside"])
def test_memory_stays_flat_while_150_mb_stream_into_an_oversized_pdu(
    node: Node, inside_association: bool
) -> None:
    sock = _associate(node.port) if inside_association else _connect(node.port)
    with sock:
        result = _stream_into(sock, _header(P_DATA_TF, CLAIMED_4_GIB))
    assert result.peak_growth_bytes < RSS_ALLOWANCE_BYTES, (
        f"RSS grew {result.peak_growth_bytes / MIB:.0f} MiB"
    )
    assert result.sent_bytes < UNREAD_BUFFER_BYTES, f"{result.sent_bytes / MIB:.0f} MiB read"
    assert result.closed_by_node, f"still open after {result.sent_bytes / MIB:.0f} MiB"
    wait_until(lambda: node.scp.active_associations() == 0, timeout_s=REPLY_TIMEOUT_S)


# --- association requests and limits --------------------------------------------------------


def test_large_but_legitimate_association_request_is_accepted(node: Node) -> None:
    """128 presentation contexts with 10 transfer syntaxes each and an 8 KB user identity
    (a JWT-sized token) still fit the association cap."""
    ae = scu_ae()
    ae.requested_contexts = [
        build_context(VERIFICATION, AllTransferSyntaxes[:10]),
        *(
            build_context(c.abstract_syntax, AllTransferSyntaxes[:10])
            for c in StoragePresentationContexts[:127]
        ),
    ]
    identity = UserIdentityNegotiation()
    identity.user_identity_type = 5  # JSON Web Token
    identity.primary_field = b"t" * 8000
    assoc = ae.associate(HOST, node.port, ae_title="ECHOAGENT", ext_neg=[identity])
    assert assoc.is_established
    assert int(assoc.send_c_echo().Status) == 0
    assoc.release()


def test_max_associations_are_counted_before_the_request_is_read(
    start_node: Callable[..., Node], caplog: pytest.LogCaptureFixture
) -> None:
    node = start_node(max_associations=1)
    with _associate(node.port) as first, caplog.at_level("WARNING", logger="echo_agent.dicom"):
        with _connect(node.port) as second:
            # nothing sent: the node answers before reading any request
            reply = _read_pdu(second)
            assert reply is not None and reply[0] == A_ASSOCIATE_RJ, reply
            result, source, reason = reply[1][1:4]
            assert (result, source, reason) == (0x02, 0x03, 0x02)  # transient, local limit
            _assert_closed(second)
        assert "max_associations (1) reached" in caplog.text
        first.sendall(_header(0x05, 4) + bytes(4))  # A-RELEASE-RQ
        reply = _read_pdu(first)
        assert reply is not None and reply[0] == 0x06  # A-RELEASE-RP
    wait_until(lambda: node.scp.active_associations() == 0, timeout_s=REPLY_TIMEOUT_S)
    with _associate(node.port):
        pass


# --- ordinary stores still work -----------------------------------------------------------------


def test_stores_in_pdus_of_the_negotiated_maximum_still_work(node: Node, tmp_path: Path) -> None:
    """A 4.9 MB loop travels in P-DATA PDUs of exactly the node's maximum (pynetdicom fills
    them), and dcmtk's storescu sends its own; both are stored byte for byte."""
    big = us_loop_dataset(Ids.new(), rows=480, columns=640, frames=16)
    assert len(big.PixelData) > MAX_PDU_BYTES
    pynetdicom_file = write_instance(tmp_path / "big.dcm", big)
    assert send_files(HOST, node.port, [pynetdicom_file]) == [0]
    dcmtk_file = write_instance(tmp_path / "dcmtk.dcm", us_loop_dataset(Ids.new(), frames=8))
    done = run_storescu(HOST, node.port, [dcmtk_file])
    assert done.returncode == 0, done.stderr
    stored = {dataset_bytes(p) for p in node.stored_files()}
    assert stored == {dataset_bytes(pynetdicom_file), dataset_bytes(dcmtk_file)}


# --- the private pynetdicom API the listener's socket relies on ------------------------------


def test_the_pynetdicom_reader_the_listener_socket_overrides_is_unchanged() -> None:
    """``LimitedPduSocket`` overrides ``AssociationSocket.recv(nr_bytes)`` and reads the raw
    ``socket`` itself; both the PDU limits and ``dicom.one_buffer_pdu_reads`` hold only while
    pynetdicom's DUL reads a PDU as ``recv(6)`` for the header, then ``recv(length)``. A
    pynetdicom upgrade that changes either fails here, not silently in production."""
    assert list(inspect.signature(AssociationSocket.recv).parameters) == ["self", "nr_bytes"]
    reader = inspect.getsource(DULServiceProvider._read_pdu_data)
    assert "self.socket.recv(6)" in reader
    assert "self.socket.recv(pdu_length)" in reader
    assert "self.socket = " in inspect.getsource(AssociationSocket.__init__)
    assert LimitedPduSocket.__mro__[1] is AssociationSocket


@pytest.mark.parametrize("one_buffer", [True, False], ids=["one-buffer", "pynetdicom-reads"])
def test_both_ways_of_reading_refuse_long_pdus_and_store_the_same_bytes(
    start_node: Callable[..., Node], tmp_path: Path, one_buffer: bool
) -> None:
    """``dicom.one_buffer_pdu_reads`` changes how a PDU is read, nothing else: an over-long
    P-DATA is refused unread, and a loop larger than one PDU is stored byte for byte."""
    node = start_node(one_buffer_pdu_reads=one_buffer)
    with _associate(node.port) as sock:
        sock.sendall(_header(P_DATA_TF, MAX_PDU_BYTES + 1))
        _assert_aborted_and_closed(sock)
    big = write_instance(
        tmp_path / "big.dcm", us_loop_dataset(Ids.new(), rows=480, columns=640, frames=16)
    )
    assert send_files(HOST, node.port, [big]) == [0]
    assert [dataset_bytes(p) for p in node.stored_files()] == [dataset_bytes(big)]
