"""Sign-off: a cardiologist's signature turns the draft into the final report.

Signing (or amending a signed report) writes a new ``ReportVersion`` (never editing one in
place), a signed DICOM SR that names the previous SR as its predecessor, and a FHIR bundle whose
DiagnosticReport is ``final`` (``amended`` after an amendment), then sends the SR to every PACS
destination and the bundle to the EHR (when one is configured) in a background thread, so the
request returns at once (a send that a stop cuts short is taken up at the next start:
``web.export_resume``). The files go under
``<home>/reports/<study>/`` and are recorded without a job, so a re-analysis of the loop (which
replaces its job's artifacts) can never delete what was signed.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from inference.types import Measurements
from pacs_agent.config import Config
from pacs_agent.db.models import Analysis, Artifact, Instance, ReportVersion, Study, User, utcnow
from pacs_agent.export import artifact_path, export_artifact, export_to_all
from pacs_agent.fhir_delivery import deliver_artifact
from pacs_agent.outputs import node_identifier_system
from reporting.dicom_base import derived_uid
from reporting.fhir import build_fhir_bundle, bundle_json
from reporting.outputs import DICOM_MEDIA_TYPE, FHIR_MEDIA_TYPE
from reporting.sr import write_signed_sr
from reporting.typed_text import advise
from reporting.types import DraftReport, Signature, SourceLoop
from web.audit import write_event
from web.export_resume import UnfinishedExport, unfinished_signoff_exports
from web.studies import analysis_algorithms, latest_analysis

log = logging.getLogger("echo_agent.web.signoff")

REPORTS_DIR_NAME = "reports"
# who the audit log names for sends the node takes up again on its own after a restart
RESUMING_USER = "echo-agent (resumed after restart)"


class SignOffError(ValueError):
    """The report cannot be signed as asked (no analysis, no SR to follow, bad state)."""


@dataclass(frozen=True)
class SignedOutputs:
    version_id: int
    version: int
    sr_artifact_id: int
    fhir_artifact_id: int


def observer_name(user: User) -> str:
    """DICOM PN ``Family^Given`` from the display name ("Ada Okafor" -> "Okafor^Ada")."""
    name = (user.display_name or user.username).strip()
    if "^" in name:
        return name
    parts = name.split()
    if len(parts) < 2:
        return name
    return f"{parts[-1]}^{' '.join(parts[:-1])}"


def report_text(structured: str, narrative: str) -> str:
    """The words the signed SR and FHIR carry: the structured part, then the narrative."""
    return "\n\n".join(p.strip() for p in (structured, narrative) if p.strip())


def edit_grounding(
    session: Session, study: Study, structured_text: str, narrative_text: str
) -> tuple[str, list[str]]:
    """(verdict, reasons) for a new version with these words. Unchanged from the previous
    version: its verdict still holds. Changed: the text is a person's, so the guard runs on the
    lines they typed as advice only (``reporting.typed_text``) and the verdict is never the
    model's "pass"."""
    versions = list(study.report_versions)
    previous = versions[-1] if versions else None
    if previous is not None and (previous.structured_text, previous.narrative_text) == (
        structured_text, narrative_text
    ):
        return previous.grounding_verdict, list(previous.grounding_reasons or [])
    node = next((v for v in reversed(versions) if v.status == "preliminary"), None)
    node_text = report_text(node.structured_text, node.narrative_text) if node else ""
    analysis = latest_analysis(session, study.id)
    measurements = Measurements.from_json(analysis.measurements) if analysis else None
    advice = advise(report_text(structured_text, narrative_text), node_text, measurements,
                    study.patient.sex if study.patient else None)  # fmt: skip
    return advice.verdict, list(advice.reasons)


def _previous_sr(session: Session, study_id: int, analysis: Analysis) -> Artifact:
    signed = session.scalar(
        select(Artifact)
        .where(Artifact.study_fk == study_id, Artifact.kind == "sr", Artifact.job_fk.is_(None))
        .order_by(Artifact.id.desc())
        .limit(1)
    )
    if signed is not None:
        return signed
    preliminary = session.scalar(
        select(Artifact)
        .where(Artifact.job_fk == analysis.job_fk, Artifact.kind == "sr")
        .order_by(Artifact.id.desc())
        .limit(1)
    )
    if preliminary is None:
        raise SignOffError("the analysis has no preliminary SR to sign")
    return preliminary


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
    """Writes the signed SR and FHIR bundle and adds the signed (or amended) version; the
    caller commits. Raises SignOffError when there is nothing to sign."""
    analysis = latest_analysis(session, study.id)
    if analysis is None:
        raise SignOffError("this study has no analysed loop to report on")
    versions = list(study.report_versions)
    previous = versions[-1] if versions else None
    amending = previous is not None and previous.status in ("signed", "amended")
    if amending and not amendment_reason.strip():
        raise SignOffError("a change to a signed report needs the reason for the amendment")
    number = (previous.version if previous else 0) + 1
    signed_at = now or utcnow()
    instance = session.get(Instance, analysis.instance_fk)
    if instance is None:
        raise SignOffError("the analysed loop is no longer in the store")
    source_ds: Dataset = dcmread(config.store_path / instance.file_path, stop_before_pixels=True)
    previous_sr = _previous_sr(session, study.id, analysis)
    previous_sr_ds = dcmread(artifact_path(config, previous_sr))
    organisation = str(source_ds.get("InstitutionName", "") or "").strip()
    signature = Signature(
        observer_name=observer_name(user),
        organisation=organisation or f"echo-agent node {config.dicom.ae_title.strip()}",
        signed_at=signed_at,
    )
    report = DraftReport(
        narrative_text=report_text(structured_text, narrative_text),
        demo_models=analysis.demo_models,
        status="amended" if amending else "final",
        version=number,
        signature=signature,
        amendment_reason=amendment_reason.strip() if amending else "",
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

    verdict, reasons = edit_grounding(session, study, structured_text, narrative_text)
    version = ReportVersion(
        study_fk=study.id,
        version=number,
        status="amended" if amending else "signed",
        structured_text=structured_text,
        narrative_text=narrative_text,
        grounding_verdict=verdict,
        grounding_reasons=reasons,
        demo_models=analysis.demo_models,
        author_fk=user.id,
        signed_by_fk=user.id,
        signed_at=signed_at,
        amendment_reason=report.amendment_reason,
    )
    session.add(version)
    session.flush()
    sr_artifact = _artifact(config, study.id, version.id, "sr", sr_path, DICOM_MEDIA_TYPE,
                            str(sr.SOPInstanceUID))
    fhir_artifact = _artifact(config, study.id, version.id, "fhir", fhir_path, FHIR_MEDIA_TYPE,
                              None)
    session.add_all([sr_artifact, fhir_artifact])
    study.status = "signed"
    session.flush()
    return SignedOutputs(version.id, number, sr_artifact.id, fhir_artifact.id)


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


class ExportRunner:
    """Runs exports in background threads and remembers, per study, whether one is running:
    the DICOM artifacts to every PACS destination, then the FHIR bundle to the EHR."""

    def __init__(self, session_factory: sessionmaker[Session], config: Config) -> None:
        self.session_factory = session_factory
        self.config = config
        self._running: dict[int, int] = {}
        self._lock = threading.Lock()

    def running(self, study_id: int) -> bool:
        with self._lock:
            return self._running.get(study_id, 0) > 0

    def will_send(self, artifact_ids: list[int], fhir_artifact_id: int | None) -> bool:
        return bool(
            (artifact_ids and self.config.destinations)
            or (fhir_artifact_id is not None and self.config.ehr.fhir_base_url)
        )

    def start(
        self,
        study_id: int,
        artifact_ids: list[int],
        user_id: int,
        username: str,
        fhir_artifact_id: int | None = None,
    ) -> threading.Thread | None:
        """None when there is nowhere to send anything (no destination, no EHR)."""
        if not self.will_send(artifact_ids, fhir_artifact_id):
            return None
        with self._lock:
            self._running[study_id] = self._running.get(study_id, 0) + 1
        thread = threading.Thread(
            target=self._run,
            args=(study_id, artifact_ids, user_id, username, fhir_artifact_id),
            name=f"export-study-{study_id}",
            daemon=True,
        )
        thread.start()
        return thread

    def resume_unfinished(self) -> list[threading.Thread]:
        """Takes up the sign-off sends a stop cut short (``web.export_resume``); called once
        when the review app starts serving. Each runs in its own thread, as at sign-off."""
        with self.session_factory() as session:
            items = unfinished_signoff_exports(session, self.config)
        return self.resume(items)

    def resume(self, items: Sequence[UnfinishedExport]) -> list[threading.Thread]:
        threads = []
        for item in items:
            log.info(
                "study %d: resuming sign-off exports cut short by a stop (SR %s, FHIR %s)",
                item.study_id,
                ", ".join(f"{a} -> {'/'.join(names)}" for a, names in item.sr_destinations) or "-",
                item.fhir_artifact_id if item.fhir_artifact_id is not None else "-",
            )
            with self._lock:
                self._running[item.study_id] = self._running.get(item.study_id, 0) + 1
            thread = threading.Thread(
                target=self._resume_one,
                args=(item,),
                name=f"export-resume-study-{item.study_id}",
                daemon=True,
            )
            thread.start()
            threads.append(thread)
        return threads

    def _resume_one(self, item: UnfinishedExport) -> None:
        try:
            for artifact_id, names in item.sr_destinations:
                self._send(
                    item.study_id, artifact_id, None, RESUMING_USER,
                    functools.partial(self._to_named_pacs, names=names), resumed=True,
                )  # fmt: skip
            if item.fhir_artifact_id is not None:
                self._send(
                    item.study_id, item.fhir_artifact_id, None, RESUMING_USER, self._to_ehr,
                    resumed=True,
                )  # fmt: skip
        finally:
            with self._lock:
                self._running[item.study_id] -= 1

    def _run(
        self,
        study_id: int,
        artifact_ids: list[int],
        user_id: int,
        username: str,
        fhir_artifact_id: int | None,
    ) -> None:
        try:
            if self.config.destinations:
                for artifact_id in artifact_ids:
                    self._send(study_id, artifact_id, user_id, username, self._to_pacs)
            if fhir_artifact_id is not None and self.config.ehr.fhir_base_url:
                self._send(study_id, fhir_artifact_id, user_id, username, self._to_ehr)
        finally:
            with self._lock:
                self._running[study_id] -= 1

    def _to_pacs(self, artifact_id: int) -> dict[str, str]:
        statuses = export_to_all(self.session_factory, artifact_id, self.config)
        return {s.destination: s.state for s in statuses}

    def _to_named_pacs(self, artifact_id: int, names: tuple[str, ...]) -> dict[str, str]:
        results = {}
        for dest in self.config.destinations:
            if dest.name in names:
                status = export_artifact(self.session_factory, artifact_id, dest, self.config)
                results[status.destination] = status.state
        return results

    def _to_ehr(self, artifact_id: int) -> dict[str, str]:
        status = deliver_artifact(self.session_factory, artifact_id, self.config)
        return {status.destination: status.state}

    def _send(
        self,
        study_id: int,
        artifact_id: int,
        user_id: int | None,
        username: str,
        send: Callable[[int], dict[str, str]],
        resumed: bool = False,
    ) -> None:
        try:
            detail: dict[str, object] = {"artifact_id": artifact_id, "results": send(artifact_id)}
        except Exception as exc:  # recorded and shown; the thread must not die silently
            log.exception("export of artifact %d failed", artifact_id)
            detail = {"artifact_id": artifact_id, "error": f"{type(exc).__name__}: {exc}"}
        if resumed:
            detail["resumed"] = True
        write_event(
            self.session_factory,
            action="export",
            user_id=user_id,
            username=username,
            study_id=study_id,
            target_type="artifact",
            target_id=str(artifact_id),
            detail=detail,
        )
