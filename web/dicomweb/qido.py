"""QIDO-RS (PS3.18 10.6): searching studies, series and instances.

Matching keys by keyword or tag; anything else is ignored and named in a ``Warning`` header.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from flask import Response, request
from sqlalchemy import select

from pacs_agent.db.models import Patient, Study
from web import audit
from web.db import db
from web.dicomweb.access import record_view, who
from web.dicomweb.blueprint import (
    MAX_RESULTS,
    bp,
    node_config,
)
from web.dicomweb.dicom_json import (
    by_series,
    instance_json,
    series_json,
    study_json,
)
from web.dicomweb.responses import dicom_json_response, error_response
from web.dicomweb.served import served_by_study, study_instances

# query keys by keyword and by tag; anything else is ignored and named in a Warning header
_STUDY_KEYS = {"StudyInstanceUID": "0020000D", "PatientID": "00100020",
               "AccessionNumber": "00080050", "StudyDate": "00080020"}  # fmt: skip
_SERIES_KEYS = {"SeriesInstanceUID": "0020000E", "Modality": "00080060"}
_INSTANCE_KEYS = {"SOPInstanceUID": "00080018", "SOPClassUID": "00080016"}
_IGNORED_QUIETLY = frozenset({"limit", "offset", "includefield", "fuzzymatching"})
_DATE_RANGE = re.compile(r"^(\d{8})?(-)?(\d{8})?$")


@dataclass(frozen=True)
class Query:
    values: dict[str, str]
    limit: int
    offset: int
    ignored: tuple[str, ...]


def _query(keys: dict[str, str]) -> Query:
    """The request's matching keys (keyword or tag form), limit and offset; ValueError when a
    number is not one."""
    by_tag = {tag: keyword for keyword, tag in keys.items()}
    values: dict[str, str] = {}
    ignored = []
    for name, value in request.args.items(multi=False):
        keyword = name if name in keys else by_tag.get(name.upper())
        if keyword is not None:
            values[keyword] = value
        elif name not in _IGNORED_QUIETLY:
            ignored.append(name[:64])
    limit = int(request.args.get("limit", MAX_RESULTS))
    offset = int(request.args.get("offset", 0))
    if limit < 0 or offset < 0:
        raise ValueError("limit and offset must not be negative")
    return Query(values, min(limit, MAX_RESULTS), offset, tuple(ignored))


def _matches(pattern: str, value: str) -> bool:
    """Single value matching with the * and ? wildcards (PS3.4 C.2.2.2.4), case-sensitive."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.DOTALL) is not None


def _uid_list(value: str) -> set[str]:
    """UID list matching (PS3.18 8.3.4.1): several UIDs, comma or backslash separated."""
    return {v.strip() for v in re.split(r"[,\\]", value) if v.strip()}


def _query_headers(query: Query) -> dict[str, str]:
    if not query.ignored:
        return {}
    return {"Warning": f'299 echo-agent "query keys not supported, ignored: '
                       f'{", ".join(query.ignored)}"'}  # fmt: skip


@bp.get("/studies")
def search_studies() -> Response:
    try:
        query = _query(_STUDY_KEYS)
        statement = _study_statement(query.values)
    except ValueError as exc:
        return error_response(400, str(exc))
    rows = db().execute(statement.offset(query.offset).limit(query.limit)).all()
    served = served_by_study(db(), node_config(), [study.id for study, _ in rows])
    found = [study_json(study, patient, served[study.id]) for study, patient in rows]
    audit.record("dicomweb_search", target_type="studies", detail={"results": len(found)},
                 username=who())  # fmt: skip
    return dicom_json_response(found, headers=_query_headers(query))


def _study_statement(values: dict[str, str]) -> Any:
    statement = select(Study, Patient).join(Patient, Study.patient_fk == Patient.id)
    if "StudyInstanceUID" in values:
        statement = statement.where(
            Study.study_instance_uid.in_(_uid_list(values["StudyInstanceUID"]))
        )
    for keyword, column in (("PatientID", Patient.patient_id),
                            ("AccessionNumber", Study.accession_number)):  # fmt: skip
        if values.get(keyword):
            pattern = values[keyword]
            if "*" in pattern or "?" in pattern:
                like = (pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                        .replace("*", "%").replace("?", "_"))  # fmt: skip
                statement = statement.where(column.like(like, escape="\\"))
            else:
                statement = statement.where(column == pattern)
    if values.get("StudyDate"):
        match = _DATE_RANGE.match(values["StudyDate"])
        if match is None or not (match.group(1) or match.group(3)):
            raise ValueError("StudyDate must be YYYYMMDD or a range YYYYMMDD-YYYYMMDD")
        low, dash, high = match.groups()
        low_date, high_date = (_date(low), _date(high))
        if not dash:
            statement = statement.where(Study.study_date == low_date)
        else:
            if low_date is not None:
                statement = statement.where(Study.study_date >= low_date)
            if high_date is not None:
                statement = statement.where(Study.study_date <= high_date)
    return statement.order_by(Study.id.desc())


def _date(text: str | None) -> dt.date | None:
    if text is None:
        return None
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        raise ValueError(f"{text!r} is not a date (YYYYMMDD)") from None


@bp.get("/studies/<study_uid>/series")
def search_series(study_uid: str) -> Response:
    try:
        query = _query(_SERIES_KEYS)
    except ValueError as exc:
        return error_response(400, str(exc))
    found = study_instances(study_uid)
    if found is None:
        return dicom_json_response([], headers=_query_headers(query))
    study, _, served = found
    answer = []
    for series_uid, items in by_series(served).items():
        if "SeriesInstanceUID" in query.values and series_uid not in _uid_list(
            query.values["SeriesInstanceUID"]
        ):
            continue
        if query.values.get("Modality") and not _matches(query.values["Modality"],
                                                         items[0].modality):  # fmt: skip
            continue
        answer.append(series_json(study, items))
    record_view(study.id, "dicomweb qido")
    page = answer[query.offset : query.offset + query.limit]
    return dicom_json_response(page, headers=_query_headers(query))


@bp.get("/studies/<study_uid>/instances")
@bp.get("/studies/<study_uid>/series/<series_uid>/instances")
def search_instances(study_uid: str, series_uid: str | None = None) -> Response:
    try:
        query = _query(_INSTANCE_KEYS | ({} if series_uid else _SERIES_KEYS))
    except ValueError as exc:
        return error_response(400, str(exc))
    found = study_instances(study_uid)
    if found is None:
        return dicom_json_response([], headers=_query_headers(query))
    study, _, served = found
    wanted_series = (
        {series_uid} if series_uid else _uid_list(query.values.get("SeriesInstanceUID", ""))
    )
    answer = []
    for item in served:
        if wanted_series and item.series_uid not in wanted_series:
            continue
        if "SOPInstanceUID" in query.values and item.sop_instance_uid not in _uid_list(
            query.values["SOPInstanceUID"]
        ):
            continue
        if "SOPClassUID" in query.values and item.sop_class_uid not in _uid_list(
            query.values["SOPClassUID"]
        ):
            continue
        if query.values.get("Modality") and not _matches(query.values["Modality"],
                                                         item.modality):  # fmt: skip
            continue
        answer.append(instance_json(study, item))
    record_view(study.id, "dicomweb qido")
    page = answer[query.offset : query.offset + query.limit]
    return dicom_json_response(page, headers=_query_headers(query))
