"""Log set-up for the command line: one line per event on stderr, never patient names."""

from __future__ import annotations

import logging


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    # pynetdicom logs every PDU at INFO; a node serving a lab needs its own lines, not those
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, getattr(logging, level)))
    logging.getLogger("alembic").setLevel(max(logging.WARNING, getattr(logging, level)))
    # highdicom narrates every module it copies at INFO
    logging.getLogger("highdicom").setLevel(max(logging.WARNING, getattr(logging, level)))
