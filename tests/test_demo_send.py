"""The demo's sender names why a loop was not sent (a node whose listener is gone), rather
than failing on the way to saying so."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from pathlib import Path

from echo_agent.demo import send_studies
from inference.phantom import generate_phantoms
from pacs_agent.config import Config


@dataclass
class _GoneNode:
    """What ``send_studies`` reads of a running node: its configuration and DICOM port."""

    config: Config
    dicom_port: int


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: nothing listens


def test_a_loop_that_cannot_be_sent_is_logged_with_the_reason(tmp_path: Path, caplog) -> None:
    generate_phantoms(tmp_path, 1, seed=3, distractors=False)
    node = _GoneNode(Config(home=str(tmp_path)), _closed_port())
    with caplog.at_level(logging.WARNING, logger="echo_agent.demo"):
        sent = send_studies(node, tmp_path)  # type: ignore[arg-type]
    assert sent == 0
    warnings = [r.getMessage() for r in caplog.records if "not sent" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].split("not sent: ")[1].strip()
