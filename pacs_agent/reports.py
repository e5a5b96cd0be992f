"""The report lifecycle: every ``ReportVersion`` the node writes is built here, and every change
of the report's state goes through ``states.report_transition``.

Why one module: a report version used to be built in three places in two packages (the job's
recording step, the review app's draft save and its sign-off), each with its own idea of which
state may follow which. Now:

- ``record_preliminary``: a job's draft becomes the preliminary version (updated in place while
  nobody has signed; a signed report is never overwritten by a re-analysis) and the study is
  ``drafted``;
- ``save_draft``: a person's edit of an unsigned report is a new ``draft`` version;
- ``plan_signature`` then ``record_signature``: a signature is a new ``signed`` version, a
  change to a signed report a new ``amended`` one (with its reason); the plan comes first so
  the caller can write the signed objects (SR, FHIR, HL7) under the right version number and
  status before the version row exists, and the study is ``signed``.

Each is a plain function on a session and plain data; the caller commits. Writing the signed
DICOM/FHIR/HL7 objects stays with the caller (``web.signoff``).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from inference.types import Measurements
from llm.typed_text import advise
from pacs_agent.db.models import Analysis, Job, ReportVersion, Study
from pacs_agent.drafting import report_text
from pacs_agent.errors import SignOffError, StateTransitionError
from pacs_agent.states import (
    ReportState,
    StudyState,
    can_move,
    is_signed,
    report_transition,
    study_transition,
)

# the name the job's recording step has always logged under (log filters rely on it)
log = logging.getLogger("echo_agent.outputs")

# the DiagnosticReport / ORU status (``reporting.types.DraftReport.status``) of a signed version
PUBLISHED_STATUS = {ReportState.SIGNED: "final", ReportState.AMENDED: "amended"}


@dataclass(frozen=True)
class ReportText:
    """A version's words: the structured part and the narrative."""

    structured_text: str
    narrative_text: str

    @property
    def combined(self) -> str:
        """What the SR, PDF and FHIR carry: the structured part, then the narrative."""
        return report_text(self.structured_text, self.narrative_text)


@dataclass(frozen=True)
class PreliminaryReport:
    """What a job records of its draft (``pacs_agent.drafting``): the words as a version stores
    them, the grounding guard's verdict and reasons, and whether demo models measured."""

    text: ReportText
    verdict: str  # a ``llm.types.Verdict`` value
    reasons: tuple[str, ...]
    demo_models: bool


@dataclass(frozen=True)
class Signing:
    """The version a signature will add: its number, its state (``signed``, or ``amended``
    after an earlier signature) and the amendment's reason (empty for a first signature)."""

    number: int
    state: ReportState
    amendment_reason: str

    @property
    def amending(self) -> bool:
        return self.state == ReportState.AMENDED

    @property
    def published_status(self) -> str:
        """The status the signed SR, FHIR bundle and ORU^R01 carry: "final" or "amended"."""
        return PUBLISHED_STATUS[self.state]


def latest_analysis(session: Session, study_id: int) -> Analysis | None:
    """The study's newest analysis (the loop its report speaks of); None before any."""
    return session.scalar(
        select(Analysis)
        .join(Job, Job.id == Analysis.job_fk)
        .where(Job.study_fk == study_id)
        .order_by(Analysis.created_at.desc(), Analysis.id.desc())
        .limit(1)
    )


def _versions(session: Session, study_id: int) -> list[ReportVersion]:
    return list(
        session.scalars(
            select(ReportVersion)
            .where(ReportVersion.study_fk == study_id)
            .order_by(ReportVersion.version)
        )
    )


def _study(session: Session, study_id: int) -> Study:
    study = session.get(Study, study_id)
    if study is None:
        raise SignOffError(f"study {study_id} does not exist")
    return study


def _latest_state(study: Study) -> tuple[ReportVersion | None, str | None]:
    versions = list(study.report_versions)
    latest = versions[-1] if versions else None
    return latest, (latest.status if latest is not None else None)


def record_preliminary(session: Session, study_id: int, report: PreliminaryReport) -> int:
    """The job's draft as the study's preliminary version; returns that version's id (the
    signed one's when the report is signed: it stays as it is, a reviewer amends it). The
    study moves to ``drafted`` when it may (from receiving, complete or analysing)."""
    version_id = _upsert_preliminary(session, study_id, report)
    study = session.get(Study, study_id)
    if study is not None and can_move(study.status, StudyState.DRAFTED):
        study.status = study_transition(study.status, StudyState.DRAFTED)
    return version_id


def _upsert_preliminary(session: Session, study_id: int, report: PreliminaryReport) -> int:
    versions = _versions(session, study_id)
    latest = versions[-1] if versions else None
    try:
        state = report_transition(latest.status if latest else None, ReportState.PRELIMINARY)
    except StateTransitionError:
        if latest is None:  # pragma: no cover - the table allows a first preliminary version
            raise
        # a signed report is never overwritten by a re-analysis; a reviewer amends it
        log.warning("study %d: report already signed; new measurements not drafted", study_id)
        return latest.id
    if latest is None:
        latest = ReportVersion(study_fk=study_id, version=1)
        session.add(latest)
    latest.status = state
    latest.structured_text = report.text.structured_text
    latest.narrative_text = report.text.narrative_text
    latest.grounding_verdict = report.verdict
    latest.grounding_reasons = list(report.reasons)
    latest.demo_models = report.demo_models
    session.flush()
    return latest.id


def edit_grounding(session: Session, study_id: int, text: ReportText) -> tuple[str, list[str]]:
    """(verdict, reasons) for a new version with ``text``. Unchanged from the previous
    version: its verdict still holds. Changed: the text is a person's, so the guard runs on the
    lines they typed as advice only (``llm.typed_text``) and the verdict is never the
    model's "pass"."""
    study = _study(session, study_id)
    versions = list(study.report_versions)
    previous = versions[-1] if versions else None
    if previous is not None and (previous.structured_text, previous.narrative_text) == (
        text.structured_text, text.narrative_text
    ):
        return previous.grounding_verdict, list(previous.grounding_reasons or [])
    node = next((v for v in reversed(versions) if v.status == ReportState.PRELIMINARY), None)
    node_text = report_text(node.structured_text, node.narrative_text) if node else ""
    analysis = latest_analysis(session, study.id)
    measurements = Measurements.from_json(analysis.measurements) if analysis else None
    advice = advise(text.combined, node_text, measurements,
                    study.patient.sex if study.patient else None)  # fmt: skip
    return advice.verdict, list(advice.reasons)


def save_draft(session: Session, study_id: int, author_id: int, text: ReportText) -> ReportVersion:
    """A person's edit of the unsigned report: a new ``draft`` version (added, not flushed: a
    version number another edit took meanwhile fails the caller's commit). Raises
    ``StateTransitionError`` when the report is signed: a change to it is an amendment."""
    study = _study(session, study_id)
    previous, current = _latest_state(study)
    state = report_transition(current, ReportState.DRAFT)
    verdict, reasons = edit_grounding(session, study_id, text)
    version = ReportVersion(
        study_fk=study.id,
        version=(previous.version if previous else 0) + 1,
        status=state,
        structured_text=text.structured_text,
        narrative_text=text.narrative_text,
        grounding_verdict=verdict,
        grounding_reasons=reasons,
        demo_models=previous.demo_models if previous else False,
        author_fk=author_id,
    )
    session.add(version)
    return version


def plan_signature(session: Session, study_id: int, amendment_reason: str = "") -> Signing:
    """The version a signature adds now: ``signed`` for an unsigned report, ``amended`` (which
    needs ``amendment_reason``, else ``SignOffError``) for a signed one."""
    study = _study(session, study_id)
    previous, current = _latest_state(study)
    amending = is_signed(current)
    if amending and not amendment_reason.strip():
        raise SignOffError("a change to a signed report needs the reason for the amendment")
    state = report_transition(current, ReportState.AMENDED if amending else ReportState.SIGNED)
    return Signing(
        number=(previous.version if previous else 0) + 1,
        state=state,
        amendment_reason=amendment_reason.strip() if amending else "",
    )


def record_signature(
    session: Session,
    study_id: int,
    signing: Signing,
    text: ReportText,
    signer_id: int,
    signed_at: dt.datetime,
    demo_models: bool,
) -> ReportVersion:
    """The signed (or amended) version ``signing`` planned, flushed so its id is known, and
    the study ``signed``. Raises ``StateTransitionError`` when the report changed since the
    plan so that ``signing.state`` no longer follows it."""
    study = _study(session, study_id)
    _, current = _latest_state(study)
    report_transition(current, signing.state)
    verdict, reasons = edit_grounding(session, study_id, text)
    version = ReportVersion(
        study_fk=study.id,
        version=signing.number,
        status=signing.state,
        structured_text=text.structured_text,
        narrative_text=text.narrative_text,
        grounding_verdict=verdict,
        grounding_reasons=reasons,
        demo_models=demo_models,
        author_fk=signer_id,
        signed_by_fk=signer_id,
        signed_at=signed_at,
        amendment_reason=signing.amendment_reason,
    )
    session.add(version)
    session.flush()
    study.status = study_transition(study.status, StudyState.SIGNED)
    return version


__all__ = [
    "PreliminaryReport",
    "ReportText",
    "Signing",
    "edit_grounding",
    "latest_analysis",
    "plan_signature",
    "record_preliminary",
    "record_signature",
    "save_draft",
]
