"""An HL7 v2 results receiver on loopback for the tests: the interface engine the node sends
ORU^R01 messages to over MLLP.

It reads MLLP blocks (``0x0B ... 0x1C 0x0D``) with its own framing code, parses every message
with hl7apy as HL7 2.5.1 at hl7apy's strict level and validates it (required fields, data
types, lengths), and answers with an ACK that hl7apy builds. A message that does not parse
or validate is answered AR with the problem, as a strict engine answers; otherwise the next
scripted answer is used:

* ``"AA"``, ``"AE"``, ``"AR"``: that acknowledgment code, for the message's control id;
* ``"wrong_id"``: AA, but for another control id;
* ``"silent"``: no answer; the connection is held until the sender gives up.

With nothing scripted it answers AA. Every message is kept (text, parsed message, problem).
"""

from __future__ import annotations

import itertools
import socket
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from hl7apy.base_datatypes import ST, TX
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.parser import parse_message

SB, EB, CR = b"\x0b", b"\x1c", b"\x0d"


@dataclass
class Received:
    """One message as it arrived: the decoded text, hl7apy's parse of it (None when it did not
    parse) and the validation problem ("" when valid)."""

    text: str
    message: Any
    problem: str
    answer: str


class MllpPeer:
    """Listens on 127.0.0.1 (a free port); use as a context manager."""

    def __init__(self, application: str = "TEST-EHR") -> None:
        self.application = application
        self.received: list[Received] = []
        self._answers: deque[str] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ids = itertools.count(1)
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)  # the accept loop checks the stop flag this often
        self.host, self.port = self._server.getsockname()[:2]
        self._threads: list[threading.Thread] = []

    def script(self, *answers: str) -> None:
        """The answers to the next messages, in order."""
        with self._lock:
            self._answers.extend(answers)

    def __enter__(self) -> MllpPeer:
        thread = threading.Thread(target=self._accept_loop, name="mllp-peer", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._server.close()
        for thread in self._threads:
            thread.join(timeout=5)

    # --- serving ------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        buffer = b""
        with conn:
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                buffer += chunk
                while EB + CR in buffer:
                    block, buffer = buffer.split(EB + CR, 1)
                    if not block.startswith(SB):
                        return  # not MLLP: drop the connection as an engine would
                    answer = self._handle(block[1:].decode("utf-8"))
                    if answer is not None:
                        conn.sendall(SB + answer.encode("utf-8") + EB + CR)

    def _handle(self, text: str) -> str | None:
        problem = ""
        message = None
        try:
            message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT)
            message.validate()
        except Exception as exc:  # any parse or validation failure is answered AR
            problem = f"{type(exc).__name__}: {exc}"
        with self._lock:
            scripted = self._answers.popleft() if self._answers else "AA"
        answer = "AR" if problem else scripted
        self.received.append(Received(text, message, problem, answer))
        if answer == "silent":
            return None
        control_id = _control_id(text)
        if answer == "wrong_id":
            return self._ack("AA", f"{control_id}-OTHER", "")
        texts = {"AE": "database unavailable, try again", "AR": problem or "unknown patient"}
        return self._ack(answer, control_id, texts.get(answer, ""))

    def _ack(self, code: str, control_id: str, text: str) -> str:
        ack = Message("ACK", version="2.5.1", validation_level=VALIDATION_LEVEL.STRICT)
        ack.msh.msh_3 = self.application
        ack.msh.msh_9 = "ACK^R01^ACK"
        ack.msh.msh_10 = f"ACK{next(self._ids)}"
        ack.msh.msh_11 = "P"
        ack.msa.msa_1 = code
        ack.msa.msa_2 = ST(control_id)
        if text:
            ack.msa.msa_3.msa_3_1 = ST(text[:80])
            err = ack.add_segment("ERR")
            err.err_3 = "207^Application internal error^HL70357"
            err.err_4 = "E"
            err.err_8.err_8_1 = TX(text[:250])
        ack.validate()
        return ack.to_er7() + "\r"


def _control_id(text: str) -> str:
    header = text.split("\r", 1)[0]
    if len(header) < 4:
        return ""
    fields = header.split(header[3])
    return fields[9] if len(fields) > 9 else ""
