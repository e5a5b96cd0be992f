"""Sign-off: a cardiologist's signature turns the draft into the final report.

Signing (or amending a signed report) writes a new ``ReportVersion`` (never editing one in
place), signed DICOM SRs (the TID 1500 Measurement Report and the TID 5200 Echocardiography
Procedure Report) that each name the previous one of their template as predecessor, a FHIR
bundle whose DiagnosticReport is ``final`` (``amended`` after an amendment) and an HL7 ORU^R01
per ``[[hl7_destinations]]`` entry (result status F, C after an amendment; message time the
signature's), then queues the sends of the SRs to every PACS destination, of the bundle to the
EHR (when one is configured) and of each message to its HL7 destination as delivery
jobs (``pacs_agent.deliveries``), so the request returns at once and a stop loses no send: the
jobs are rows that the next worker takes up. The files go under
``<home>/reports/<study>/`` and are recorded without a job, so a re-analysis of the loop (which
replaces its job's artifacts) can never delete what was signed.

The sends themselves (queueing, seeing them through, resuming after a restart) are
``web.signoff_export``; its names stay importable from here.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from inference.types import Measurements
from pacs_agent.config import Config
from pacs_agent.db.models import Analysis, Artifact, Instance, Study, User, utcnow
from pacs_agent.drafting import report_text
from pacs_agent.errors import SignOffError
from pacs_agent.export import artifact_path
from pacs_agent.hl7_delivery import ARTIFACT_KIND as HL7_KIND
from pacs_agent.hl7_delivery import HL7_MEDIA_TYPE, write_messages
from pacs_agent.outputs import node_identifier_system
from pacs_agent.reports import ReportText, latest_analysis, plan_signature, record_signature
from reporting.dicom_base import derived_uid
from reporting.echo_sr import write_echo_sr, write_signed_echo_sr
from reporting.fhir import build_fhir_bundle, bundle_json
from reporting.outputs import DICOM_MEDIA_TYPE, FHIR_MEDIA_TYPE
from reporting.sr import write_signed_sr
from reporting.types import DraftReport, Signature, SourceLoop
from web.signoff_export import RESUMING_USER, ExportRunner, Sends
from web.studies import analysis_algorithms

__all__ = [
    "REPORTS_DIR_NAME",
    "RESUMING_USER",
    "ExportRunner",
    "Sends",
    "SignOffError",
    "SignedOutputs",
    "finalise",
    "observer_name",
    "report_text",
]

REPORTS_DIR_NAME = "reports"


@dataclass(frozen=True)
class SignedOutputs:
    version_id: int
    version: int
    sr_artifact_id: int
    fhir_artifact_id: int
    echo_sr_artifact_id: int
    # [[hl7_destinations]] name -> the ORU^R01 artifact written for it
    hl7_messages: dict[str, int] = field(default_factory=dict)

    @property
    def dicom_artifact_ids(self) -> list[int]:
        """What goes to every PACS destination: the TID 1500 SR, then the TID 5200 SR."""
        return [self.sr_artifact_id, self.echo_sr_artifact_id]


def observer_name(user: User) -> str:
    """DICOM PN ``Family^Given`` from the display name ("Ada Okafor" -> "Okafor^Ada")."""
    name = (user.display_name or user.username).strip()
    if "^" in name:
        return name
    parts = name.split()
    if len(parts) < 2:
        return name
    return f"{parts[-1]}^{' '.join(parts[:-1])}"


def _previous_sr(
    session: Session, study_id: int, analysis: Analysis, kind: str = "sr"
) -> Artifact | None:
    """The SR of ``kind`` the new signed one follows: the last signed one, else the analysis's
    preliminary one (None when there is neither)."""
    signed = session.scalar(
        select(Artifact)
        .where(Artifact.study_fk == study_id, Artifact.kind == kind, Artifact.job_fk.is_(None))
        .order_by(Artifact.id.desc())
        .limit(1)
    )
    if signed is not None:
        return signed
    return session.scalar(
        select(Artifact)
        .where(Artifact.job_fk == analysis.job_fk, Artifact.kind == kind)
        .order_by(Artifact.id.desc())
        .limit(1)
    )


def finalise(
    session: Session,
    config: Config,
    study: Study,
    user: User,
    *,
    structured_text: str,
    narrative_text: str,
    amendment_reason: str = "",
    now: dt.datetime | None = None,
) -> SignedOutputs:
    """Writes the signed SR and FHIR bundle and adds the signed (or amended) version
    (``pacs_agent.reports``); the caller commits. Raises SignOffError when there is nothing to
    sign."""
    analysis = latest_analysis(session, study.id)
    if analysis is None:
        raise SignOffError("this study has no analysed loop to report on")
    signing = plan_signature(session, study.id, amendment_reason)
    number = signing.number
    signed_at = now or utcnow()
    instance = session.get(Instance, analysis.instance_fk)
    if instance is None:
        raise SignOffError("the analysed loop is no longer in the store")
    source_ds: Dataset = dcmread(config.store_path / instance.file_path, stop_before_pixels=True)
    previous_sr = _previous_sr(session, study.id, analysis)
    if previous_sr is None:
        raise SignOffError("the analysis has no preliminary SR to sign")
    previous_sr_ds = dcmread(artifact_path(config, previous_sr))
    previous_echo_sr = _previous_sr(session, study.id, analysis, "echo_sr")
    organisation = str(source_ds.get("InstitutionName", "") or "").strip()
    signature = Signature(
        observer_name=observer_name(user),
        organisation=organisation or f"echo-agent node {config.dicom.ae_title.strip()}",
        signed_at=signed_at,
    )
    report = DraftReport(
        narrative_text=report_text(structured_text, narrative_text),
        demo_models=analysis.demo_models,
        status=signing.published_status,
        version=number,
        signature=signature,
        amendment_reason=signing.amendment_reason,
    )
    measurements = Measurements.from_json(analysis.measurements)
    algorithms = analysis_algorithms(analysis)
    folder = config.home_path / REPORTS_DIR_NAME / str(study.id)
    folder.mkdir(parents=True, exist_ok=True)
    seed = f"{source_ds.SOPInstanceUID}/study-{study.id}/report-v{number}"
    sr_path = folder / f"sr_v{number}.dcm"
    sr = write_signed_sr(
        previous_sr_ds,
        source_ds,
        measurements,
        algorithms,
        report,
        sr_path,
        sop_instance_uid=derived_uid(seed, "sr"),
    )
    echo_sr_path = folder / f"echo_sr_v{number}.dcm"
    if previous_echo_sr is not None:
        echo_sr = write_signed_echo_sr(
            dcmread(artifact_path(config, previous_echo_sr)),
            source_ds,
            measurements,
            algorithms,
            report,
            echo_sr_path,
            sop_instance_uid=derived_uid(seed, "echo_sr"),
        )
    else:  # analysed before the node wrote TID 5200: a signed one with no predecessor
        echo_sr = write_echo_sr(
            source_ds,
            measurements,
            algorithms,
            report,
            echo_sr_path,
            sop_instance_uid=derived_uid(seed, "echo_sr"),
            series_instance_uid=derived_uid(seed, "echo_sr", "series"),
        )
    messages = write_messages(
        folder,
        config,
        SourceLoop.from_dataset(source_ds),
        measurements,
        algorithms,
        report,
        message_time=signed_at,
        file_prefix=f"oru_v{number}",
    )
    bundle = build_fhir_bundle(
        SourceLoop.from_dataset(source_ds),
        measurements,
        algorithms,
        report,
        node_system=node_identifier_system(config),
        issued=signed_at,
    )
    fhir_path = folder / f"fhir_bundle_v{number}.json"
    fhir_path.write_text(bundle_json(bundle), encoding="utf-8")

    version = record_signature(
        session,
        study.id,
        signing,
        ReportText(structured_text, narrative_text),
        signer_id=user.id,
        signed_at=signed_at,
        demo_models=analysis.demo_models,
    )
    sr_artifact = _artifact(config, study.id, version.id, "sr", sr_path, DICOM_MEDIA_TYPE,
                            str(sr.SOPInstanceUID))
    fhir_artifact = _artifact(config, study.id, version.id, "fhir", fhir_path, FHIR_MEDIA_TYPE,
                              None)
    echo_sr_artifact = _artifact(config, study.id, version.id, "echo_sr", echo_sr_path,
                                 DICOM_MEDIA_TYPE, str(echo_sr.SOPInstanceUID))
    hl7_artifacts = {
        m.destination: _artifact(config, study.id, version.id, HL7_KIND, m.path, HL7_MEDIA_TYPE,
                                 None)
        for m in messages
    }
    session.add_all([sr_artifact, fhir_artifact, echo_sr_artifact, *hl7_artifacts.values()])
    session.flush()
    return SignedOutputs(version.id, number, sr_artifact.id, fhir_artifact.id,
                         echo_sr_artifact.id, {n: a.id for n, a in hl7_artifacts.items()})


def _artifact(
    config: Config,
    study_id: int,
    version_id: int,
    kind: str,
    path: Path,
    media_type: str,
    sop_instance_uid: str | None,
) -> Artifact:
    try:
        stored = str(path.resolve().relative_to(config.home_path))
    except ValueError:
        stored = str(path.resolve())
    return Artifact(
        study_fk=study_id,
        job_fk=None,
        report_version_fk=version_id,
        kind=kind,
        sop_instance_uid=sop_instance_uid,
        file_path=stored,
        media_type=media_type,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
    )
