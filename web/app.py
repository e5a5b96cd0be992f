"""Flask application factory: the review pages, their JSON API, and the public health check.

``create_app(engine)`` keeps working as before (defaults for everything else); the node passes
its configuration so that the secret key, the outputs and the export destinations are its own.
Every route needs a login except ``/healthz``, ``/readyz`` and ``/metrics`` (``web.health``:
they report nothing about patients; ``/metrics`` has its own token or loopback rule), the
login page and the static assets.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from flask import Flask, jsonify, render_template
from sqlalchemy import Engine

from llm.chat_service import ChatBackend, measurements_backend
from pacs_agent import __version__
from pacs_agent.config import Config
from pacs_agent.db import make_session_factory
from pacs_agent.metrics import node_registry
from pacs_agent.readiness import ModelStatus
from web import api, audit, auth, chat, fhir_api, health, media, openapi, pages, quarantine
from web.csrf import csrf_token
from web.db import close_db
from web.dicomweb import init_app as init_dicomweb
from web.ratelimit import LoginRateLimiter
from web.secret import load_or_create_secret_key
from web.security import SessionInterface, add_security_headers
from web.signoff import ExportRunner

SESSION_COOKIE_NAME = "echo_agent_session"


def create_app(
    engine: Engine,
    config: Config | None = None,
    *,
    chat_backend: ChatBackend | None = None,
    secret_key: bytes | None = None,
    model_status: ModelStatus | None = None,
    submit_job: Callable[[int], None] | None = None,
) -> Flask:
    """``config`` None: the defaults (home ``./var``) with a random in-memory session key, so
    a caller that passes no configuration writes nothing to disk (sessions then end with the
    process); with a configuration, the key stored under its home (created on first start).
    ``chat_backend`` None: the measurements-only fallback. ``model_status``: the models this
    process loads (the node's; None in a web-only process), for the banner, ``/readyz`` and
    ``/metrics``. ``submit_job``: hands the delivery jobs a sign-off queues to the node's job
    queue; None (the app on its own) runs them in the app's process (``ExportRunner``)."""
    if secret_key is None:
        secret_key = (
            secrets.token_bytes(32) if config is None
            else load_or_create_secret_key(config.home_path)
        )
    config = config or Config()
    app = Flask(__name__)
    session_factory = make_session_factory(engine)
    app.config.update(
        ECHO_AGENT_ENGINE=engine,
        ECHO_AGENT_CONFIG=config,
        ECHO_AGENT_SESSION_FACTORY=session_factory,
        ECHO_AGENT_CHAT_BACKEND=chat_backend or measurements_backend,
        ECHO_AGENT_LOGIN_LIMITER=LoginRateLimiter(),
        ECHO_AGENT_MEDIA_CACHE=media.MediaCache(),
        ECHO_AGENT_RECENT_VIEWS=audit.RecentViews(),
        ECHO_AGENT_EXPORTS=ExportRunner(session_factory, config, submit_job),
        ECHO_AGENT_MODEL_STATUS=model_status,
        ECHO_AGENT_METRICS=node_registry(session_factory, config.home_path, model_status),
        SECRET_KEY=secret_key,
        SESSION_COOKIE_NAME=SESSION_COOKIE_NAME,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=False,  # True per request under TLS: see SessionInterface
        MAX_CONTENT_LENGTH=1024 * 1024,
    )
    app.session_interface = SessionInterface()
    app.jinja_env.autoescape = True
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.jinja_env.globals["app_version"] = __version__
    app.before_request(fhir_api.require_login)  # OperationOutcome, not a redirect
    init_dicomweb(app)  # /dicomweb: its bearer-token check must run before the guard
    app.before_request(auth.guard)
    app.after_request(add_security_headers)
    app.teardown_appcontext(close_db)
    for blueprint in (auth.bp, pages.bp, api.bp, media.bp, chat.bp, openapi.bp, health.bp,
                      fhir_api.bp, quarantine.bp):
        app.register_blueprint(blueprint)

    @app.errorhandler(404)
    def not_found(_error: Exception) -> Any:
        if auth.is_api_request():
            return jsonify(error="not found"), 404
        return render_template("error.html", title="Not found", message="No such page."), 404

    return app
