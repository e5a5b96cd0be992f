"""What DICOMweb serves: a study's received instances and the node's own DICOM results
(SEG, SR, secondary capture, encapsulated PDF), as one list per study.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy import select
from sqlalchemy.orm import Session

from pacs_agent.config import Config
from pacs_agent.db.models import Artifact, Instance, Patient, Series, Study
from pacs_agent.export import artifact_path
from web.db import db
from web.dicomweb.blueprint import (
    DICOM,
    log,
    node_config,
)


@dataclass(frozen=True)
class Served:
    """One instance as DICOMweb serves it: one the node received, or one of its own results."""

    series_uid: str
    series_number: int | None
    series_description: str
    modality: str
    sop_class_uid: str
    sop_instance_uid: str
    instance_number: int | None
    number_of_frames: int | None
    transfer_syntax_uid: str
    path: Path


@lru_cache(maxsize=4096)
def _result(path: str, sha256: str) -> Served | None:
    """One of the node's DICOM results as served, from its file (the database holds its path
    and UID only); cached by content hash, as a result file is never changed in place."""
    del sha256  # the cache key only
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[
            "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "Modality", "SOPClassUID",
            "SOPInstanceUID", "InstanceNumber", "NumberOfFrames"])  # fmt: skip
        return Served(
            series_uid=str(ds.SeriesInstanceUID),
            series_number=_int_or_none(ds.get("SeriesNumber")),
            series_description=str(ds.get("SeriesDescription", "") or ""),
            modality=str(ds.get("Modality", "") or ""),
            sop_class_uid=str(ds.SOPClassUID),
            sop_instance_uid=str(ds.SOPInstanceUID),
            instance_number=_int_or_none(ds.get("InstanceNumber")),
            number_of_frames=_int_or_none(ds.get("NumberOfFrames")),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
            path=Path(path),
        )
    except Exception as exc:  # an unreadable result is left out, never a failed request
        log.warning("result file %s cannot be read for DICOMweb: %s", path, type(exc).__name__)
        return None


def _int_or_none(value: Any) -> int | None:
    try:
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def served_by_study(
    session: Session, config: Config, study_ids: list[int]
) -> dict[int, list[Served]]:
    """Every instance of the given studies, received and produced, by study id."""
    found: dict[int, list[Served]] = {study_id: [] for study_id in study_ids}
    if not study_ids:
        return found
    rows = session.execute(
        select(Series, Instance)
        .join(Instance, Instance.series_fk == Series.id)
        .where(Series.study_fk.in_(study_ids))
        .order_by(Series.series_number, Series.id, Instance.instance_number, Instance.id)
    ).all()
    for series, instance in rows:
        found[series.study_fk].append(
            Served(
                series_uid=series.series_instance_uid,
                series_number=series.series_number,
                series_description=series.description,
                modality=series.modality,
                sop_class_uid=instance.sop_class_uid,
                sop_instance_uid=instance.sop_instance_uid,
                instance_number=instance.instance_number,
                number_of_frames=instance.number_of_frames,
                transfer_syntax_uid=instance.transfer_syntax_uid,
                path=config.store_path / instance.file_path,
            )
        )
    results = session.scalars(
        select(Artifact)
        .where(
            Artifact.study_fk.in_(study_ids),
            Artifact.sop_instance_uid.is_not(None),
            Artifact.media_type == DICOM,
        )
        .order_by(Artifact.id)
    ).all()
    for artifact in results:
        served = _result(str(artifact_path(config, artifact)), artifact.sha256)
        if served is not None:
            found[artifact.study_fk].append(served)
    return found


def _study(study_uid: str) -> tuple[Study, Patient] | None:
    row = (
        db()
        .execute(
            select(Study, Patient)
            .join(Patient, Study.patient_fk == Patient.id)
            .where(Study.study_instance_uid == study_uid)
        )
        .first()
    )
    return None if row is None else (row[0], row[1])


def study_instances(study_uid: str) -> tuple[Study, Patient, list[Served]] | None:
    found = _study(study_uid)
    if found is None:
        return None
    study, patient = found
    return study, patient, served_by_study(db(), node_config(), [study.id])[study.id]
