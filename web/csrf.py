"""CSRF protection: a random token per session, required on every state-changing request.

The token travels in the ``X-CSRF-Token`` header (fetch calls) or the ``csrf_token`` form field
(the login and logout forms). SameSite=Lax cookies already stop most cross-site posts; the
token also covers same-site attackers and older browsers.
"""

from __future__ import annotations

import hmac
import secrets

from flask import request, session

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
HEADER = "X-CSRF-Token"
FORM_FIELD = "csrf_token"


def csrf_token() -> str:
    """The session's token, made on first use (templates call it)."""
    token = session.get("csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def csrf_ok() -> bool:
    if request.method in SAFE_METHODS:
        return True
    expected = session.get("csrf")
    given = request.headers.get(HEADER) or request.form.get(FORM_FIELD) or ""
    return bool(expected) and hmac.compare_digest(str(expected), given)


def rotate_csrf_token() -> str:
    """A fresh token at login, so a token seen before authentication is worth nothing after."""
    session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]
