"""One database session per request, opened on first use and closed when the request ends."""

from __future__ import annotations

from flask import current_app, g
from sqlalchemy.orm import Session, sessionmaker


def session_factory() -> sessionmaker[Session]:
    return current_app.config["ECHO_AGENT_SESSION_FACTORY"]


def db() -> Session:
    if "db_session" not in g:
        g.db_session = session_factory()()
    return g.db_session


def close_db(_exc: BaseException | None = None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.close()
