"""Flask application factory.

The review pages land with the web issue; until then the node serves its health endpoint, which
reports nothing about patients and so needs no login.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify
from sqlalchemy import Engine, text

from pacs_agent import __version__
from pacs_agent.db import current_revision, head_revision


def create_app(engine: Engine) -> Flask:
    app = Flask(__name__)
    app.config["ECHO_AGENT_ENGINE"] = engine

    @app.get("/healthz")
    def healthz() -> tuple[Any, int]:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            revision = current_revision(engine)
        except Exception as exc:  # any driver error means "not healthy", reported, not raised
            return jsonify(status="error", database=type(exc).__name__, version=__version__), 503
        schema_ok = revision == head_revision()
        body = {
            "status": "ok" if schema_ok else "error",
            "database": "ok",
            "schema": revision,
            "version": __version__,
        }
        return jsonify(body), 200 if schema_ok else 503

    return app
