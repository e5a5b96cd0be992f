"""DICOMweb on the node (PS3.18): STOW-RS in, QIDO-RS and WADO-RS out, at ``/dicomweb``.

STOW-RS is another way in for the loops a PACS sends by C-STORE, and it takes the very same
path: every part of a ``multipart/related; type="application/dicom"`` request goes through the
DICOM listener's own store handler (``StoreService``: ``inspect_dataset``, ``store_instance``
with its idempotency and quarantine, the same log lines), so a part is refused with exactly the
status C-STORE would answer (0xC210, 0xA900, 0xC230..). The answer is the PS3.18 response
dataset in DICOM JSON: ``ReferencedSOPSequence`` for what is stored, ``FailedSOPSequence`` with
the status as ``FailureReason`` for the rest; HTTP 200 when all were stored, 202 when some, 409
when none (PS3.18 10.5.3). A stored instance joins its study like one sent by C-STORE, and the
assembler, which watches the database, judges and queues it when the study has settled.

QIDO-RS and WADO-RS serve studies, series and instances: the received ones and the node's own
DICOM results (SEG, SR, secondary capture, encapsulated PDF), so a DICOMweb viewer shows both.
Instances are returned as stored (``transfer-syntax=*``): the node does not transcode.

Who may: machine clients present a bearer token (``echo-agent token add NAME --role``):
``pacs`` stores and reads, ``viewer`` reads. A reviewer's browser session works as well (any
role reads, ``admin`` stores; a store then needs the CSRF header like any other change).
Every read of a study and every store is in the audit trail; no patient name is logged.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import mmap
import re
import struct
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from io import BytesIO
from pathlib import Path
from typing import IO, Any

import pydicom
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request, url_for
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import parse_options_header

from pacs_agent.api_tokens import TokenHolder, find_token
from pacs_agent.config import Config
from pacs_agent.db.models import Artifact, Instance, Patient, Series, Study
from pacs_agent.dicom import contexts
from pacs_agent.dicom.scp import StoreService
from pacs_agent.dicom.status import (
    CANNOT_PARSE,
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    SUCCESS,
)
from pacs_agent.dicom.validate import InvalidInstanceError, inspect_dataset
from pacs_agent.disk_guard import BYTES_PER_MB, disk_guard_shortfall
from pacs_agent.export import artifact_path
from pacs_agent.logcontext import log_context
from pacs_agent.store import InstanceStore
from web import audit, auth
from web.db import db

log = logging.getLogger("echo_agent.dicomweb")

bp = Blueprint("dicomweb", __name__, url_prefix="/dicomweb")

PREFIX = "/dicomweb"
DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
# what Instance.calling_ae records for an instance stored by STOW-RS (the audit names the token)
CALLING_AE = "DICOMWEB"
STORE_KEY = "echo_agent_dicomweb_store"
SPOOL_CHUNK_BYTES = BYTES_PER_MB
MAX_RESULTS = 1000
# PS3.18 10.5.3 failure reasons beside the C-STORE statuses: what an association would have
# refused at negotiation, before any status
SOP_CLASS_NOT_SUPPORTED = 0x0122
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
# an instance of another study than the URL names: it does not match the request, as a dataset
# whose UIDs differ from its C-STORE request's (0xA900)
WRONG_STUDY = DATASET_DOES_NOT_MATCH_SOP_CLASS
# values of these VRs are bulk data: left out of the metadata (PS3.18 F.2.7)
BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
BULK_MIN_BYTES = 1024
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})  # fmt: skip


class MultipartError(ValueError):
    """The request body is not the multipart/related message its Content-Type announces."""


# --- authentication --------------------------------------------------------------------------


def init_app(app: Flask) -> None:
    """Registers the blueprint and its bearer-token check, which must run before ``auth.guard``
    (``web.app`` calls this between the two); nothing when ``dicomweb.enabled`` is false."""
    config: Config = app.config["ECHO_AGENT_CONFIG"]
    if not config.dicomweb.enabled:
        return
    app.extensions[STORE_KEY] = InstanceStore(
        root=config.store_path,
        min_free_disk_mb=config.dicom.min_free_disk_mb,
        data_dir=config.home_path,
    )
    app.before_request(authenticate)
    app.register_blueprint(bp)


def authenticate() -> Response | None:
    """Under /dicomweb: a bearer token, else the reviewer's session; answers 401 (with a
    ``WWW-Authenticate`` challenge) rather than the login redirect a script cannot follow."""
    if request.path != PREFIX and not request.path.startswith(PREFIX + "/"):
        return None
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, secret = header.partition(" ")
        holder = find_token(db(), secret.strip()) if scheme.lower() == "bearer" else None
        db().rollback()  # end the read: SQLite keeps one writer, and a store follows
        if holder is None:
            log.warning("DICOMweb request with an unknown or revoked token refused")
            return _unauthorized('error="invalid_token"')
        g.api_token = holder
    refused = auth.guard()
    if refused is None:
        return None
    if g.get("user") is None and g.get("api_token") is None:
        return _unauthorized()
    return _error(403, "missing or wrong CSRF token")


def _unauthorized(detail: str = "") -> Response:
    response = jsonify(error="authentication required: a bearer token or a login")
    response.status_code = 401
    challenge = 'Bearer realm="echo-agent dicomweb"'
    response.headers["WWW-Authenticate"] = f"{challenge}, {detail}" if detail else challenge
    return response


def _error(status: int, message: str) -> Response:
    response = jsonify(error=message)
    response.status_code = status
    return response


def _holder() -> TokenHolder | None:
    return g.get("api_token")


def _may_store() -> bool:
    holder = _holder()
    if holder is not None:
        return holder.role == "pacs"
    user = g.get("user")
    return user is not None and user.role == "admin"


def _who() -> str:
    holder = _holder()
    return f"token:{holder.name}" if holder is not None else g.user.username


def _record_view(study_id: int, via: str) -> None:
    """A read of a study, like the review pages' views: once a minute per reader and study."""
    holder = _holder()
    if holder is None:
        audit.record_view(study_id, via)
        return
    recent: audit.RecentViews = current_app.config["ECHO_AGENT_RECENT_VIEWS"]
    if recent.first_in_window(-holder.token_id, study_id):  # negative: never a user's id
        audit.record("view", study_id=study_id, target_type="study", target_id=study_id,
                     detail={"via": via}, username=_who(), user_id=None)  # fmt: skip


def _config() -> Config:
    return current_app.config["ECHO_AGENT_CONFIG"]


# --- STOW-RS ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartOutcome:
    sop_class_uid: str
    sop_instance_uid: str
    status: int


@bp.post("/studies")
@bp.post("/studies/<study_uid>")
def store_instances(study_uid: str | None = None) -> Response:
    if not _may_store():
        return _error(403, "storing needs a pacs token or an admin login")
    mimetype, params = parse_options_header(request.headers.get("Content-Type", ""))
    if mimetype.lower() != "multipart/related" or params.get("type", DICOM).lower() != DICOM:
        return _error(415, 'a STOW-RS request is multipart/related; type="application/dicom"')
    boundary = params.get("boundary", "")
    if not boundary:
        return _error(400, "multipart/related without a boundary")
    limit_bytes = _config().dicomweb.max_request_mb * BYTES_PER_MB
    request.max_content_length = limit_bytes  # the app's 1 MiB form limit is not for this
    store: InstanceStore = current_app.extensions[STORE_KEY]
    store.incoming.mkdir(parents=True, exist_ok=True)
    shortfall = disk_guard_shortfall(store.root, store.min_free_disk_mb,
                                     request.content_length or 0)  # fmt: skip
    if shortfall:
        response = _error(503, f"the node is short of disk space: {shortfall}")
        response.headers["Retry-After"] = "300"
        return response
    started = time.perf_counter()
    # spooled to an unnamed file beside the store (no RAM for a large loop, nothing left after
    # a crash), then read through a memory map: each part reaches the store as a view
    with tempfile.TemporaryFile(dir=store.incoming) as spool:
        try:
            size = _spool(request.stream, spool, limit_bytes)
        except RequestEntityTooLarge:
            return _error(413, f"request larger than dicomweb.max_request_mb ({limit_bytes} B)")
        if size == 0:
            return _error(400, "empty request body")
        body = mmap.mmap(spool.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            outcomes = _store_parts(body, boundary.encode("latin-1"), study_uid, store)
        except MultipartError as exc:
            return _error(400, f"malformed multipart/related body: {exc}")
        finally:
            with contextlib.suppress(BufferError):  # a view still referenced: closed by GC
                body.close()
    stored = [o for o in outcomes if o.status == SUCCESS]
    failed = [o for o in outcomes if o.status != SUCCESS]
    log.info("STOW-RS by %s: %d stored, %d refused (%d bytes in %.2f s)",
             _who(), len(stored), len(failed), size, time.perf_counter() - started)  # fmt: skip
    audit.record(
        "dicomweb_store",
        target_type="study" if study_uid else "",
        target_id=study_uid or "",
        detail={"stored": len(stored), "failed": [f"{o.status:04X}" for o in failed]},
        username=_who(),
    )
    status = 200 if not failed else (202 if stored else 409)
    return _dicom_json(_store_response(stored, failed), status)


def _spool(stream: IO[bytes], spool: IO[bytes], limit_bytes: int) -> int:
    size = 0
    while chunk := stream.read(SPOOL_CHUNK_BYTES):
        size += len(chunk)
        if size > limit_bytes:  # a chunked body has no Content-Length to refuse up front
            raise RequestEntityTooLarge()
        spool.write(chunk)
    spool.flush()
    return size


def _store_parts(
    body: mmap.mmap, boundary: bytes, study_uid: str | None, store: InstanceStore
) -> list[PartOutcome]:
    service = StoreService(store=store, sessions=current_app.config["ECHO_AGENT_SESSION_FACTORY"])
    parts = list(split_multipart(body, boundary))  # the whole body is sound before any store
    outcomes = []
    whole = memoryview(body)
    try:
        for headers_raw, start, end in parts:
            with whole[start:end] as content:
                outcomes.append(_store_part(service, headers_raw, content, study_uid))
    finally:
        whole.release()
    return outcomes


def _store_part(
    service: StoreService, headers_raw: bytes, content: memoryview, study_uid: str | None
) -> PartOutcome:
    part_type = _part_content_type(headers_raw)
    if part_type not in ("", DICOM):
        log.warning("STOW-RS part of type %r refused", part_type[:64])
        return PartOutcome("", "", CANNOT_UNDERSTAND)
    try:
        sop_class, sop_instance, syntax, offset = read_file_meta(content)
    except ValueError as exc:
        log.warning("STOW-RS part refused (0x%04X): %s", CANNOT_PARSE, exc)
        return PartOutcome("", "", CANNOT_PARSE)
    if sop_class not in contexts.STORAGE_SOP_CLASSES:
        log.warning("STOW-RS SOP instance %s refused: SOP class %s not supported",
                    sop_instance, sop_class)  # fmt: skip
        return PartOutcome(sop_class, sop_instance, SOP_CLASS_NOT_SUPPORTED)
    if syntax not in contexts.accepted_transfer_syntaxes(sop_class):
        log.warning("STOW-RS SOP instance %s refused: transfer syntax %s not accepted for %s",
                    sop_instance, syntax, contexts.sop_class_name(sop_class))  # fmt: skip
        return PartOutcome(sop_class, sop_instance, TRANSFER_SYNTAX_NOT_SUPPORTED)
    with content[offset:] as dataset:
        found_study = _study_of(dataset, syntax, sop_class, sop_instance) if study_uid else None
        if found_study not in (None, study_uid):
            log.warning("STOW-RS SOP instance %s refused: not in study %s", sop_instance,
                        study_uid)  # fmt: skip
            return PartOutcome(sop_class, sop_instance, WRONG_STUDY)
        # the DICOM listener's own handler: same checks, store, statuses and log lines
        with log_context(instance_uid=sop_instance):
            answer = service._store(
                dataset, syntax, sop_class, sop_instance, CALLING_AE, time.perf_counter()
            )
    return PartOutcome(sop_class, sop_instance, int(answer.Status))


def _study_of(dataset: memoryview, syntax: str, sop_class: str, sop_instance: str) -> str | None:
    """The dataset's Study Instance UID; None when it fails validation (the store handler then
    refuses it with its own status)."""
    try:
        return inspect_dataset(dataset, syntax, sop_class, sop_instance).study_instance_uid
    except InvalidInstanceError:
        return None


def split_multipart(body: mmap.mmap | bytes, boundary: bytes) -> Iterator[tuple[bytes, int, int]]:
    """(part headers, content start, content end) of each body part (RFC 2046 5.1.1), found
    without copying the contents: a part of several hundred MB stays in the file."""
    marker = b"--" + boundary
    delimiter = b"\r\n" + marker
    pos = body.find(marker)
    if pos < 0 or (pos > 0 and (pos < 2 or body[pos - 2 : pos] != b"\r\n")):
        raise MultipartError("no opening boundary")
    pos += len(marker)
    while True:
        if body[pos : pos + 2] == b"--":
            return  # the close delimiter
        line_end = body.find(b"\r\n", pos)
        if line_end < 0 or body[pos:line_end].strip(b" \t"):
            raise MultipartError("boundary line not followed by CRLF")
        headers_end = body.find(b"\r\n\r\n", line_end)  # == line_end: a part without headers
        if headers_end < 0:
            raise MultipartError("part headers do not end")
        start = headers_end + 4
        end = body.find(delimiter, start)
        if end < 0:
            raise MultipartError("part does not end with a boundary")
        yield bytes(body[line_end + 2 : headers_end]), start, end
        pos = end + len(delimiter)


def _part_content_type(headers_raw: bytes) -> str:
    for line in headers_raw.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-type":
            return parse_options_header(value.decode("latin-1").strip())[0]
    return ""


def read_file_meta(content: memoryview) -> tuple[str, str, str, int]:
    """(SOP Class UID, SOP Instance UID, Transfer Syntax UID, dataset offset) of a DICOM Part
    10 file. The File Meta group is walked element by element (explicit VR little endian,
    PS3.10 7.1), so a file without the group length element is read too; ValueError when it
    is not a Part 10 file."""
    if len(content) < 132 or bytes(content[128:132]) != b"DICM":
        raise ValueError("not a DICOM Part 10 file (no DICM prefix)")
    pos = 132
    while pos + 8 <= len(content) and _U16.unpack_from(content, pos)[0] == 0x0002:
        vr = bytes(content[pos + 4 : pos + 6])
        if vr in _LONG_VRS:
            if pos + 12 > len(content):
                break
            pos += 12 + _U32.unpack_from(content, pos + 8)[0]
        else:
            pos += 8 + _U16.unpack_from(content, pos + 6)[0]
    if pos > len(content) or pos == 132:
        raise ValueError("File Meta Information missing or cut short")
    try:
        meta = read_dataset(BytesIO(bytes(content[132:pos])), False, True)
        values = tuple(
            str(meta.get(keyword, "") or "").strip("\0 ")
            for keyword in (
                "MediaStorageSOPClassUID",
                "MediaStorageSOPInstanceUID",
                "TransferSyntaxUID",
            )
        )
    except Exception as exc:  # pydicom raises many types for malformed input
        raise ValueError(f"File Meta Information cannot be decoded: {exc}") from None
    if not all(values):
        raise ValueError("File Meta Information lacks the SOP class, instance or syntax")
    return values[0], values[1], values[2], pos


def _store_response(stored: list[PartOutcome], failed: list[PartOutcome]) -> Dataset:
    """The Store Instances Response Module (PS3.18 10.5.3.2)."""
    answer = Dataset()
    if failed:
        items = []
        for outcome in failed:
            item = Dataset()
            item.ReferencedSOPClassUID = outcome.sop_class_uid
            item.ReferencedSOPInstanceUID = outcome.sop_instance_uid
            item.FailureReason = outcome.status
            items.append(item)
        answer.FailedSOPSequence = items
    if stored:
        references = []
        for outcome in stored:
            item = Dataset()
            item.ReferencedSOPClassUID = outcome.sop_class_uid
            item.ReferencedSOPInstanceUID = outcome.sop_instance_uid
            references.append(item)
        answer.ReferencedSOPSequence = references
    return answer


# --- what is served --------------------------------------------------------------------------


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


def _served(session: Session, config: Config, study_ids: list[int]) -> dict[int, list[Served]]:
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


def _study_instances(study_uid: str) -> tuple[Study, Patient, list[Served]] | None:
    found = _study(study_uid)
    if found is None:
        return None
    study, patient = found
    return study, patient, _served(db(), _config(), [study.id])[study.id]


# --- DICOM JSON ------------------------------------------------------------------------------


def _el(vr: str, *values: Any) -> dict[str, Any]:
    """One attribute in DICOM JSON (PS3.18 F.2); an empty value is present without ``Value``."""
    kept = [v for v in values if v is not None and v != ""]
    return {"vr": vr, "Value": kept} if kept else {"vr": vr}


def _pn(name: str) -> dict[str, Any]:
    return {"vr": "PN", "Value": [{"Alphabetic": name}]} if name else {"vr": "PN"}


def _study_json(study: Study, patient: Patient, served: list[Served]) -> dict[str, Any]:
    modalities = sorted({s.modality for s in served if s.modality})
    return {
        "00080020": _el("DA", study.study_date.strftime("%Y%m%d") if study.study_date else None),
        "00080030": _el("TM", study.study_time),
        "00080050": _el("SH", study.accession_number),
        "00080061": _el("CS", *modalities),
        "00080090": _pn(study.referring_physician),
        "00081030": _el("LO", study.description),
        "00081190": _el(
            "UR",
            url_for("dicomweb.retrieve_study", study_uid=study.study_instance_uid, _external=True),
        ),
        "00100010": _pn(patient.name),
        "00100020": _el("LO", patient.patient_id),
        "00100021": _el("LO", patient.issuer),
        "00100030": _el(
            "DA", patient.birth_date.strftime("%Y%m%d") if patient.birth_date else None
        ),
        "00100040": _el("CS", patient.sex),
        "0020000D": _el("UI", study.study_instance_uid),
        "00201206": _el("IS", len({s.series_uid for s in served})),
        "00201208": _el("IS", len(served)),
    }


def _series_json(study: Study, series: list[Served]) -> dict[str, Any]:
    first = series[0]
    return {
        "00080060": _el("CS", first.modality),
        "0008103E": _el("LO", first.series_description),
        "00081190": _el(
            "UR",
            url_for(
                "dicomweb.retrieve_series",
                study_uid=study.study_instance_uid,
                series_uid=first.series_uid,
                _external=True,
            ),
        ),
        "0020000D": _el("UI", study.study_instance_uid),
        "0020000E": _el("UI", first.series_uid),
        "00200011": _el("IS", first.series_number),
        "00201209": _el("IS", len(series)),
    }


def _instance_json(study: Study, item: Served) -> dict[str, Any]:
    return {
        "00080016": _el("UI", item.sop_class_uid),
        "00080018": _el("UI", item.sop_instance_uid),
        "00080060": _el("CS", item.modality),
        "00081190": _el(
            "UR",
            url_for(
                "dicomweb.retrieve_instance",
                study_uid=study.study_instance_uid,
                series_uid=item.series_uid,
                sop_uid=item.sop_instance_uid,
                _external=True,
            ),
        ),
        "00083002": _el("UI", item.transfer_syntax_uid),
        "0020000D": _el("UI", study.study_instance_uid),
        "0020000E": _el("UI", item.series_uid),
        "00200013": _el("IS", item.instance_number),
        "00280008": _el("IS", item.number_of_frames),
    }


def _dicom_json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    if isinstance(payload, Dataset):
        payload = payload.to_json_dict()
    response = jsonify(payload)
    response.status_code = status
    response.mimetype = DICOM_JSON
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _by_series(served: Iterable[Served]) -> dict[str, list[Served]]:
    grouped: dict[str, list[Served]] = {}
    for item in served:
        grouped.setdefault(item.series_uid, []).append(item)
    return grouped


# --- QIDO-RS ---------------------------------------------------------------------------------

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
        return _error(400, str(exc))
    rows = db().execute(statement.offset(query.offset).limit(query.limit)).all()
    served = _served(db(), _config(), [study.id for study, _ in rows])
    found = [_study_json(study, patient, served[study.id]) for study, patient in rows]
    audit.record("dicomweb_search", target_type="studies", detail={"results": len(found)},
                 username=_who())  # fmt: skip
    return _dicom_json(found, headers=_query_headers(query))


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
        return _error(400, str(exc))
    found = _study_instances(study_uid)
    if found is None:
        return _dicom_json([], headers=_query_headers(query))
    study, _, served = found
    answer = []
    for series_uid, items in _by_series(served).items():
        if "SeriesInstanceUID" in query.values and series_uid not in _uid_list(
            query.values["SeriesInstanceUID"]
        ):
            continue
        if query.values.get("Modality") and not _matches(query.values["Modality"],
                                                         items[0].modality):  # fmt: skip
            continue
        answer.append(_series_json(study, items))
    _record_view(study.id, "dicomweb qido")
    page = answer[query.offset : query.offset + query.limit]
    return _dicom_json(page, headers=_query_headers(query))


@bp.get("/studies/<study_uid>/instances")
@bp.get("/studies/<study_uid>/series/<series_uid>/instances")
def search_instances(study_uid: str, series_uid: str | None = None) -> Response:
    try:
        query = _query(_INSTANCE_KEYS | ({} if series_uid else _SERIES_KEYS))
    except ValueError as exc:
        return _error(400, str(exc))
    found = _study_instances(study_uid)
    if found is None:
        return _dicom_json([], headers=_query_headers(query))
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
        answer.append(_instance_json(study, item))
    _record_view(study.id, "dicomweb qido")
    page = answer[query.offset : query.offset + query.limit]
    return _dicom_json(page, headers=_query_headers(query))


# --- WADO-RS ---------------------------------------------------------------------------------


def _select(
    study_uid: str, series_uid: str | None, sop_uid: str | None
) -> tuple[Study, list[Served]] | Response:
    found = _study_instances(study_uid)
    if found is None:
        return _error(404, "no such study")
    study, _, served = found
    chosen = [
        s for s in served
        if (series_uid is None or s.series_uid == series_uid)
        and (sop_uid is None or s.sop_instance_uid == sop_uid)
    ]  # fmt: skip
    if not chosen:
        return _error(404, "no such series or instance in this study")
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
        return _error(500, "a stored file is missing; see the node's log")
    _record_view(study.id, "dicomweb wado")
    boundary = uuid.uuid4().hex
    response = Response(_multipart(items, boundary), status=200, direct_passthrough=True)
    response.headers["Content-Type"] = f'multipart/related; type="{DICOM}"; boundary={boundary}'
    response.headers["Content-Length"] = str(_multipart_length(items, boundary))
    return response


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
    return _error(406, f'instances are returned as multipart/related; type="{DICOM}" in the '
                       "transfer syntax they were stored in (transfer-syntax=*)")  # fmt: skip


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


def _part_head(item: Served, boundary: str) -> bytes:
    return (f"--{boundary}\r\nContent-Type: {DICOM}; transfer-syntax={item.transfer_syntax_uid}"
            f"\r\n\r\n").encode("ascii")  # fmt: skip


def _multipart_length(items: list[Served], boundary: str) -> int:
    close = len(f"--{boundary}--\r\n")
    return close + sum(len(_part_head(s, boundary)) + s.path.stat().st_size + 2 for s in items)


def _multipart(items: list[Served], boundary: str) -> Iterator[bytes]:
    """The stored files, byte for byte, one per part, read in pieces (a loop is large)."""
    for item in items:
        yield _part_head(item, boundary)
        with item.path.open("rb") as source:
            while chunk := source.read(SPOOL_CHUNK_BYTES):
                yield chunk
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("ascii")


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
        found["00083002"] = _el("UI", item.transfer_syntax_uid)  # Available Transfer Syntax
        answer.append(found)
    _record_view(study.id, "dicomweb metadata")
    return _dicom_json(answer)


def _drop_bulk_data(ds: Dataset) -> None:
    """Removes bulk data values (binary VRs of 1 KiB or more), nested ones too: the metadata
    describes the instance, the instance itself is one WADO-RS request away."""
    for element in list(ds):
        if element.VR == "SQ":
            for item in element.value or []:
                _drop_bulk_data(item)
        elif element.VR in BULK_VRS and len(element.value or b"") >= BULK_MIN_BYTES:
            del ds[element.tag]
