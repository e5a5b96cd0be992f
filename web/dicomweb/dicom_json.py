"""QIDO-RS answers in DICOM JSON (PS3.18 F.2): the attributes of a study, a series, an instance.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flask import url_for

from pacs_agent.db.models import Patient, Study
from web.dicomweb.served import Served


def json_element(vr: str, *values: Any) -> dict[str, Any]:
    """One attribute in DICOM JSON (PS3.18 F.2); an empty value is present without ``Value``."""
    kept = [v for v in values if v is not None and v != ""]
    return {"vr": vr, "Value": kept} if kept else {"vr": vr}


def _pn(name: str) -> dict[str, Any]:
    return {"vr": "PN", "Value": [{"Alphabetic": name}]} if name else {"vr": "PN"}


def study_json(study: Study, patient: Patient, served: list[Served]) -> dict[str, Any]:
    modalities = sorted({s.modality for s in served if s.modality})
    return {
        "00080020": json_element(
            "DA", study.study_date.strftime("%Y%m%d") if study.study_date else None
        ),
        "00080030": json_element("TM", study.study_time),
        "00080050": json_element("SH", study.accession_number),
        "00080061": json_element("CS", *modalities),
        "00080090": _pn(study.referring_physician),
        "00081030": json_element("LO", study.description),
        "00081190": json_element(
            "UR",
            url_for("dicomweb.retrieve_study", study_uid=study.study_instance_uid, _external=True),
        ),
        "00100010": _pn(patient.name),
        "00100020": json_element("LO", patient.patient_id),
        "00100021": json_element("LO", patient.issuer),
        "00100030": json_element(
            "DA", patient.birth_date.strftime("%Y%m%d") if patient.birth_date else None
        ),
        "00100040": json_element("CS", patient.sex),
        "0020000D": json_element("UI", study.study_instance_uid),
        "00201206": json_element("IS", len({s.series_uid for s in served})),
        "00201208": json_element("IS", len(served)),
    }


def series_json(study: Study, series: list[Served]) -> dict[str, Any]:
    first = series[0]
    return {
        "00080060": json_element("CS", first.modality),
        "0008103E": json_element("LO", first.series_description),
        "00081190": json_element(
            "UR",
            url_for(
                "dicomweb.retrieve_series",
                study_uid=study.study_instance_uid,
                series_uid=first.series_uid,
                _external=True,
            ),
        ),
        "0020000D": json_element("UI", study.study_instance_uid),
        "0020000E": json_element("UI", first.series_uid),
        "00200011": json_element("IS", first.series_number),
        "00201209": json_element("IS", len(series)),
    }


def instance_json(study: Study, item: Served) -> dict[str, Any]:
    return {
        "00080016": json_element("UI", item.sop_class_uid),
        "00080018": json_element("UI", item.sop_instance_uid),
        "00080060": json_element("CS", item.modality),
        "00081190": json_element(
            "UR",
            url_for(
                "dicomweb.retrieve_instance",
                study_uid=study.study_instance_uid,
                series_uid=item.series_uid,
                sop_uid=item.sop_instance_uid,
                _external=True,
            ),
        ),
        "00083002": json_element("UI", item.transfer_syntax_uid),
        "0020000D": json_element("UI", study.study_instance_uid),
        "0020000E": json_element("UI", item.series_uid),
        "00200013": json_element("IS", item.instance_number),
        "00280008": json_element("IS", item.number_of_frames),
    }


def by_series(served: Iterable[Served]) -> dict[str, list[Served]]:
    grouped: dict[str, list[Served]] = {}
    for item in served:
        grouped.setdefault(item.series_uid, []).append(item)
    return grouped
