"""WADO-RS (PS3.18 10.4): instances as stored (``transfer-syntax=*``; the node does not
transcode), and their metadata without bulk data.
"""

from __future__ import annotations

from typing import Any

import pydicom
from flask import Response, request
from pydicom.dataset import Dataset
from werkzeug.http import parse_options_header

from pacs_agent.db.models import Study
from web.dicomweb.access import record_view
from web.dicomweb.blueprint import (
    DICOM,
    bp,
    log,
)
from web.dicomweb.dicom_json import (
    json_element,
)
from web.dicomweb.multipart import (
    multipart_response,
)
from web.dicomweb.responses import dicom_json_response, error_response
from web.dicomweb.served import Served, study_instances

# values of these VRs are bulk data: left out of the metadata (PS3.18 F.2.7)
BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
BULK_MIN_BYTES = 1024


def _select(
    study_uid: str, series_uid: str | None, sop_uid: str | None
) -> tuple[Study, list[Served]] | Response:
    found = study_instances(study_uid)
    if found is None:
        return error_response(404, "no such study")
    study, _, served = found
    chosen = [
        s for s in served
        if (series_uid is None or s.series_uid == series_uid)
        and (sop_uid is None or s.sop_instance_uid == sop_uid)
    ]  # fmt: skip
    if not chosen:
        return error_response(404, "no such series or instance in this study")
    return study, chosen


@bp.get("/studies/<study_uid>", endpoint="retrieve_study")
@bp.get("/studies/<study_uid>/series/<series_uid>", endpoint="retrieve_series")
@bp.get("/studies/<study_uid>/series/<series_uid>/instances/<sop_uid>",
        endpoint="retrieve_instance")  # fmt: skip
def retrieve(study_uid: str, series_uid: str | None = None, sop_uid: str | None = None) -> Any:
    chosen = _select(study_uid, series_uid, sop_uid)
    if isinstance(chosen, Response):
        return chosen
    study, items = chosen
    refusal = _check_accept({s.transfer_syntax_uid for s in items})
    if refusal is not None:
        return refusal
    missing = [s.sop_instance_uid for s in items if not s.path.is_file()]
    if missing:
        log.error("DICOMweb: stored file of SOP instance %s is missing", missing[0])
        return error_response(500, "a stored file is missing; see the node's log")
    record_view(study.id, "dicomweb wado")
    parts = [(f"{DICOM}; transfer-syntax={s.transfer_syntax_uid}", s.path) for s in items]
    return multipart_response(parts, DICOM)


def _check_accept(syntaxes: set[str]) -> Response | None:
    """Instances go out as stored: a client that asks for one transfer syntax gets them only
    if it is theirs (406 otherwise); ``transfer-syntax=*`` or none takes them as they are."""
    header = request.headers.get("Accept", "")
    if not header.strip():
        return None
    for item in _split_accept(header):
        mimetype, params = parse_options_header(item)
        mimetype = mimetype.lower()
        if mimetype in ("*/*", "multipart/*"):
            return None
        if mimetype != "multipart/related":
            continue
        if params.get("type", DICOM).lower() not in (DICOM, "application/*", "*/*"):
            continue
        wanted = params.get("transfer-syntax", "*")
        if wanted == "*" or syntaxes <= {wanted}:
            return None
    return error_response(
        406,
        f'instances are returned as multipart/related; type="{DICOM}" in the '
        "transfer syntax they were stored in (transfer-syntax=*)",
    )


def _split_accept(header: str) -> list[str]:
    """Accept's comma-separated items, keeping commas inside quoted parameters."""
    items, current, quoted = [], [], False
    for char in header:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return [i.strip() for i in items if i.strip()]


@bp.get("/studies/<study_uid>/metadata", endpoint="study_metadata")
@bp.get("/studies/<study_uid>/series/<series_uid>/metadata", endpoint="series_metadata")
@bp.get("/studies/<study_uid>/series/<series_uid>/instances/<sop_uid>/metadata",
        endpoint="instance_metadata")  # fmt: skip
def metadata(study_uid: str, series_uid: str | None = None, sop_uid: str | None = None) -> Any:
    chosen = _select(study_uid, series_uid, sop_uid)
    if isinstance(chosen, Response):
        return chosen
    study, items = chosen
    answer = []
    for item in items:
        try:
            ds = pydicom.dcmread(item.path, stop_before_pixels=True)
        except Exception as exc:  # one unreadable file must not hide the others
            log.error("DICOMweb metadata: SOP instance %s cannot be read: %s",
                      item.sop_instance_uid, type(exc).__name__)  # fmt: skip
            continue
        _drop_bulk_data(ds)
        found = ds.to_json_dict(bulk_data_threshold=BULK_MIN_BYTES, suppress_invalid_tags=True)
        # Available Transfer Syntax
        found["00083002"] = json_element("UI", item.transfer_syntax_uid)
        answer.append(found)
    record_view(study.id, "dicomweb metadata")
    return dicom_json_response(answer)


def _drop_bulk_data(ds: Dataset) -> None:
    """Removes bulk data values (binary VRs of 1 KiB or more), nested ones too: the metadata
    describes the instance, the instance itself is one WADO-RS request away."""
    for element in list(ds):
        if element.VR == "SQ":
            for item in element.value or []:
                _drop_bulk_data(item)
        elif element.VR in BULK_VRS and len(element.value or b"") >= BULK_MIN_BYTES:
            del ds[element.tag]
