"""The JSON answers of /dicomweb, framed in one place: errors, the 401 challenge and DICOM JSON
differ only in body, status, media type and headers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Response, jsonify
from pydicom.dataset import Dataset

from web.dicomweb.blueprint import DICOM_JSON


def json_response(
    payload: Any,
    status: int,
    mimetype: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """``payload`` as JSON with ``status``, a media type other than application/json when
    given, and extra headers."""
    response = jsonify(payload)
    response.status_code = status
    if mimetype is not None:
        response.mimetype = mimetype
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def error_response(status: int, message: str) -> Response:
    """``{"error": message}`` with ``status``."""
    return json_response({"error": message}, status)


def dicom_json_response(
    payload: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A dataset (or a list of DICOM JSON objects) as application/dicom+json (PS3.18 F)."""
    if isinstance(payload, Dataset):
        payload = payload.to_json_dict()
    return json_response(payload, status, DICOM_JSON, headers)
