"""Who may use /dicomweb: bearer tokens for machine clients, the reviewer's session otherwise,
and the audit of what they read.

``pacs`` tokens store and read, ``viewer`` tokens read; a logged-in ``admin`` stores (with the
CSRF header, like any other change), any logged-in role reads.
"""

from __future__ import annotations

from flask import Response, current_app, g, request

from pacs_agent.api_tokens import TokenHolder, find_token
from web import audit, auth
from web.db import db
from web.dicomweb.blueprint import (
    PREFIX,
    log,
)
from web.dicomweb.responses import error_response, json_response


def authenticate() -> Response | None:
    """Under /dicomweb: a bearer token, else the reviewer's session; answers 401 (with a
    ``WWW-Authenticate`` challenge) rather than the login redirect a script cannot follow."""
    if request.path != PREFIX and not request.path.startswith(PREFIX + "/"):
        return None
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, secret = header.partition(" ")
        holder = find_token(db(), secret.strip()) if scheme.lower() == "bearer" else None
        db().rollback()  # end the read: SQLite keeps one writer, and a store follows
        if holder is None:
            log.warning("DICOMweb request with an unknown or revoked token refused")
            return _unauthorized('error="invalid_token"')
        g.api_token = holder
    refused = auth.guard()
    if refused is None:
        return None
    if g.get("user") is None and g.get("api_token") is None:
        return _unauthorized()
    return error_response(403, "missing or wrong CSRF token")


def _unauthorized(detail: str = "") -> Response:
    challenge = 'Bearer realm="echo-agent dicomweb"'
    return json_response(
        {"error": "authentication required: a bearer token or a login"},
        401,
        headers={"WWW-Authenticate": f"{challenge}, {detail}" if detail else challenge},
    )


def token_holder() -> TokenHolder | None:
    return g.get("api_token")


def may_store() -> bool:
    holder = token_holder()
    if holder is not None:
        return holder.role == "pacs"
    user = g.get("user")
    return user is not None and user.role == "admin"


def who() -> str:
    holder = token_holder()
    return f"token:{holder.name}" if holder is not None else g.user.username


def record_view(study_id: int, via: str) -> None:
    """A read of a study, like the review pages' views: once a minute per reader and study."""
    holder = token_holder()
    if holder is None:
        audit.record_view(study_id, via)
        return
    recent: audit.RecentViews = current_app.config["ECHO_AGENT_RECENT_VIEWS"]
    if recent.first_in_window(-holder.token_id, study_id):  # negative: never a user's id
        audit.record("view", study_id=study_id, target_type="study", target_id=study_id,
                     detail={"via": via}, username=who(), user_id=None)  # fmt: skip
