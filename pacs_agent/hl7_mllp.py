"""Sends one HL7 v2 message over MLLP and reads the acknowledgment (one attempt per call; the
delivery job around it retries with back-off).

MLLP (HL7 v2 transport, Minimal Lower Layer Protocol release 2): the message is framed as
``0x0B <message> 0x1C 0x0D`` on a TCP connection, and the receiver answers with an ACK in the
same frame. The message is sent as UTF-8 (``reporting.hl7_oru`` declares it in MSH-18).

What the answer means (MSA-1, HL7 table 0008):

* AA / CA: accepted (application / commit accept): delivered.
* AE / CE: the receiver hit an error processing it (a database down, an engine hiccup): a
  later try may succeed, so retryable.
* AR / CR: rejected (unsupported message, unknown patient, a validation failure): sending the
  same bytes again cannot change that, so permanent.
* No answer (connect refused, timeout, connection closed, an unreadable frame): retryable, as
  for any transport failure.
* An ACK whose MSA-2 is not the control id sent answers some other message: not a delivery,
  retryable (a resend gets its own answer).

The ACK is read with a small reader of its own rather than a full parser: it needs three
fields, and it must read an ACK of any v2 version and from any engine (a library that knows
only some versions would turn a valid AA into an endless retry).
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass

from pacs_agent.errors import EchoAgentError

log = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
MAX_ACK_BYTES = 1024 * 1024  # an ACK is a few hundred bytes; a runaway answer is cut here
RECV_CHUNK_BYTES = 4096

ACCEPTED = frozenset({"AA", "CA"})
RETRYABLE = frozenset({"AE", "CE"})
REJECTED = frozenset({"AR", "CR"})
ACK_CODES = ACCEPTED | RETRYABLE | REJECTED


@dataclass(frozen=True)
class AckOutcome:
    """One attempt: ``ack_code`` is MSA-1 as received ("" when no readable ACK came),
    ``text`` what the ACK says (MSA-3, ERR) or what went wrong, ``control_id`` the sent
    message's MSH-10."""

    ok: bool
    ack_code: str
    text: str
    retryable: bool
    control_id: str


@dataclass(frozen=True)
class Ack:
    """The parts of an ACK that decide the outcome (escape sequences resolved)."""

    code: str  # MSA-1
    control_id: str  # MSA-2: the control id of the message it acknowledges
    text: str  # MSA-3 and the ERR segments' texts, joined


def frame(message: str) -> bytes:
    """The MLLP block of ``message`` (ER7 text, segments ended by CR), UTF-8 encoded."""
    payload = message.encode("utf-8")
    if START_BLOCK in payload or b"\x1c" in payload:
        raise ValueError("an HL7 message must not contain the MLLP frame bytes 0x0B or 0x1C")
    return START_BLOCK + payload + END_BLOCK


def control_id_of(message: str) -> str:
    """MSH-10 of an ER7 message; ValueError when it has no MSH or no control id."""
    header = message.split("\r", 1)[0]
    if not header.startswith("MSH") or len(header) < 8:
        raise ValueError("the message does not start with an MSH segment")
    fields = header.split(header[3])
    control_id = fields[9] if len(fields) > 9 else ""
    if not control_id:
        raise ValueError("the message has no control id (MSH-10)")
    return control_id


def send_oru(
    host: str,
    port: int,
    message: str,
    timeout_s: float,
    *,
    connect_timeout_s: float | None = None,
) -> AckOutcome:
    """Sends ``message`` to ``host:port`` and waits up to ``timeout_s`` for its ACK (the
    connection gets ``connect_timeout_s``, by default the same). Never raises for network
    trouble or a bad answer: the outcome says what happened and whether a retry may help."""
    control_id = control_id_of(message)
    block = frame(message)
    where = f"{host}:{port}"
    connect_s = connect_timeout_s or timeout_s
    try:
        sock = socket.create_connection((host, port), timeout=connect_s)
    except TimeoutError:
        return _failed(control_id, f"no connection to {where} within {connect_s:g} s")
    except OSError as exc:  # refused, unreachable, name not resolved
        return _failed(control_id, f"cannot reach {where}: {_reason(exc)}")
    try:
        with sock:
            sock.settimeout(timeout_s)
            sock.sendall(block)
            payload = _read_block(sock, time.monotonic() + timeout_s)
    except TimeoutError:
        return _failed(control_id, f"no acknowledgment from {where} within {timeout_s:g} s")
    except ConnectionError as exc:
        return _failed(control_id, f"connection to {where} failed: {_reason(exc)}")
    except OSError as exc:
        return _failed(control_id, f"sending to {where} failed: {_reason(exc)}")
    except _FrameError as exc:
        return _failed(control_id, f"unusable answer from {where}: {exc}")
    return _outcome(control_id, payload, where)


def parse_ack(payload: bytes) -> Ack:
    """The MSA (and ERR) of an ACK in ER7; _FrameError when there is no MSH or no MSA."""
    text = payload.decode("utf-8", errors="replace")
    segments = [s for s in text.replace("\n", "\r").split("\r") if s.strip()]
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 8:
        raise _FrameError("the answer is not an HL7 message (no MSH)")
    separator = segments[0][3]
    escape_char = segments[0][6] if len(segments[0]) > 6 else "\\"
    by_name: dict[str, list[list[str]]] = {}
    for segment in segments[1:]:
        fields = segment.split(separator)
        by_name.setdefault(fields[0], []).append(fields)
    if "MSA" not in by_name:
        raise _FrameError("the answer has no MSA segment")
    msa = by_name["MSA"][0] + [""] * 4
    component = segments[0][4]
    code = msa[1].split(component)[0].strip().upper()
    acked = msa[2].split(component)[0].strip()
    texts = [msa[3]] if msa[3] else []
    for err in by_name.get("ERR", []):
        # v2.5+: ERR-8 user message, ERR-3 the HL7 error code; before: ERR-1 code and location
        err = err + [""] * 9
        code_text = [*err[3].split(component), "", ""][1]
        text_of_err = err[8] or code_text or err[1]
        if text_of_err:
            texts.append(text_of_err)
    return Ack(code, acked, "; ".join(_unescape(t, escape_char, component) for t in texts))


class _FrameError(EchoAgentError):
    """The peer's answer is not a readable MLLP-framed ACK."""


def _read_block(sock: socket.socket, deadline: float) -> bytes:
    """Bytes up to the end block; what precedes the start block is dropped."""
    buffer = b""
    while END_BLOCK not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(RECV_CHUNK_BYTES)
        if not chunk:
            raise ConnectionError("the connection closed before an acknowledgment came")
        buffer += chunk
        if len(buffer) > MAX_ACK_BYTES:
            raise _FrameError(f"more than {MAX_ACK_BYTES} bytes without an end block")
    body = buffer.split(END_BLOCK, 1)[0]
    if START_BLOCK not in body:
        raise _FrameError("the answer has no MLLP start block")
    return body.split(START_BLOCK)[-1]


def _outcome(control_id: str, payload: bytes, where: str) -> AckOutcome:
    try:
        ack = parse_ack(payload)
    except _FrameError as exc:
        return _failed(control_id, f"unusable answer from {where}: {exc}")
    said = f": {ack.text}" if ack.text else ""
    if ack.code not in ACK_CODES:
        return _failed(control_id, f"unknown acknowledgment code {ack.code!r} from {where}")
    if ack.control_id != control_id:
        return AckOutcome(
            False,
            ack.code,
            f"{ack.code} from {where} acknowledges message {ack.control_id!r}, not {control_id!r}",
            True,
            control_id,
        )
    log.info("hl7 message %s to %s: %s", control_id, where, ack.code)
    if ack.code in ACCEPTED:
        return AckOutcome(True, ack.code, ack.text, False, control_id)
    if ack.code in RETRYABLE:
        return AckOutcome(False, ack.code, f"{ack.code} (error) from {where}{said}", True,
                          control_id)  # fmt: skip
    return AckOutcome(False, ack.code, f"{ack.code} (rejected) from {where}{said}", False,
                      control_id)  # fmt: skip


def _failed(control_id: str, text: str) -> AckOutcome:
    log.warning("hl7 message %s: %s", control_id, text)
    return AckOutcome(False, "", text, True, control_id)


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _unescape(value: str, escape_char: str, component: str) -> str:
    """HL7 escape sequences resolved, components shown with spaces (a text for people)."""
    table = {"F": "|", "S": "^", "T": "&", "R": "~", "E": escape_char, ".br": " "}
    out, i = [], 0
    while i < len(value):
        if value[i] == escape_char:
            end = value.find(escape_char, i + 1)
            if end > i and value[i + 1 : end] in table:
                out.append(table[value[i + 1 : end]])
                i = end + 1
                continue
        out.append(" " if value[i] == component else value[i])
        i += 1
    return "".join(out).strip()
