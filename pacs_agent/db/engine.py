"""Engines and sessions for SQLite (the embedded default) and PostgreSQL (shared deployments)."""

from __future__ import annotations

import functools
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger("echo_agent.db")

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class PoolSettings:
    """PostgreSQL connection pool per process (``[database]`` pool_size, max_overflow,
    pool_recycle_s); SQLite opens a connection per thread and ignores them."""

    pool_size: int = 5
    max_overflow: int = 10
    pool_recycle_s: int = 1800


def make_engine(url: str, echo_sql: bool = False, pool: PoolSettings | None = None) -> Engine:
    """Creates an engine; SQLite gets WAL, foreign keys and a busy timeout.

    WAL lets the web app read while the DICOM listener and workers write; without a busy
    timeout concurrent writers fail at once with "database is locked" instead of waiting.
    """
    parsed = make_url(url)
    # hide_parameters: SQL errors and echo must not carry patient names into the logs
    kwargs: dict[str, Any] = {"echo": echo_sql, "future": True, "hide_parameters": True}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    else:
        # pre_ping replaces connections a database restart or a network blip has closed
        pool = pool or PoolSettings()
        kwargs.update(
            pool_pre_ping=True,
            pool_size=pool.pool_size,
            max_overflow=pool.max_overflow,
            pool_recycle=pool.pool_recycle_s,
        )
    engine = create_engine(parsed, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
    finally:
        cursor.close()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


# Transient-disconnect retries: a few quick tries cover a database restart or a killed
# backend; a database that stays away is the caller's problem (its loop logs and goes on).
RETRY_ATTEMPTS = 4
RETRY_INITIAL_S = 0.2
RETRY_MAX_S = 2.0


def is_transient_disconnect(exc: BaseException) -> bool:
    """True for a DBAPI error that SQLAlchemy recognised as a lost connection.

    The pool has already discarded that connection, so a second try gets a fresh one; any other
    error (a constraint, bad SQL, a lock timeout) is not retried.
    """
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def retry_on_disconnect(what: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorator: re-runs the whole function when the database connection was lost.

    Only for functions that are safe to repeat as a unit: each opens its own session(s), and
    their UPDATEs name the state they leave, so a repeat after a commit whose answer was lost
    changes nothing a second time. Tries ``RETRY_ATTEMPTS`` times with doubling back-off, logs
    each retry, then lets the last error through.
    """

    def decorate(func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            delay_s = RETRY_INITIAL_S
            for attempt in range(1, RETRY_ATTEMPTS + 1):
                try:
                    return func(*args, **kwargs)
                except DBAPIError as exc:
                    if attempt == RETRY_ATTEMPTS or not is_transient_disconnect(exc):
                        raise
                    log.warning(
                        "database connection lost during %s (try %d of %d: %s); retrying in "
                        "%.1f s",
                        what,
                        attempt,
                        RETRY_ATTEMPTS,
                        type(exc.orig).__name__,
                        delay_s,
                    )
                    time.sleep(delay_s)
                    delay_s = min(RETRY_MAX_S, delay_s * 2)
            raise AssertionError("unreachable")  # pragma: no cover

        return wrapper

    return decorate
