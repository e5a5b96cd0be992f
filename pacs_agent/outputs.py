"""From an analysed loop to recorded results: the reporting objects written into the job's
folder, one ``Artifact`` row each, and the study's preliminary report version. Sending them is
not done here: the job queues delivery jobs (``pacs_agent.deliveries``) and finishes.

The HL7 ORU^R01 of the preliminary report is built here too, once per ``[[hl7_destinations]]``
entry (``pacs_agent.hl7_delivery``), and recorded like the other objects.

Everything here is safe to run twice for the same job (a retry, or recovery after a crash): the
files have fixed names and derived UIDs, the job's artifact rows are replaced (with their
delivery jobs), and the report version is updated in place while nobody has signed it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import dcmread
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from inference.model_cache import Models
from inference.types import Cine, Measurements
from llm.drafting import Draft
from pacs_agent import __version__
from pacs_agent.config import Config
from pacs_agent.db.models import Artifact, Job
from pacs_agent.drafting import report_parts, report_text
from pacs_agent.hl7_delivery import ARTIFACT_KIND as HL7_KIND
from pacs_agent.hl7_delivery import HL7_MEDIA_TYPE, WrittenMessage, write_messages
from pacs_agent.reports import PreliminaryReport, ReportText, record_preliminary
from reporting.outputs import WrittenObject, write_report_objects
from reporting.types import AlgorithmInfo, Algorithms, DraftReport, SourceLoop

log = logging.getLogger("echo_agent.outputs")

OUTPUTS_DIR_NAME = "outputs"


@dataclass(frozen=True)
class RecordedOutputs:
    artifact_ids: dict[str, int]  # kind -> Artifact id
    report_version_id: int
    # [[hl7_destinations]] name -> the Artifact id of the ORU^R01 written for it
    hl7_messages: dict[str, int] = field(default_factory=dict)


def algorithms_for(models: Models) -> Algorithms:
    """How the SEG and SR identify the networks (name, version, demo flag)."""
    version = f"echo-agent {__version__}, preset {models.preset}"
    return Algorithms(
        segmentation=AlgorithmInfo(
            "DeepLabV3-ResNet50 LV segmentation", version, demo_model=models.demo
        ),
        ejection_fraction=AlgorithmInfo(
            "R(2+1)D-18 EF regression", version, demo_model=models.demo
        ),
    )


def node_identifier_system(config: Config) -> str:
    """The FHIR identifier system of this node's reports: stable per node (its AE title)."""
    return f"urn:echo-agent:{config.dicom.ae_title.strip()}"


def write_and_record(
    *,
    job_id: int,
    study_id: int,
    source_path: Path,
    output_dir: Path,
    cine: Cine,
    masks: np.ndarray,
    measurements: Measurements,
    models: Models,
    draft: Draft,
    session_factory: sessionmaker[Session],
    config: Config,
) -> RecordedOutputs:
    """``draft`` (``pacs_agent.drafting.draft_for_job``) gives the report's words: the SR, PDF
    and FHIR carry its structured text and guarded narrative, and the preliminary report
    version stores both with the grounding verdict and reasons."""
    source_ds = dcmread(source_path, stop_before_pixels=True)
    algorithms = algorithms_for(models)
    structured, narrative = report_parts(draft)
    report = DraftReport(narrative_text=report_text(structured, narrative), demo_models=models.demo)
    written = write_report_objects(
        output_dir,
        source_ds,
        cine,
        masks,
        measurements,
        algorithms,
        report,
        node_system=node_identifier_system(config),
        uid_seed=f"{source_ds.SOPInstanceUID}/job-{job_id}",
    )
    messages = write_messages(
        output_dir,
        config,
        SourceLoop.from_dataset(source_ds),
        measurements,
        algorithms,
        report,
    )
    preliminary = PreliminaryReport(
        text=ReportText(structured, narrative),
        verdict=draft.verdict,
        reasons=tuple(draft.reasons),
        demo_models=models.demo,
    )
    with session_factory.begin() as session:
        version_id = record_preliminary(session, study_id, preliminary)
        ids = _replace_artifacts(session, job_id, study_id, version_id, written, config)
        hl7 = _record_messages(session, job_id, study_id, version_id, messages, config)
    return RecordedOutputs(artifact_ids=ids, report_version_id=version_id, hl7_messages=hl7)


def _replace_artifacts(
    session: Session,
    job_id: int,
    study_id: int,
    version_id: int,
    written: list[WrittenObject],
    config: Config,
) -> dict[str, int]:
    replaced = Job.artifact_fk.in_(select(Artifact.id).where(Artifact.job_fk == job_id))
    # no foreign key carries the delete over (migration 0004 says why): the replaced
    # artifacts' delivery jobs go with them, and the new artifacts get their own
    session.execute(delete(Job).where(replaced).execution_options(synchronize_session=False))
    session.execute(delete(Artifact).where(Artifact.job_fk == job_id))
    session.flush()
    ids: dict[str, int] = {}
    for obj in written:
        artifact = Artifact(
            study_fk=study_id,
            job_fk=job_id,
            report_version_fk=version_id,
            kind=obj.kind,
            sop_instance_uid=obj.sop_instance_uid,
            file_path=stored_path(obj.path, config),
            media_type=obj.media_type,
            sha256=obj.sha256,
        )
        session.add(artifact)
        session.flush()
        ids[obj.kind] = artifact.id
    return ids


def _record_messages(
    session: Session,
    job_id: int,
    study_id: int,
    version_id: int,
    messages: list[WrittenMessage],
    config: Config,
) -> dict[str, int]:
    """One ``hl7_oru`` artifact per message (the job's older ones went with its other
    artifacts in ``_replace_artifacts``); returns destination name -> artifact id."""
    ids: dict[str, int] = {}
    for message in messages:
        artifact = Artifact(
            study_fk=study_id,
            job_fk=job_id,
            report_version_fk=version_id,
            kind=HL7_KIND,
            sop_instance_uid=None,
            file_path=stored_path(message.path, config),
            media_type=HL7_MEDIA_TYPE,
            sha256=message.sha256,
        )
        session.add(artifact)
        session.flush()
        ids[message.destination] = artifact.id
    return ids


def stored_path(path: Path, config: Config) -> str:
    """``Artifact.file_path``: relative to the node's home when inside it, else absolute."""
    try:
        return str(path.resolve().relative_to(config.home_path))
    except ValueError:
        return str(path.resolve())
