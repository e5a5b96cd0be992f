"""Where a study's results stand with each place they go, for the study page and the API:
every exported artifact (SR, SEG, secondary capture, PDF, FHIR bundle, HL7 message) with its
report version and, per destination (PACS by C-STORE or STOW-RS, the EHR, HL7 peers), its
state, attempts and last error, plus the study's FHIR delivery. Read from the attempt
records, never from the network.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from pacs_agent.attempts import DestinationStatus
from pacs_agent.config import Config
from pacs_agent.db.models import Artifact, ReportVersion
from pacs_agent.export import export_status
from pacs_agent.fhir_delivery import delivery_status, destination_name, study_delivery
from pacs_agent.hl7_delivery import message_statuses
from pacs_agent.stow_delivery import destination_name as stow_destination
from pacs_agent.stow_delivery import stow_status

# the artifacts the export summary lists (what goes to PACS, the EHR or an HL7 peer)
EXPORTED_KINDS = ("sr", "echo_sr", "seg", "secondary_capture", "pdf", "fhir", "hl7_oru")


def _ehr_status(session: Session, artifact: Artifact, config: Config) -> list[DestinationStatus]:
    if not config.ehr.fhir_base_url:
        return []
    return [
        delivery_status(session, artifact.id, destination_name(config.ehr), config.ehr.max_attempts)
    ]


def _destinations(session: Session, artifact: Artifact, config: Config) -> list[DestinationStatus]:
    """Where the artifact stands with each place it goes: PACS, the EHR or its HL7 peers."""
    if artifact.kind == "fhir":
        return _ehr_status(session, artifact, config)
    if artifact.kind == "hl7_oru":
        return message_statuses(session, artifact.id, config)
    limit = config.export.max_attempts
    return export_status(session, artifact.id, config) + [
        stow_status(session, artifact.id, stow_destination(d), limit)
        for d in config.dicomweb_destinations
    ]


def export_summary(session: Session, config: Config, study_id: int) -> dict[str, Any]:
    artifacts = session.scalars(
        select(Artifact).where(Artifact.study_fk == study_id).order_by(Artifact.id)
    ).all()
    delivery = study_delivery(session, study_id, config)
    rows = []
    for artifact in artifacts:
        if artifact.kind not in EXPORTED_KINDS:
            continue
        version = (
            session.get(ReportVersion, artifact.report_version_fk)
            if (artifact.report_version_fk)
            else None
        )
        rows.append(
            {
                "artifact_id": artifact.id,
                "kind": artifact.kind,
                "report_version": version.version if version else None,
                "created_at": artifact.created_at.isoformat(),
                "destinations": [
                    {
                        "destination": s.destination,
                        "state": s.state,
                        "attempts": s.attempts,
                        "last_error": s.last_error,
                    }
                    for s in _destinations(session, artifact, config)
                ],
            }
        )
    return {
        "fhir_status": delivery.report_status,
        "fhir_artifact_id": delivery.artifact_id,
        "fhir_delivery": {
            "state": delivery.state,
            "label": delivery.label,
            "destination": delivery.destination,
            "attempts": delivery.attempts,
            "last_error": delivery.last_error,
            "last_status_code": delivery.last_status_code,
            "delivered_at": delivery.delivered_at.isoformat() if delivery.delivered_at else None,
        },
        "ehr_configured": bool(config.ehr.fhir_base_url),
        "destinations_configured": [d.name for d in config.destinations],
        "hl7_destinations_configured": [d.name for d in config.hl7_destinations],
        "artifacts": rows,
    }
