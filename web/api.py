"""The JSON API the pages use: worklist, study detail, report versions, edits and sign-off.

Answers are data only; the browser inserts every string with ``textContent``, never as HTML.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, current_app, g, jsonify, request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from pacs_agent.config import Config
from pacs_agent.db.models import ReportVersion, Study
from pacs_agent.reports import ReportText, save_draft
from pacs_agent.states import is_signed
from web import audit
from web.auth import require_role
from web.db import db
from web.signoff import ExportRunner, SignOffError, finalise
from web.studies import (
    STATUS_LABELS,
    get_study,
    report_version_dict,
    study_detail,
    worklist,
)
from web.study_exports import export_summary

bp = Blueprint("api", __name__, url_prefix="/api")

SORT_KEYS = {
    "date": lambda s: (s["study_date"] or "", s["received_at"]),
    "name": lambda s: s["patient_name"].lower(),
    "patient_id": lambda s: s["patient_id"],
    "accession": lambda s: s["accession_number"],
    "status": lambda s: s["status"],
    "ef": lambda s: (s["ef_percent"] is None, s["ef_percent"] or 0.0),
    "received": lambda s: s["received_at"],
}
MAX_TEXT_CHARS = 20000


def _config() -> Config:
    return current_app.config["ECHO_AGENT_CONFIG"]


def _study_or_404(study_id: int) -> Study:
    study = get_study(db(), study_id)
    if study is None:
        abort(404)
    return study


@bp.get("/studies")
def list_studies() -> Any:
    items = worklist(db())
    query = (request.args.get("q") or "").strip().lower()
    status = request.args.get("status") or ""
    if query:
        items = [
            s for s in items
            if query in s["patient_name"].lower()
            or query in s["patient_name_dicom"].lower()
            or query in s["patient_id"].lower()
            or query in s["accession_number"].lower()
        ]
    if status:
        if status not in STATUS_LABELS:
            return jsonify(error=f"unknown status {status!r}"), 400
        items = [s for s in items if s["status"] == status]
    sort = request.args.get("sort") or "received"
    if sort not in SORT_KEYS:
        return jsonify(error=f"unknown sort key {sort!r}"), 400
    items.sort(key=SORT_KEYS[sort], reverse=(request.args.get("order") or "desc") == "desc")
    return jsonify(studies=items, count=len(items))


@bp.get("/studies/<int:study_id>")
def get_study_detail(study_id: int) -> Any:
    study = _study_or_404(study_id)
    audit.record_view(study.id, via="api")
    detail = study_detail(db(), _config(), study)
    detail["export"]["running"] = current_app.config["ECHO_AGENT_EXPORTS"].running(study.id)
    return jsonify(detail)


@bp.get("/studies/<int:study_id>/export")
def get_export(study_id: int) -> Any:
    study = _study_or_404(study_id)
    summary = export_summary(db(), _config(), study.id)
    summary["running"] = current_app.config["ECHO_AGENT_EXPORTS"].running(study.id)
    summary["study_status"] = study.status
    return jsonify(summary)


@bp.get("/studies/<int:study_id>/report/versions")
def list_versions(study_id: int) -> Any:
    study = _study_or_404(study_id)
    return jsonify(versions=[report_version_dict(db(), v) for v in study.report_versions])


@bp.get("/studies/<int:study_id>/report/versions/<int:number>")
def get_version(study_id: int, number: int) -> Any:
    version = db().scalar(
        select(ReportVersion).where(
            ReportVersion.study_fk == study_id, ReportVersion.version == number
        )
    )
    if version is None:
        abort(404)
    audit.record_view(study_id, via="report_version")
    return jsonify(report_version_dict(db(), version))


def _edit_body() -> tuple[dict[str, Any], Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return {}, (jsonify(error="expected a JSON object"), 400)
    for key in ("structured_text", "narrative_text", "amendment_reason"):
        value = body.get(key, "")
        if not isinstance(value, str) or len(value) > MAX_TEXT_CHARS:
            return {}, (jsonify(error=f"{key} must be text of at most {MAX_TEXT_CHARS} chars"), 400)
    if not isinstance(body.get("base_version"), int):
        return {}, (jsonify(error="base_version (the version you edited) is required"), 400)
    return body, None


def _edit_request(study_id: int) -> tuple[Study, dict[str, Any], Any]:
    """The study (404 if unknown), the checked body of an edit or sign-off, and the answer
    that refuses it (bad body: 400; edited an older version: 409), else None."""
    study = _study_or_404(study_id)
    body, error = _edit_body()
    if error:
        return study, body, error
    return study, body, _check_base(study, body)


def _check_base(study: Study, body: dict[str, Any]) -> Any:
    versions = list(study.report_versions)
    latest = versions[-1].version if versions else 0
    if body["base_version"] != latest:
        return jsonify(
            error=f"the report changed meanwhile (now version {latest}); reload and edit again"
        ), 409
    return None


@bp.post("/studies/<int:study_id>/report")
@require_role("cardiologist")
def save_report(study_id: int) -> Any:
    """An edit: a new draft version while unsigned; after sign-off, an amendment (signed)."""
    study, body, refusal = _edit_request(study_id)
    if refusal is not None:
        return refusal
    versions = list(study.report_versions)
    previous = versions[-1] if versions else None
    if previous is not None and is_signed(previous.status):
        return _sign(study, body, amending=True)
    text = ReportText(body.get("structured_text", ""), body.get("narrative_text", ""))
    version = save_draft(db(), study.id, g.user.id, text)
    try:
        db().commit()
    except IntegrityError:  # another edit took this version number a moment ago
        db().rollback()
        return jsonify(error="the report changed meanwhile; reload and edit again"), 409
    audit.record("edit", study_id=study.id, target_type="report_version", target_id=version.id,
                 detail={"version": version.version})
    return jsonify(report_version_dict(db(), version)), 201


@bp.post("/studies/<int:study_id>/report/sign")
@require_role("cardiologist")
def sign_report(study_id: int) -> Any:
    study, body, refusal = _edit_request(study_id)
    if refusal is not None:
        return refusal
    versions = list(study.report_versions)
    if versions and is_signed(versions[-1].status):
        return jsonify(error="already signed; an edit now makes an amendment (give a reason)"), 409
    return _sign(study, body, amending=False)


def _sign(study: Study, body: dict[str, Any], *, amending: bool) -> Any:
    session = db()
    try:
        outputs = finalise(
            session,
            _config(),
            study,
            g.user,
            structured_text=body.get("structured_text", ""),
            narrative_text=body.get("narrative_text", ""),
            amendment_reason=body.get("amendment_reason", ""),
        )
        session.commit()
    except SignOffError as exc:
        session.rollback()
        audit.record("sign_failed", study_id=study.id, detail={"error": str(exc)})
        return jsonify(error=str(exc)), 409
    except IntegrityError:  # signed by someone else a moment ago
        session.rollback()
        return jsonify(error="the report changed meanwhile; reload before signing"), 409
    action = "amend" if amending else "sign"
    audit.record(action, study_id=study.id, target_type="report_version",
                 target_id=outputs.version_id, detail={"version": outputs.version})
    runner: ExportRunner = current_app.config["ECHO_AGENT_EXPORTS"]
    started = runner.start(study.id, outputs.dicom_artifact_ids, g.user.id, g.user.username,
                           fhir_artifact_id=outputs.fhir_artifact_id,
                           hl7_messages=outputs.hl7_messages)
    if started is not None:
        audit.record("export", study_id=study.id, target_type="artifact",
                     target_id=outputs.sr_artifact_id,
                     detail={"started": True, "destinations": [d.name for d in
                                                               _config().destinations],
                             "ehr": _config().ehr.fhir_base_url,
                             "hl7": sorted(outputs.hl7_messages)})
    version = session.get(ReportVersion, outputs.version_id)
    assert version is not None
    return jsonify(
        report=report_version_dict(session, version),
        export_started=started is not None,
    ), 201
