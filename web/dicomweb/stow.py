"""STOW-RS (PS3.18 10.5): instances stored through the DICOM listener's own store handler.

Every part of a ``multipart/related; type="application/dicom"`` request goes through
``StoreService`` (``inspect_dataset``, ``store_instance`` with its idempotency and quarantine,
the same log lines), so a part is refused with exactly the status C-STORE would answer (0xC210,
0xA900, 0xC230..). The answer is the PS3.18 response dataset in DICOM JSON:
``ReferencedSOPSequence`` for what is stored, ``FailedSOPSequence`` with the status as
``FailureReason`` for the rest; HTTP 200 when all were stored, 202 when some, 409 when none.
"""

from __future__ import annotations

import contextlib
import mmap
import struct
import tempfile
import time
from dataclasses import dataclass
from io import BytesIO
from typing import IO

from flask import Response, current_app, request
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import parse_options_header

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
from pacs_agent.logcontext import log_context
from pacs_agent.store import InstanceStore
from web import audit
from web.dicomweb.access import may_store, who
from web.dicomweb.blueprint import (
    DICOM,
    SPOOL_CHUNK_BYTES,
    STORE_KEY,
    bp,
    log,
    node_config,
)
from web.dicomweb.multipart import (
    MultipartError,
    part_content_type,
    split_multipart,
)
from web.dicomweb.responses import dicom_json_response, error_response

# what Instance.calling_ae records for an instance stored by STOW-RS (the audit names the token)
CALLING_AE = "DICOMWEB"
# PS3.18 10.5.3 failure reasons beside the C-STORE statuses: what an association would have
# refused at negotiation, before any status
SOP_CLASS_NOT_SUPPORTED = 0x0122
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
# an instance of another study than the URL names: it does not match the request, as a dataset
# whose UIDs differ from its C-STORE request's (0xA900)
WRONG_STUDY = DATASET_DOES_NOT_MATCH_SOP_CLASS
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})  # fmt: skip


@dataclass(frozen=True)
class PartOutcome:
    sop_class_uid: str
    sop_instance_uid: str
    status: int


@bp.post("/studies")
@bp.post("/studies/<study_uid>")
def store_instances(study_uid: str | None = None) -> Response:
    if not may_store():
        return error_response(403, "storing needs a pacs token or an admin login")
    mimetype, params = parse_options_header(request.headers.get("Content-Type", ""))
    if mimetype.lower() != "multipart/related" or params.get("type", DICOM).lower() != DICOM:
        return error_response(
            415, 'a STOW-RS request is multipart/related; type="application/dicom"'
        )
    boundary = params.get("boundary", "")
    if not boundary:
        return error_response(400, "multipart/related without a boundary")
    limit_bytes = node_config().dicomweb.max_request_mb * BYTES_PER_MB
    request.max_content_length = limit_bytes  # the app's 1 MiB form limit is not for this
    store: InstanceStore = current_app.extensions[STORE_KEY]
    store.incoming.mkdir(parents=True, exist_ok=True)
    shortfall = disk_guard_shortfall(store.root, store.min_free_disk_mb,
                                     request.content_length or 0)  # fmt: skip
    if shortfall:
        response = error_response(503, f"the node is short of disk space: {shortfall}")
        response.headers["Retry-After"] = "300"
        return response
    started = time.perf_counter()
    # spooled to an unnamed file beside the store (no RAM for a large loop, nothing left after
    # a crash), then read through a memory map: each part reaches the store as a view
    with tempfile.TemporaryFile(dir=store.incoming) as spool:
        try:
            size = _spool(request.stream, spool, limit_bytes)
        except RequestEntityTooLarge:
            return error_response(
                413, f"request larger than dicomweb.max_request_mb ({limit_bytes} B)"
            )
        if size == 0:
            return error_response(400, "empty request body")
        body = mmap.mmap(spool.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            outcomes = _store_parts(body, boundary.encode("latin-1"), study_uid, store)
        except MultipartError as exc:
            return error_response(400, f"malformed multipart/related body: {exc}")
        finally:
            with contextlib.suppress(BufferError):  # a view still referenced: closed by GC
                body.close()
    stored = [o for o in outcomes if o.status == SUCCESS]
    failed = [o for o in outcomes if o.status != SUCCESS]
    log.info("STOW-RS by %s: %d stored, %d refused (%d bytes in %.2f s)",
             who(), len(stored), len(failed), size, time.perf_counter() - started)  # fmt: skip
    audit.record(
        "dicomweb_store",
        target_type="study" if study_uid else "",
        target_id=study_uid or "",
        detail={"stored": len(stored), "failed": [f"{o.status:04X}" for o in failed]},
        username=who(),
    )
    status = 200 if not failed else (202 if stored else 409)
    return dicom_json_response(_store_response(stored, failed), status)


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
    part_type = part_content_type(headers_raw)
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
