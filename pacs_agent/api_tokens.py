"""Bearer tokens for machine clients of DICOMweb (``web.dicomweb``): create, look up, revoke.

A token is 32 random bytes, shown once when it is made (``echo-agent token add``). The database
keeps its SHA-256 only: a copy of the database does not let anyone act as the PACS. SHA-256 and
not a slow password hash, because the token is random and long (nothing to guess from a
dictionary) and every DICOMweb request looks it up. Revocation is by name and takes effect on
the next request, in every web process: each request reads the row.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from pacs_agent.db.models import API_TOKEN_ROLES, ApiToken, utcnow
from pacs_agent.errors import EchoAgentError

TOKEN_PREFIX = "eat_"  # echo-agent token: recognisable in a leaked log or a config file
TOKEN_BYTES = 32
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{2,64}$")


class TokenError(EchoAgentError, ValueError):
    """The token cannot be made or revoked as asked (bad name or role, name in use, unknown)."""


@dataclass(frozen=True)
class TokenHolder:
    """Who a valid token says the client is: plain values, usable after the session closes."""

    token_id: int
    name: str
    role: str


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def create_token(session: Session, name: str, role: str) -> tuple[ApiToken, str]:
    """Adds a token; returns the row and the token itself, which nothing keeps."""
    if not _NAME.match(name):
        raise TokenError(
            "token name must be 2-64 characters of letters, digits, '_', '.', '@', '-'"
        )
    if role not in API_TOKEN_ROLES:
        raise TokenError(f"role must be one of {', '.join(API_TOKEN_ROLES)}, got {role!r}")
    if _active(session, name) is not None:
        raise TokenError(f"a token named {name!r} exists; revoke it first")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    token = ApiToken(name=name, role=role, token_hash=token_hash(secret))
    session.add(token)
    session.flush()
    return token, secret


def revoke_token(session: Session, name: str) -> None:
    """Revokes the token of that name; raises ``TokenError`` when there is none to revoke."""
    result = session.execute(
        update(ApiToken)
        .where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        raise TokenError(f"no token named {name!r} to revoke")


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.name, ApiToken.id)))


def find_token(session: Session, secret: str) -> TokenHolder | None:
    """The holder of a presented token, or None when it is unknown or revoked."""
    if not secret.startswith(TOKEN_PREFIX):
        return None  # not one of ours: no database round trip
    token = session.scalar(select(ApiToken).where(ApiToken.token_hash == token_hash(secret)))
    if token is None or token.revoked_at is not None:
        return None
    return TokenHolder(token.id, token.name, token.role)


def _active(session: Session, name: str) -> ApiToken | None:
    return session.scalar(
        select(ApiToken).where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
    )
