"""Sign-off sends that a stop cut short are queued again when the review app starts.

Sign-off queues its sends as delivery jobs (``pacs_agent.deliveries``), which outlive a stop by
themselves. What is left for this module: sends that began and never ended without a job to
carry them on (tries recorded by a version that sent from a thread of the web process), so that
a signed report does not sit unsent while the page says "retrying". The review app queues
delivery jobs for them (``ExportRunner.resume_unfinished``); a send whose job still exists
keeps it. A job's own exports need nothing here: the job queued them as jobs.

Only sends that had begun are resumed: an artifact whose tries with a destination neither got
it there nor ran out of attempts (``standing`` "pending": a try cut short, or a back-off wait).
A destination or an EHR added to the configuration later has no tries, so old signed reports
are not sent to it behind the operator's back. The superseded bundle of an amended report is
never sent over the newer one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from pacs_agent.config import Config
from pacs_agent.db.models import Artifact
from pacs_agent.export import destination_status
from pacs_agent.fhir_delivery import current_bundles, delivery_status, destination_name

log = logging.getLogger("echo_agent.web.export_resume")

PENDING = "pending"


@dataclass(frozen=True)
class UnfinishedExport:
    """One study's signed artifacts still owed to a destination: SRs with the names of the PACS
    destinations each one is pending with, and the current FHIR bundle when the EHR is owed it."""

    study_id: int
    sr_destinations: tuple[tuple[int, tuple[str, ...]], ...]
    fhir_artifact_id: int | None


def unfinished_signoff_exports(session: Session, config: Config) -> list[UnfinishedExport]:
    """Signed (job-less) artifacts whose send to some destination began and did not end."""
    signed = session.scalars(
        select(Artifact)
        .where(Artifact.job_fk.is_(None), Artifact.kind.in_(("sr", "fhir")))
        .order_by(Artifact.id)
    ).all()
    current = current_bundles(session, {a.study_fk for a in signed}) if signed else {}
    srs: dict[int, list[tuple[int, tuple[str, ...]]]] = {}
    bundles: dict[int, int] = {}
    for artifact in signed:
        if artifact.kind == "sr":
            names = _pending_destinations(session, config, artifact.id)
            if names:
                srs.setdefault(artifact.study_fk, []).append((artifact.id, names))
        elif _owed_to_ehr(session, config, artifact, current.get(artifact.study_fk)):
            bundles[artifact.study_fk] = artifact.id
    return [
        UnfinishedExport(study_id, tuple(srs.get(study_id, ())), bundles.get(study_id))
        for study_id in sorted(set(srs) | set(bundles))
    ]


def _pending_destinations(session: Session, config: Config, artifact_id: int) -> tuple[str, ...]:
    limit = config.export.max_attempts
    return tuple(
        d.name
        for d in config.destinations
        if destination_status(session, artifact_id, d.name, limit).state == PENDING
    )


def _owed_to_ehr(
    session: Session, config: Config, artifact: Artifact, current: Artifact | None
) -> bool:
    if not config.ehr.fhir_base_url:
        return False
    if current is None or current.id != artifact.id:
        return False  # an amendment superseded it: the EHR gets the newer bundle only
    destination = destination_name(config.ehr)
    status = delivery_status(session, artifact.id, destination, config.ehr.max_attempts)
    return status.state == PENDING
