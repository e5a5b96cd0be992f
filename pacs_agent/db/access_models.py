"""The tables of who may do what and who did it: reviewer accounts, revoked web sessions,
failed logins, the audit trail and the DICOMweb API tokens. They belong with the rest of the
schema (``pacs_agent.db.models`` imports them, so ``Base.metadata`` and Alembic see every
table) but share no relationship with the DICOM hierarchy.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from pacs_agent.db.base import Base, one_of, utcnow

USER_ROLES = ("admin", "cardiologist", "sonographer")
API_TOKEN_ROLES = ("pacs", "viewer")


class User(Base):
    """A reviewer account; ``password_hash`` is a salted scrypt/pbkdf2 hash, never the password."""

    __tablename__ = "users"
    __table_args__ = (one_of("role", USER_ROLES),)

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(128), default="")
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # every web session carries the generation it was issued under; bumping it ends all of the
    # account's sessions at once, in every web process ("log out everywhere")
    session_generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class RevokedSession(Base):
    """A web session ended by logout before it expired, kept in the database so that every web
    process, and the same process after a restart, refuses its cookie. ``sid_hash`` is the
    SHA-256 of the session id (the id itself is a bearer secret); a row can go once
    ``expires_at`` has passed, as the cookie is refused for its age from then on."""

    __tablename__ = "revoked_sessions"

    sid_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)


class LoginFailure(Base):
    """One failed login, counted against two budgets shared by every web process: per client
    address across all user names (password spraying) and per (user name, address) (guessing
    one account). ``username_hash`` is keyed with the node's secret, because people type
    passwords into the user name field."""

    __tablename__ = "login_failures"
    __table_args__ = (Index("ix_login_failures_address_at", "address", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
    address: Mapped[str] = mapped_column(String(64))
    username_hash: Mapped[str] = mapped_column(String(64))


class AuditEvent(Base):
    """Who viewed, edited, signed, exported or asked what, and when.

    ``username`` is copied from the user so that the trail survives a deleted account.
    """

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    user_fk: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    username: Mapped[str] = mapped_column(String(64), default="")
    action: Mapped[str] = mapped_column(String(32), index=True)
    target_type: Mapped[str] = mapped_column(String(32), default="")
    target_id: Mapped[str] = mapped_column(String(128), default="")
    study_fk: Mapped[int | None] = mapped_column(ForeignKey("studies.id", ondelete="SET NULL"))
    remote_addr: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ApiToken(Base):
    """A machine client's bearer token for DICOMweb (``web.dicomweb``): ``pacs`` may store and
    read, ``viewer`` may only read. Only the SHA-256 of the token is kept (it is shown once, by
    ``echo-agent token add``); a revoked token keeps its row, with ``revoked_at``, for the
    audit trail. A name is held by at most one token that is not revoked
    (``pacs_agent.api_tokens``).
    """

    __tablename__ = "api_tokens"
    __table_args__ = (one_of("role", API_TOKEN_ROLES),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
