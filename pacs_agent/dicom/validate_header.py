"""Reading the header values the node records (UIDs, dates, numbers) from the part of a dataset
in front of its pixel data, strictly: a value that cannot be what its VR says is a refusal.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from pacs_agent.dicom.status import (
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
)
from pacs_agent.dicom.validate_structure import U16
from pacs_agent.dicom.validate_types import InstanceHeader, InvalidInstanceError, PixelDataLayout

# The UI VR: digits and dots, at most 64 characters. The node also uses UIDs as path names.
UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")
UID_MAX_CHARS = 64
# An IS value is a 32-bit signed integer (PS3.5 6.2)
IS_MIN, IS_MAX = -(2**31), 2**31 - 1


def header_from(
    ds: Dataset, transfer_syntax_uid: str, pixel: PixelDataLayout | None
) -> InstanceHeader:
    uids = {}
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = element_text(ds, keyword)
        if not value:
            raise InvalidInstanceError(DATASET_DOES_NOT_MATCH_SOP_CLASS, f"{keyword} is missing")
        if len(value) > UID_MAX_CHARS or not UID_PATTERN.fullmatch(value):
            raise InvalidInstanceError(
                DATASET_DOES_NOT_MATCH_SOP_CLASS, f"{keyword} {value[:80]!r} is not a valid UID"
            )
        uids[keyword] = value
    frames = element_integer(ds, "NumberOfFrames", _parse_is)
    if frames is not None and frames < 1:
        raise InvalidInstanceError(
            DATASET_DOES_NOT_MATCH_SOP_CLASS, f"NumberOfFrames is {frames}, must be at least 1"
        )
    return InstanceHeader(
        sop_class_uid=uids["SOPClassUID"],
        sop_instance_uid=uids["SOPInstanceUID"],
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        transfer_syntax_uid=transfer_syntax_uid,
        modality=element_text(ds, "Modality"),
        number_of_frames=frames if frames is not None else 1,
        rows=element_integer(ds, "Rows", parse_us),
        columns=element_integer(ds, "Columns", parse_us),
        instance_number=element_integer(ds, "InstanceNumber", _parse_is, lenient=True),
        series_number=element_integer(ds, "SeriesNumber", _parse_is, lenient=True),
        series_description=element_text(ds, "SeriesDescription"),
        protocol_name=element_text(ds, "ProtocolName"),
        study_date=_date(element_text(ds, "StudyDate")),
        study_time=element_text(ds, "StudyTime"),
        study_description=element_text(ds, "StudyDescription"),
        accession_number=element_text(ds, "AccessionNumber"),
        referring_physician=element_text(ds, "ReferringPhysicianName"),
        patient_id=element_text(ds, "PatientID"),
        issuer_of_patient_id=element_text(ds, "IssuerOfPatientID"),
        patient_name=element_text(ds, "PatientName"),
        patient_birth_date=_date(element_text(ds, "PatientBirthDate")),
        patient_sex=element_text(ds, "PatientSex"),
        pixel_data=pixel,
    )


def element_text(ds: Dataset, keyword: str) -> str:
    """The element's value as text ('' when absent or undecodable; multiple values joined)."""
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed optional text value does not make the instance useless
        return ""
    if value is None:
        return ""
    if isinstance(value, list | tuple):  # MultiValue
        return "\\".join(str(v) for v in value).strip()
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip(" \x00")
    return str(value).strip(" \x00")


def _raw_bytes(ds: Dataset, keyword: str) -> bytes | None:
    if keyword not in ds:
        return None
    element = ds.get_item(keyword)
    if isinstance(element, RawDataElement):
        return element.value or b""
    value: Any = element.value
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    return str(value).encode("ascii", "replace")


def _parse_is(raw: bytes) -> int | None:
    text = raw.decode("ascii", "replace").strip(" \x00")
    if not text:
        return None
    value = int(text.split("\\")[0])
    if not IS_MIN <= value <= IS_MAX:
        # beyond what IS may hold, and beyond the database's integer columns (a 20-digit
        # Series Number made the insert fail: 0x0110 and a traceback, found by bench fuzz)
        raise ValueError(f"{value} is outside the IS range")
    return value


def parse_us(raw: bytes) -> int | None:
    if not raw:
        return None
    if len(raw) < 2:
        raise ValueError(f"{len(raw)} bytes for an US value")
    return U16.unpack_from(raw, 0)[0]


def element_integer(
    ds: Dataset, keyword: str, parse: Callable[[bytes], int | None], *, lenient: bool = False
) -> int | None:
    """Decodes an integer from the raw value, so a malformed one is reported, not guessed."""
    raw = _raw_bytes(ds, keyword)
    if raw is None:
        return None
    try:
        return parse(raw)
    except ValueError:
        if lenient:  # informative only (instance and series numbers)
            return None
        raise InvalidInstanceError(
            DATASET_DOES_NOT_MATCH_SOP_CLASS, f"{keyword} has an invalid value {raw[:32]!r}"
        ) from None


def _date(text: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date() if len(text) >= 8 else None
    except ValueError:
        return None
