"""Which study, job and instance a log line is about, without threading ids through every call.

A ``contextvars`` context holds ``study_id``, ``job_id`` and ``instance_uid``; the job runner
and the DICOM handler set it for the work they do (``log_context``), and ``ContextFilter``
copies it onto every record a handler sees, so a JSON collector can select one study's lines.
A value passed with ``extra=`` wins over the context. New threads start with an empty context,
so ids never leak from one worker thread to another.

Only identifiers go here, never patient names: they are database ids and DICOM UIDs.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from types import MappingProxyType
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pacs_agent.db.models import Instance, Job

CONTEXT_FIELDS = ("study_id", "job_id", "instance_uid")

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: ContextVar[Mapping[str, Any]] = ContextVar("echo_agent_log_context", default=_EMPTY)


def current_context() -> Mapping[str, Any]:
    """The identifiers bound in this thread (or task) right now."""
    return _context.get()


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Binds identifiers for the ``with`` block (nested blocks add to the outer ones)."""
    unknown = set(fields) - set(CONTEXT_FIELDS)
    if unknown:
        raise ValueError(f"unknown log context field(s): {', '.join(sorted(unknown))}")
    merged = {**_context.get(), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(MappingProxyType(merged))
    try:
        yield
    finally:
        _context.reset(token)


@contextmanager
def job_log_context(session_factory: sessionmaker[Session], job_id: int) -> Iterator[None]:
    """Binds the job's id, its study's id and its instance's SOP Instance UID.

    Looked up in one short query so that every queue backend (local threads, Celery) gets the
    same fields from a job id alone; a lookup that fails still binds ``job_id``.
    """
    study_id: int | None = None
    instance_uid: str | None = None
    try:
        with session_factory() as session:
            row = session.execute(
                select(Job.study_fk, Instance.sop_instance_uid)
                .outerjoin(Instance, Job.instance_fk == Instance.id)
                .where(Job.id == job_id)
            ).first()
        if row is not None:
            study_id, instance_uid = row[0], row[1]
    except Exception:  # the job itself will meet (and report) the database problem
        logging.getLogger(__name__).debug("no log context for job %d", job_id, exc_info=True)
    with log_context(job_id=job_id, study_id=study_id, instance_uid=instance_uid):
        yield


class ContextFilter(logging.Filter):
    """Copies the bound identifiers onto each record (a handler filter: every logger's records
    pass through it, including libraries')."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if getattr(record, key, None) is None:
                setattr(record, key, value)
        return True


def _ids(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: getattr(record, key)
        for key in CONTEXT_FIELDS
        if getattr(record, key, None) is not None
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the bound
    identifiers, and the traceback as ``exception`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_ids(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The readable line, with ``[study=2 job=7 instance=1.2.3]`` appended when known."""

    def __init__(self) -> None:
        super().__init__(
            fmt="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%Y-%m-%dT%H:%M:%S"
        )

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        line = super().formatMessage(record)
        ids = _ids(record)
        if not ids:
            return line
        short = {"study_id": "study", "job_id": "job", "instance_uid": "instance"}
        return line + " [" + " ".join(f"{short[k]}={v}" for k, v in ids.items()) + "]"
