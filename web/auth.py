"""Accounts in the browser: login, logout, the session check in front of every route, roles.

Pages without a session redirect to the login page; API calls get 401 JSON (a script cannot
follow a redirect to a form). The role is read from the database on each request, never from
the cookie, so a changed role or a disabled account takes effect at once. Sessions expire after
``IDLE_TIMEOUT_S`` without a request and ``ABSOLUTE_TIMEOUT_S`` after login.

The cookie is Flask's signed session; what ends a session early lives in the database, so that
every web process, and the same one after a restart, agrees: logout records the session id (its
hash) as revoked for the rest of its lifetime, and "log out everywhere" bumps the account's
``session_generation``, which every cookie must match.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from functools import cache, wraps
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from sqlalchemy import delete, select, update
from werkzeug.security import check_password_hash, generate_password_hash

from pacs_agent.db.models import RevokedSession, User, utcnow
from web import audit
from web.csrf import csrf_ok, rotate_csrf_token
from web.db import db
from web.ratelimit import LoginRateLimiter
from web.security import client_address

bp = Blueprint("auth", __name__)

IDLE_TIMEOUT_S = 30 * 60
ABSOLUTE_TIMEOUT_S = 12 * 3600
BACKGROUND_HEADER = "X-Echo-Background"
PUBLIC_ENDPOINTS = frozenset(
    {"health.healthz", "health.readyz", "health.metrics", "static", "auth.login"}
)

F = TypeVar("F", bound=Callable[..., Any])


def now_s() -> float:
    """Wall-clock seconds (a function, so a test can move the session clock alone)."""
    return time.time()


@cache
def _dummy_hash() -> str:
    """Compared against when the user does not exist, so timing does not reveal accounts."""
    return generate_password_hash(secrets.token_hex(16))


def is_api_request() -> bool:
    return request.path.startswith("/api/")


def unauthorized() -> Any:
    if is_api_request():
        return jsonify(error="authentication required"), 401
    target = request.full_path if request.query_string else request.path
    return redirect(url_for("auth.login", next=target))


def forbidden(message: str) -> Any:
    if is_api_request():
        return jsonify(error=message), 403
    return render_template("error.html", title="Not allowed", message=message), 403


def guard() -> Any:
    """Runs before every request: session check, then the CSRF check on state changes.

    Under /dicomweb a machine client's bearer token, checked before this guard and only there
    (``web.dicomweb.authenticate`` sets ``g.api_token``), stands in for a session; it needs no
    CSRF token, because a browser never sends an Authorization header of its own accord."""
    g.user = _session_user()
    by_token = g.get("api_token") is not None
    if request.endpoint not in PUBLIC_ENDPOINTS and g.user is None and not by_token:
        return unauthorized()
    if not by_token and not csrf_ok():
        message = "missing or wrong CSRF token (reload the page and try again)"
        if is_api_request():
            return jsonify(error=message), 403
        return render_template("error.html", title="Request refused", message=message), 403
    return None


def _sid_hash(sid: str) -> str:
    """What the revocation table keeps: the session id is a bearer secret, its hash is not."""
    return hashlib.sha256(sid.encode()).hexdigest()


def _name_key(username: str) -> str:
    """The login limiter's key for a typed user name, keyed with the node's secret (people type
    passwords into the user name field; a plain hash of one could be guessed offline)."""
    return hmac.new(current_app.secret_key, username.lower().encode(), hashlib.sha256).hexdigest()


def _session_user() -> User | None:
    uid, sid = session.get("uid"), session.get("sid")
    if uid is None or not sid:
        return None
    now = now_s()
    issued, seen = float(session.get("iat", 0)), float(session.get("seen", 0))
    if now - issued > ABSOLUTE_TIMEOUT_S or now - seen > IDLE_TIMEOUT_S:
        session.clear()
        return None
    user = db().get(User, int(uid))
    if (
        user is None
        or not user.active
        or session.get("gen") != user.session_generation
        or db().get(RevokedSession, _sid_hash(str(sid))) is not None
    ):
        session.clear()
        return None
    if request.headers.get(BACKGROUND_HEADER) != "1":
        session["seen"] = now  # a page's own polling is not the user being active
    return user


def require_role(*roles: str) -> Callable[[F], F]:
    def decorate(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            user = g.get("user")
            if user is None:
                return unauthorized()
            if user.role not in roles:
                return forbidden(f"this needs the role {' or '.join(roles)}")
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def _safe_next(target: str | None) -> str:
    """Only a local path: an open redirect after login would help phishing."""
    if not target:
        return url_for("pages.worklist")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return url_for("pages.worklist")
    return target


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if request.method == "GET":
        if g.get("user") is not None:
            return redirect(_safe_next(request.args.get("next")))
        return render_template("login.html", next=request.args.get("next", ""), error="")
    username = (request.form.get("username") or "").strip()[:64]
    password = request.form.get("password") or ""
    address, name_key = client_address(), _name_key(username)
    limiter: LoginRateLimiter = current_app.config["ECHO_AGENT_LOGIN_LIMITER"]
    wait_s = limiter.retry_after_s(db(), name_key, address)
    if wait_s:
        db().rollback()  # end the read before the audit writes on its own connection
        audit.record("login_blocked", username=username, user_id=None, detail={})
        message = f"Too many failed attempts. Try again in {int(wait_s // 60) + 1} minutes."
        page = render_template("login.html", next=request.form.get("next", ""), error=message)
        return page, 429, {"Retry-After": str(int(wait_s) + 1)}
    user = db().scalar(select(User).where(User.username == username))
    ok = check_password_hash(user.password_hash if user else _dummy_hash(), password)
    if user is None or not ok or not user.active:
        limiter.failed(db(), name_key, address)
        db().commit()  # before the audit: SQLite allows one writer at a time
        audit.record("login_failed", username=username, user_id=None, detail={})
        return render_template(
            "login.html", next=request.form.get("next", ""), error="Wrong username or password."
        ), 401
    limiter.succeeded(db(), name_key, address)
    session.clear()  # a new session id at login: no fixation
    now = now_s()
    session.update(
        uid=user.id, sid=secrets.token_urlsafe(24), iat=now, seen=now, gen=user.session_generation
    )
    session.permanent = False
    rotate_csrf_token()
    user.last_login_at = utcnow()
    db().commit()
    g.user = user
    audit.record("login", target_type="user", target_id=user.id)
    return redirect(_safe_next(request.form.get("next")))


@bp.post("/logout")
def logout() -> Any:
    """Ends this session, or with ``everywhere=1`` every session of the account (another
    workstation left logged in, a cookie that may have leaked)."""
    user: User | None = g.get("user")
    sid = session.get("sid")
    everywhere = request.form.get("everywhere") == "1"
    if user is not None and sid:
        if everywhere:
            db().execute(
                update(User)
                .where(User.id == user.id)
                .values(session_generation=User.session_generation + 1)
            )
        else:
            _revoke(str(sid), float(session.get("iat", 0)))
        db().commit()
        audit.record(
            "logout",
            target_type="user",
            target_id=user.id,
            detail={"everywhere": True} if everywhere else {},
        )
    session.clear()
    return redirect(url_for("auth.login"))


def _revoke(sid: str, issued_s: float) -> None:
    """Keeps the revocation until the session would have expired anyway, and drops the
    revocations whose sessions have."""
    now = dt.datetime.fromtimestamp(now_s(), dt.UTC)
    expires = dt.datetime.fromtimestamp(issued_s + ABSOLUTE_TIMEOUT_S, dt.UTC)
    db().execute(delete(RevokedSession).where(RevokedSession.expires_at < now))
    key = _sid_hash(sid)
    if db().get(RevokedSession, key) is None:
        db().add(RevokedSession(sid_hash=key, expires_at=max(expires, now)))
