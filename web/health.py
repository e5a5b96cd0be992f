"""Health, readiness, metrics and the model-loading banner's status.

- ``/healthz``: the process serves requests (liveness). No login, no details.
- ``/readyz``: the database answers with the newest schema, the store is writable and has
  more free disk than ``dicom.min_free_disk_mb`` (below it every C-STORE is refused), and the
  models this process runs are loaded; 503 with a short reason otherwise. No login.
- ``/metrics``: Prometheus text format. Scrapers have no session, so it needs none; instead,
  with ``web.metrics_token`` set it asks for ``Authorization: Bearer <token>``, and without one
  it answers loopback clients only (a Prometheus on the same machine, or a reverse proxy that
  adds the token). The numbers are counts and timings, never patient data.
- ``/api/status/models``: the banner's state ("Loading the segmentation and EF models...",
  "Ready"); a logged-in page polls it, so it sits behind the login like the rest of the API.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from pacs_agent.config import Config
from pacs_agent.metrics import CONTENT_TYPE, exposition
from pacs_agent.readiness import ModelStatus, check_ready
from web.security import client_address

bp = Blueprint("health", __name__)

PUBLIC = frozenset({"health.healthz", "health.readyz", "health.metrics"})


@bp.get("/healthz")
def healthz() -> Any:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> Any:
    config: Config = current_app.config["ECHO_AGENT_CONFIG"]
    result = check_ready(
        current_app.config["ECHO_AGENT_ENGINE"],
        config.store_path,
        current_app.config.get("ECHO_AGENT_MODEL_STATUS"),
        config.dicom.min_free_disk_mb,
    )
    if result.ready:
        return jsonify(status="ready", checks=result.checks)
    return jsonify(status="not ready", reason=result.reason, checks=result.checks), 503


@bp.get("/metrics")
def metrics() -> Any:
    config: Config = current_app.config["ECHO_AGENT_CONFIG"]
    refusal = _metrics_refusal(config.web.metrics_token)
    if refusal is not None:
        return refusal
    body = exposition(current_app.config["ECHO_AGENT_METRICS"])
    return Response(body, content_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})


def _metrics_refusal(token: str) -> Any | None:
    if token:
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {token}"
        if hmac.compare_digest(given.encode(), expected.encode()):
            return None
        return Response(
            "metrics need the bearer token (web.metrics_token)\n",
            status=401,
            content_type="text/plain; charset=utf-8",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    # behind a trusted reverse proxy on loopback the forwarded client decides, or every
    # proxied request would look local
    if _is_loopback(client_address()):
        return None
    return Response(
        "metrics are served to loopback clients only; set web.metrics_token to scrape from "
        "another machine\n",
        status=403,
        content_type="text/plain; charset=utf-8",
    )


def _is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


@bp.get("/api/status/models")
def model_status() -> Any:
    status: ModelStatus | None = current_app.config.get("ECHO_AGENT_MODEL_STATUS")
    if status is None:  # a web-only process: the models load in the worker processes
        return jsonify(state="none", message="", models={})
    return jsonify(status.snapshot())
