"""Log set-up for the command line: one line per event on stderr, never patient names.

``logging.format = "json"`` writes one JSON object per line (time, level, logger, message, and
``study_id`` / ``job_id`` / ``instance_uid`` when known: see ``pacs_agent.logcontext``).
"""

from __future__ import annotations

import logging

from pacs_agent.logcontext import ContextFilter, JsonFormatter, TextFormatter


def configure_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    logging.basicConfig(level=getattr(logging, level), handlers=[handler])
    # pynetdicom logs every PDU at INFO; a node serving a lab needs its own lines, not those
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, getattr(logging, level)))
    logging.getLogger("alembic").setLevel(max(logging.WARNING, getattr(logging, level)))
    # highdicom narrates every module it copies at INFO
    logging.getLogger("highdicom").setLevel(max(logging.WARNING, getattr(logging, level)))
