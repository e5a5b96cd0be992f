"""Reviewer accounts: creation with a salted password hash (werkzeug's scrypt)."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.security import generate_password_hash

from pacs_agent.db.models import USER_ROLES, User
from pacs_agent.errors import EchoAgentError

MIN_PASSWORD_LENGTH = 10
_USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{2,64}$")


class UserError(EchoAgentError, ValueError):
    """The account cannot be created as asked (bad name, weak password, duplicate, bad role)."""


def add_user(
    session: Session, username: str, password: str, role: str, display_name: str = ""
) -> User:
    if not _USERNAME.match(username):
        raise UserError("username must be 2-64 characters of letters, digits, '_', '.', '@', '-'")
    if role not in USER_ROLES:
        raise UserError(f"role must be one of {', '.join(USER_ROLES)}, got {role!r}")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
    if session.scalar(select(User).where(User.username == username)) is not None:
        raise UserError(f"user {username!r} already exists")
    user = User(
        username=username,
        display_name=display_name or username,
        password_hash=generate_password_hash(password),
        role=role,
    )
    session.add(user)
    session.flush()
    return user
