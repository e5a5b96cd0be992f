"""The admin's view of the quarantine: instances refused because they contradict what is
recorded (their patient is not their study's, their series is another study's, or their SOP
Instance UID is stored for another patient or study).

Admins only: each entry is a file that PACS sent under a study, series or UID it does not
belong to, and resolving it (re-sending under the right study, or deleting it) is an
administrator's task. Entries carry UIDs, the sending AE, the time and the reason, never a
patient's name or ID; the file under the node's home holds the object itself.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, render_template, request
from sqlalchemy import select

from pacs_agent.db.models import QuarantinedInstance, Study
from web import audit
from web.auth import require_role
from web.db import db

bp = Blueprint("quarantine", __name__)

PAGE_SIZE = 200


def quarantine_rows(before_id: int | None = None) -> list[dict[str, Any]]:
    """Newest first, ``PAGE_SIZE`` at a time; ``study_id`` links the study it was refused from."""
    query = (
        select(QuarantinedInstance, Study.id)
        .outerjoin(Study, Study.study_instance_uid == QuarantinedInstance.study_instance_uid)
        .order_by(QuarantinedInstance.id.desc())
        .limit(PAGE_SIZE)
    )
    if before_id:
        query = query.where(QuarantinedInstance.id < before_id)
    return [
        {
            "id": q.id,
            "received_at": q.received_at.isoformat(),
            "reason": q.reason,
            "sop_instance_uid": q.sop_instance_uid,
            "sop_class_uid": q.sop_class_uid,
            "study_instance_uid": q.study_instance_uid,
            "series_instance_uid": q.series_instance_uid,
            "calling_ae": q.calling_ae,
            "study_id": study_id,
            "file_path": q.file_path,
            "file_size_bytes": q.file_size_bytes,
        }
        for q, study_id in db().execute(query)
    ]


@bp.get("/admin/quarantine")
@require_role("admin")
def quarantine_page() -> Any:
    rows = quarantine_rows(request.args.get("before", type=int))
    audit.record("view_quarantine", target_type="quarantine")
    return render_template("quarantine.html", rows=rows, page_size=PAGE_SIZE)


@bp.get("/api/quarantine")
@require_role("admin")
def quarantine_api() -> Any:
    rows = quarantine_rows(request.args.get("before", type=int))
    audit.record("view_quarantine", target_type="quarantine", detail={"via": "api"})
    return jsonify(entries=rows)
