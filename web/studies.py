"""What the pages and the API say about studies, read from the database as plain dicts.

One place builds these so the worklist, the study page, the chat context and the tests agree
on every value. Numbers are the stored measurements, unrounded here; the browser rounds for
display the way ``reporting.values`` does (one decimal).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from inference.types import Measurements
from llm.typed_text import grounding_label, shown_reasons, typed_by_person
from pacs_agent import reports
from pacs_agent.config import Config
from pacs_agent.db.models import (
    Analysis,
    Instance,
    Job,
    Patient,
    ReportVersion,
    Series,
    Study,
    User,
)
from pacs_agent.jobs import DELIVERY_KINDS
from pacs_agent.outputs import algorithms_for
from reporting.types import DEMO_LABEL, Algorithms, person_display_name
from reporting.values import (
    KEY_LVEF_DISKS,
    KEY_LVEF_REGRESSION,
    MANUAL_MEASUREMENT,
    NOT_MEASURABLE,
    QUALITY_LABEL,
    loop_quality,
    reported_values,
    shown_flags,
    withheld_by_key,
    withheld_values,
)
from web.study_exports import export_summary

log = logging.getLogger("echo_agent.web")

STATUS_LABELS = {
    "received": "received",
    "analysing": "analysing",
    "drafted": "drafted",
    "signed": "signed",
    "failed": "failed",
    "not_eligible": "not eligible",
}
WORKLIST_LIMIT = 1000


@dataclass(frozen=True)
class _ModelsInfo:
    """What ``algorithms_for`` reads of the models (preset, demo), from the stored analysis."""

    preset: str
    demo: bool


def analysis_algorithms(analysis: Analysis) -> Algorithms:
    return algorithms_for(cast(Any, _ModelsInfo(analysis.model_preset, analysis.demo_models)))


def display_status(study: Study, jobs: list[Job], has_analysis: bool) -> tuple[str, str]:
    """(status, reason) as the worklist names them."""
    if study.status == "not_eligible":
        return "not_eligible", study.status_reason
    if study.status in ("signed", "drafted"):
        return study.status, ""
    if any(j.state in ("queued", "running") for j in jobs) or study.status == "analysing":
        return "analysing", ""
    failed = [j for j in jobs if j.state == "failed"]
    if study.status == "failed" or (failed and not has_analysis):
        reason = study.status_reason or (failed[-1].last_error if failed else "")
        return "failed", reason
    if has_analysis:
        return "drafted", ""
    return "received", study.status_reason


def _latest_analysis(session: Session, study_id: int) -> Analysis | None:
    return reports.latest_analysis(session, study_id)


def _flags(analysis: Analysis | None) -> list[dict[str, str]]:
    """The stored flags as every surface shows them (``reporting.values.shown_flags``)."""
    if analysis is None:
        return []
    return [f.to_json() for f in shown_flags(Measurements.from_json(analysis.measurements))]


def worklist(session: Session) -> list[dict[str, Any]]:
    studies = session.scalars(
        select(Study)
        .options(selectinload(Study.patient), selectinload(Study.jobs))
        .order_by(Study.last_received_at.desc())
        .limit(WORKLIST_LIMIT)
    ).all()
    analyses: dict[int, Analysis] = {}
    rows = session.execute(
        select(Job.study_fk, Analysis).join(Analysis, Analysis.job_fk == Job.id)
    ).all()
    for study_fk, analysis in rows:
        known = analyses.get(study_fk)
        if known is None or (analysis.created_at, analysis.id) > (known.created_at, known.id):
            analyses[study_fk] = analysis
    latest_reports: dict[int, str] = {}
    for study_fk, status in session.execute(
        select(ReportVersion.study_fk, ReportVersion.status).order_by(ReportVersion.version)
    ).all():
        latest_reports[study_fk] = status
    items = []
    for study in studies:
        analysis = analyses.get(study.id)
        status, reason = display_status(study, list(study.jobs), analysis is not None)
        ef = ef_summary(analysis)
        items.append(
            {
                **_study_header(study),
                "status": status,
                "status_label": STATUS_LABELS[status],
                "status_reason": reason,
                "ef_percent": ef["ef_percent"],
                "ef_disks_percent": ef["ef_disks_percent"],
                "ef_text": ef["text"],
                "ef_withheld": ef["withheld"],
                "ef_reason": ef["reason"],
                "quality_score": ef["quality_score"],
                "quality_text": ef["quality_text"],
                "flags": _flags(analysis),
                "demo_models": bool(analysis and analysis.demo_models),
                "report_status": latest_reports.get(study.id),
                "received_at": study.last_received_at.isoformat(),
            }
        )
    return items


def ef_summary(analysis: Analysis | None) -> dict[str, Any]:
    """The EF as the worklist shows it: the number when the node stands behind it, else "not
    measurable" with the reason (never the number), and the loop's quality score. An EF the
    validity gate withheld is null here even if a stored column still held one."""
    empty = {"ef_percent": None, "ef_disks_percent": None, "text": "", "withheld": False,
             "reason": "", "quality_score": None, "quality_text": ""}  # fmt: skip
    if analysis is None:
        return empty
    m = Measurements.from_json(analysis.measurements)
    withheld = withheld_by_key(m)
    regression = None if KEY_LVEF_REGRESSION in withheld else m.ef_percent
    disks = None if KEY_LVEF_DISKS in withheld else m.ef_disks_percent
    shown = regression if regression is not None else disks
    ef_withheld = shown is None and (KEY_LVEF_REGRESSION in withheld or KEY_LVEF_DISKS in withheld)
    reason = ""
    if ef_withheld:
        withheld_ef = withheld.get(KEY_LVEF_REGRESSION) or withheld[KEY_LVEF_DISKS]
        reason = withheld_ef.detail
    quality = loop_quality(m)
    return {
        "ef_percent": regression,
        "ef_disks_percent": disks,
        "text": NOT_MEASURABLE if ef_withheld else ("" if shown is None else f"{shown:.1f} %"),
        "withheld": ef_withheld,
        "reason": reason,
        "quality_score": None if quality is None else quality.score,
        "quality_text": "" if quality is None else f"{QUALITY_LABEL} {quality.text}",
    }


def _study_header(study: Study) -> dict[str, Any]:
    patient: Patient = study.patient
    return {
        "id": study.id,
        "study_instance_uid": study.study_instance_uid,
        "patient_name": person_display_name(patient.name) or patient.name,
        "patient_name_dicom": patient.name,
        "patient_id": patient.patient_id,
        "patient_sex": patient.sex,
        "patient_birth_date": patient.birth_date.isoformat() if patient.birth_date else None,
        "accession_number": study.accession_number,
        "study_date": study.study_date.isoformat() if study.study_date else None,
        "description": study.description,
    }


def get_study(session: Session, study_id: int) -> Study | None:
    return session.scalar(
        select(Study)
        .options(selectinload(Study.patient), selectinload(Study.jobs))
        .where(Study.id == study_id)
    )


def measurement_table(analysis: Analysis) -> list[dict[str, Any]]:
    measurements = Measurements.from_json(analysis.measurements)
    return [
        {
            "key": v.key,
            "label": v.label,
            "value": v.value,
            "unit": v.unit_text,
            "text": v.text,
            "method": v.method_text,
            "algorithm": v.algorithm.display_name if v.algorithm else "",
            "n_beats": v.n_beats,
            "source_frames": list(v.source_frames),
        }
        for v in reported_values(measurements, analysis_algorithms(analysis))
    ]


def withheld_table(analysis: Analysis) -> list[dict[str, Any]]:
    """The values the node does not stand behind, each with its reason: the study page shows
    them as "not measurable", never a number."""
    return [
        {
            "key": w.key,
            "label": w.label,
            "text": w.text,
            "reason": w.reason,
            "detail": w.detail,
            "manual": MANUAL_MEASUREMENT,
        }
        for w in withheld_values(Measurements.from_json(analysis.measurements))
    ]


def loop_detail(session: Session, analysis: Analysis) -> dict[str, Any]:
    m = analysis.measurements
    instance = session.get(Instance, analysis.instance_fk)
    series = session.get(Series, instance.series_fk) if instance else None
    summary = ef_summary(analysis)
    ef, disks = summary["ef_percent"], summary["ef_disks_percent"]
    frame_time = m.get("frame_time_ms")
    return {
        "analysis_id": analysis.id,
        "job_id": analysis.job_fk,
        "series_description": series.description if series else "",
        "sop_instance_uid": instance.sop_instance_uid if instance else "",
        "n_frames": m.get("n_frames"),
        "frame_time_ms": frame_time,
        "frame_time_assumed": frame_time is None,
        "model_preset": analysis.model_preset,
        "demo_models": analysis.demo_models,
        "models_description": (m.get("models") or {}).get("description", ""),
        # the stored document, its flags as every surface shows them (none quoting a withheld
        # value's number; see ``reporting.values.shown_flags``)
        "measurements": {**m, "flags": _flags(analysis)},
        "table": measurement_table(analysis),
        "withheld": withheld_table(analysis),
        "ef": summary,
        "flags": _flags(analysis),
        "comparison": {
            "ef_regression_percent": ef,
            "ef_disks_percent": disks,
            "difference_points": None if ef is None or disks is None else ef - disks,
        },
        "frames_url": f"/api/analyses/{analysis.id}/frames/",
        "contours_url": f"/api/analyses/{analysis.id}/contours",
    }


def not_analysed(session: Session, study: Study) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(Series).where(Series.study_fk == study.id).order_by(Series.series_number)
    ).all()
    out = [
        {
            "series_instance_uid": s.series_instance_uid,
            "series_number": s.series_number,
            "description": s.description,
            "modality": s.modality,
            "reason": s.not_analysed_reason or "not eligible",
        }
        for s in rows
        if s.eligibility == "not_eligible"
    ]
    for job in study.jobs:
        if job.state == "failed" and job.kind not in DELIVERY_KINDS:  # a send is no analysis
            out.append(
                {
                    "series_instance_uid": "",
                    "series_number": None,
                    "description": f"job {job.id}",
                    "modality": "",
                    "reason": f"analysis failed: {job.last_error}",
                }
            )
    return out


def report_version_dict(session: Session, version: ReportVersion) -> dict[str, Any]:
    def name(user_id: int | None) -> str:
        user = session.get(User, user_id) if user_id else None
        return (user.display_name or user.username) if user else ""

    reasons = list(version.grounding_reasons or [])
    return {
        "id": version.id,
        "version": version.version,
        "status": version.status,
        "structured_text": version.structured_text,
        "narrative_text": version.narrative_text,
        "grounding_verdict": version.grounding_verdict,
        # a person's text: advice of the guard, never the model's verdict (llm.typed_text)
        "grounding_reasons": shown_reasons(version.grounding_verdict, reasons),
        "grounding_label": grounding_label(version.grounding_verdict, reasons),
        "typed_by_person": typed_by_person(version.grounding_verdict, reasons),
        "demo_models": version.demo_models,
        "author": name(version.author_fk),
        "signed_by": name(version.signed_by_fk),
        "signed_at": version.signed_at.isoformat() if version.signed_at else None,
        "amendment_reason": version.amendment_reason,
        "created_at": version.created_at.isoformat() if version.created_at else None,
    }


def study_detail(session: Session, config: Config, study: Study) -> dict[str, Any]:
    analysis = _latest_analysis(session, study.id)
    status, reason = display_status(study, list(study.jobs), analysis is not None)
    versions = list(study.report_versions)
    return {
        **_study_header(study),
        "status": status,
        "status_label": STATUS_LABELS[status],
        "status_reason": reason,
        "demo_models": bool(analysis and analysis.demo_models),
        "demo_label": DEMO_LABEL,
        "loop": loop_detail(session, analysis) if analysis else None,
        "not_analysed": not_analysed(session, study),
        "report": report_version_dict(session, versions[-1]) if versions else None,
        "versions": [report_version_dict(session, v) for v in versions],
        "export": export_summary(session, config, study.id),
    }


def latest_analysis(session: Session, study_id: int) -> Analysis | None:
    return _latest_analysis(session, study_id)
