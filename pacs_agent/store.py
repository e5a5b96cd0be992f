"""The durable, idempotent instance store: files under ``<store>/<study>/<series>/<sop>.dcm``.

An instance is acknowledged only once it is on disk and in the database, and never half: the
bytes go to a temporary file in ``<store>/.incoming``, are fsynced, and are renamed into place
while the database transaction that records them is open; the directory is fsynced and the
transaction committed. If the commit fails the file is removed again. The unique SOP Instance
UID in the database decides between two associations sending the same instance at once: the
second insert fails (PostgreSQL makes it wait for the first to commit, SQLite serialises the
writers), so only the first renames its file into place.

An instance that contradicts what is recorded (``pacs_agent.ingest.Conflict``: its patient is
not its study's, its series belongs to another study, or its SOP Instance UID is already stored
for another patient or study) joins no study: it is written to ``<home>/quarantine`` instead,
recorded as a ``QuarantinedInstance`` for an admin, and ``QuarantinedError`` tells the caller
to refuse it.

The parts: ``pacs_agent.store_files`` (the store's layout and durable file writing) and
``pacs_agent.store_quarantine`` (refused instances); this module stores instances and keeps
every name it always exported.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from pacs_agent.db.models import Instance
from pacs_agent.dicom.validate import InstanceHeader
from pacs_agent.disk_guard import disk_guard_shortfall
from pacs_agent.ingest import (
    ConflictError,
    StoredFile,
    find_instance,
    new_instance_conflict,
    record_instance,
    resend_conflict,
)
from pacs_agent.store_files import (
    INCOMING_DIR_NAME,
    PARTIAL_SUFFIX,
    QUARANTINE_DIR_NAME,
    WRITE_CHUNK_BYTES,
    Buffer,
    InstanceStore,
    OutOfSpaceError,
    StoreError,
    fsync_dir,
    log,
    make_dirs,
    remove_durably,
    write_new,
)
from pacs_agent.store_quarantine import QuarantinedError, quarantine_instance

__all__ = [
    "INCOMING_DIR_NAME",
    "PARTIAL_SUFFIX",
    "QUARANTINE_DIR_NAME",
    "WRITE_CHUNK_BYTES",
    "Buffer",
    "InstanceStore",
    "OutOfSpaceError",
    "QuarantinedError",
    "StoreError",
    "StoreResult",
    "check_free_space",
    "free_bytes",
    "instance_relative_path",
    "open_store",
    "quarantine_instance",
    "store_instance",
    "sweep_partial_files",
]

_SAFE_COMPONENT = re.compile(r"[0-9][0-9.]{0,63}")


@dataclass(frozen=True)
class StoreResult:
    """``outcome`` "duplicate": the SOP instance was already stored; ``path`` is that file."""

    outcome: Literal["stored", "duplicate"]
    instance_id: int
    path: Path
    size_bytes: int

    @property
    def stored(self) -> bool:
        return self.outcome == "stored"


def open_store(
    root: Path, min_free_disk_mb: int = 0, data_dir: Path | None = None
) -> InstanceStore:
    """Creates the store's folders and removes partial files a killed process left behind.

    Only the node's listener writes to ``.incoming`` and the quarantine, so at start nothing
    in them is in use.
    """
    store = InstanceStore(
        root=root.resolve(),
        min_free_disk_mb=min_free_disk_mb,
        data_dir=None if data_dir is None else data_dir.resolve(),
    )
    store.incoming.mkdir(parents=True, exist_ok=True)
    removed = sweep_partial_files(store)
    if removed:
        log.warning("removed %d partial file(s) left in %s", removed, store.incoming)
    return store


def sweep_partial_files(store: InstanceStore) -> int:
    """Removes the partial files in ``.incoming`` and the quarantine; returns how many."""
    removed = 0
    for folder in (store.incoming, store.quarantine):
        for path in folder.glob(f"*{PARTIAL_SUFFIX}"):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def instance_relative_path(study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
    """``<study>/<series>/<sop>.dcm``; a UID that is not a safe file name is replaced by a hash."""
    parts = [_safe_component(uid) for uid in (study_uid, series_uid)]
    return "/".join([*parts, _safe_component(sop_instance_uid) + ".dcm"])


def _safe_component(uid: str) -> str:
    if _SAFE_COMPONENT.fullmatch(uid) and ".." not in uid:
        return uid
    return "h" + hashlib.sha256(uid.encode("utf-8", "replace")).hexdigest()[:40]


def free_bytes(store: InstanceStore) -> int:
    """Free bytes on the store's file system."""
    return shutil.disk_usage(store.root).free


def check_free_space(store: InstanceStore, incoming_bytes: int) -> None:
    """Raises ``OutOfSpaceError`` if storing ``incoming_bytes`` would cross the free-space floor."""
    shortfall = disk_guard_shortfall(store.root, store.min_free_disk_mb, incoming_bytes)
    if shortfall:
        raise OutOfSpaceError(shortfall)


def store_instance(
    store: InstanceStore,
    sessions: sessionmaker[Session],
    header: InstanceHeader,
    parts: Sequence[Buffer],
    calling_ae: str = "",
) -> StoreResult:
    """Keeps one instance, whose file is the concatenation of ``parts``, exactly once.

    ``parts`` are typically the encoded File Meta Information and the dataset as received. A
    SOP Instance UID already recorded under the same study and patient is a duplicate: nothing
    is written and the existing row is returned. Raises ``OutOfSpaceError``, ``StoreError`` or
    the database's SQLAlchemy error, having kept nothing, and ``QuarantinedError`` when the
    instance contradicts what is recorded (``pacs_agent.ingest.Conflict``): then nothing of it
    is in the store, only in the quarantine.
    """
    size = sum(memoryview(p).nbytes for p in parts)
    with sessions() as session:
        existing = find_instance(session, header.sop_instance_uid)
        if existing is not None:
            conflict = resend_conflict(session, existing, header)
            if conflict is None:
                return _duplicate(store, existing, size, None)
        else:
            # the common case, before a loop is written: a study already known under another
            # patient, or a series already known in another study
            conflict = new_instance_conflict(session, header)
    if conflict is not None:
        raise quarantine_instance(store, sessions, header, parts, calling_ae, conflict)
    check_free_space(store, size)
    partial, sha256 = _write_partial(store, parts)
    relative = instance_relative_path(
        header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
    )
    conflict = None
    try:
        with sessions() as session:
            try:
                instance = record_instance(
                    session, header, StoredFile(relative, size, sha256), calling_ae
                )
            except ConflictError as exc:
                # the study or series was created meanwhile, by another association, for
                # another patient or study
                session.rollback()
                conflict = exc.conflict
            except IntegrityError:
                session.rollback()
                existing = find_instance(session, header.sop_instance_uid)
                if existing is None:
                    raise
                log.debug(
                    "SOP instance %s was recorded by another association meanwhile",
                    header.sop_instance_uid,
                )
                conflict = resend_conflict(session, existing, header)
                if conflict is None:
                    return _duplicate(store, existing, size, sha256)
                session.rollback()  # end the read before the quarantine writes
            if conflict is not None:
                raise quarantine_instance(store, sessions, header, parts, calling_ae, conflict)
            final = _place(store, partial, relative)
            try:
                session.commit()
            except BaseException:
                outcome = _commit_outcome(sessions, header.sop_instance_uid, sha256)
                if outcome == "recorded":
                    log.warning("commit of %s reported a failure but went through", relative)
                    return StoreResult("stored", instance.id, final, size)
                if outcome == "absent":
                    remove_durably(final)
                raise
            return StoreResult("stored", instance.id, final, size)
    finally:
        partial.unlink(missing_ok=True)


def _commit_outcome(
    sessions: sessionmaker[Session], sop_instance_uid: str, sha256: str
) -> Literal["recorded", "absent", "unknown"]:
    """After a failed commit: did it go through anyway (the connection broke afterwards)?

    When the database cannot tell, the file stays: a file without a row is harmless and a
    resend overwrites it, while a row without its file would be taken as stored forever.
    """
    try:
        with sessions() as session:
            row = find_instance(session, sop_instance_uid)
    except Exception as exc:
        log.error("cannot tell whether %s was recorded (%s); its file stays", sop_instance_uid, exc)
        return "unknown"
    return "recorded" if row is not None and row.sha256 == sha256 else "absent"


def _duplicate(
    store: InstanceStore, existing: Instance, size: int, sha256: str | None
) -> StoreResult:
    differs = existing.file_size_bytes != size or (sha256 is not None and existing.sha256 != sha256)
    if differs:
        log.warning(
            "SOP instance %s received again with other bytes (another transfer syntax?); "
            "the first copy is kept",
            existing.sop_instance_uid,
        )
    path = store.root / existing.file_path
    return StoreResult("duplicate", existing.id, path, existing.file_size_bytes)


def _write_partial(store: InstanceStore, parts: Sequence[Buffer]) -> tuple[Path, str]:
    """Writes and fsyncs a new file in ``.incoming``; returns it and the SHA-256 of its bytes."""
    return write_new(store.incoming, parts)


def _place(store: InstanceStore, partial: Path, relative: str) -> Path:
    """Renames the partial file to its final name and makes the new directory entries durable."""
    final = store.root / relative
    try:
        make_dirs(store.root, final.parent)
        os.replace(partial, final)
    except OSError as exc:
        raise StoreError(f"cannot place {relative}: {exc.strerror}") from exc
    try:
        fsync_dir(final.parent)
    except OSError as exc:
        remove_durably(final)
        raise StoreError(f"cannot sync the folder of {relative}: {exc.strerror}") from exc
    return final
