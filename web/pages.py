"""The HTML pages: worklist, study review and the admin's audit log.

Templates render DICOM-derived text through Jinja's autoescaping only (never ``|safe``); the
live parts of each page are filled by its script from the JSON API with ``textContent``.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, current_app, jsonify, render_template, request
from sqlalchemy import func, select

from pacs_agent.db.models import AuditEvent
from web import audit
from web.auth import require_role
from web.db import db
from web.studies import STATUS_LABELS, get_study, study_detail

bp = Blueprint("pages", __name__)

AUDIT_PAGE_SIZE = 200


@bp.get("/")
def worklist() -> Any:
    return render_template("worklist.html", statuses=STATUS_LABELS)


@bp.get("/studies/<int:study_id>")
def study(study_id: int) -> Any:
    session = db()
    found = get_study(session, study_id)
    if found is None:
        abort(404)
    audit.record_view(found.id, via="page")
    detail = study_detail(session, current_app.config["ECHO_AGENT_CONFIG"], found)
    return render_template("study.html", study=detail)


def _audit_rows(before_id: int | None, action: str) -> list[dict[str, Any]]:
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(AUDIT_PAGE_SIZE)
    if before_id:
        query = query.where(AuditEvent.id < before_id)
    if action:
        query = query.where(AuditEvent.action == action)
    return [
        {
            "id": e.id,
            "at": e.at.isoformat(),
            "username": e.username,
            "action": e.action,
            "target_type": e.target_type,
            "target_id": e.target_id,
            "study_id": e.study_fk,
            "remote_addr": e.remote_addr,
            "detail": e.detail,
        }
        for e in db().scalars(query)
    ]


@bp.get("/admin/audit")
@require_role("admin")
def audit_page() -> Any:
    action = request.args.get("action", "")
    before = request.args.get("before", type=int)
    actions = [a for (a,) in db().execute(
        select(AuditEvent.action).group_by(AuditEvent.action).order_by(func.min(AuditEvent.action))
    )]
    rows = _audit_rows(before, action)
    audit.record("view_audit", target_type="audit", detail={"action": action})
    return render_template("audit.html", rows=rows, actions=actions, action=action)


@bp.get("/api/audit")
@require_role("admin")
def audit_api() -> Any:
    rows = _audit_rows(request.args.get("before", type=int), request.args.get("action", ""))
    return jsonify(events=rows)
