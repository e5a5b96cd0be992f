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
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import shutil
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from pacs_agent.db.models import Instance, QuarantinedInstance, utcnow
from pacs_agent.dicom.validate import InstanceHeader
from pacs_agent.disk_guard import BYTES_PER_MB, disk_guard_shortfall
from pacs_agent.errors import EchoAgentError
from pacs_agent.ingest import (
    Conflict,
    ConflictError,
    ConflictKind,
    StoredFile,
    find_instance,
    new_instance_conflict,
    record_instance,
    resend_conflict,
)

log = logging.getLogger("echo_agent.store")

INCOMING_DIR_NAME = ".incoming"
QUARANTINE_DIR_NAME = "quarantine"  # under the node's home, beside the store
PARTIAL_SUFFIX = ".partial"
# Large writes in pieces, so a signal or a slow disk never sees one giant system call.
WRITE_CHUNK_BYTES = 4 * BYTES_PER_MB
_SAFE_COMPONENT = re.compile(r"[0-9][0-9.]{0,63}")
_OUT_OF_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

Buffer = bytes | bytearray | memoryview


class StoreError(EchoAgentError, RuntimeError):
    """The store could not keep an instance (I/O error); nothing of it was kept."""


class OutOfSpaceError(StoreError):
    """Keeping the instance would leave less free disk than ``dicom.min_free_disk_mb``."""


class QuarantinedError(EchoAgentError):
    """The instance was refused: it contradicts what is recorded (``kind``, see
    ``pacs_agent.ingest``). It is kept in quarantine (``relative_path`` under the node's home,
    row ``quarantine_id``); ``reason`` has no PHI."""

    def __init__(
        self, reason: str, quarantine_id: int, relative_path: str, kind: ConflictKind
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.quarantine_id = quarantine_id
        self.relative_path = relative_path
        self.kind = kind


@dataclass(frozen=True)
class InstanceStore:
    """Where instances live, and how much disk must stay free (MiB).

    ``data_dir`` is the node's home, which holds the quarantine; None: the store's parent
    folder (the default layout, ``<home>/store``).
    """

    root: Path
    min_free_disk_mb: int = 0
    data_dir: Path | None = None

    @property
    def incoming(self) -> Path:
        return self.root / INCOMING_DIR_NAME

    @property
    def home(self) -> Path:
        return self.data_dir if self.data_dir is not None else self.root.parent

    @property
    def quarantine(self) -> Path:
        return self.home / QUARANTINE_DIR_NAME


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
                    _remove(final)
                raise
            return StoreResult("stored", instance.id, final, size)
    finally:
        partial.unlink(missing_ok=True)


def quarantine_instance(
    store: InstanceStore,
    sessions: sessionmaker[Session],
    header: InstanceHeader,
    parts: Sequence[Buffer],
    calling_ae: str,
    conflict: Conflict,
) -> QuarantinedError:
    """Keeps a refused instance in the quarantine and records it; returns the error to raise.

    The file is written like a stored one (fsynced, renamed into place), so nothing is lost of
    an instance the node refused. A resend of the same bytes finds its earlier row and keeps
    no second copy, so a sender that retries does not fill the disk. Raises
    ``OutOfSpaceError``, ``StoreError`` or the database's error, having kept nothing.
    """
    size = sum(memoryview(p).nbytes for p in parts)
    shortfall = disk_guard_shortfall(store.home, store.min_free_disk_mb, size)
    if shortfall:
        raise OutOfSpaceError(shortfall)
    folder = store.quarantine
    try:
        _make_dirs(store.home, folder)
    except OSError as exc:
        raise StoreError(f"cannot create {folder}: {exc.strerror}") from exc
    partial, sha256 = _write_new(folder, parts)
    name = f"{partial.name.removesuffix(PARTIAL_SUFFIX)}.dcm"
    relative = f"{QUARANTINE_DIR_NAME}/{name}"
    try:
        with sessions() as session:
            earlier = session.scalars(
                select(QuarantinedInstance)
                .where(
                    QuarantinedInstance.sop_instance_uid == header.sop_instance_uid,
                    QuarantinedInstance.sha256 == sha256,
                )
                .order_by(QuarantinedInstance.id)
                .limit(1)
            ).one_or_none()
            if earlier is not None and (store.home / earlier.file_path).is_file():
                return QuarantinedError(
                    conflict.reason, earlier.id, earlier.file_path, conflict.kind
                )
            row = QuarantinedInstance(
                received_at=utcnow(),
                sop_instance_uid=header.sop_instance_uid,
                sop_class_uid=header.sop_class_uid,
                study_instance_uid=header.study_instance_uid,
                series_instance_uid=header.series_instance_uid,
                calling_ae=calling_ae[:16],
                reason=conflict.reason[:256],
                file_path=relative,
                file_size_bytes=size,
                sha256=sha256,
            )
            session.add(row)
            session.flush()
            final = folder / name
            try:
                os.replace(partial, final)
                _fsync_dir(folder)
            except OSError as exc:
                _remove(final)
                raise StoreError(f"cannot place {relative}: {exc.strerror}") from exc
            try:
                session.commit()
            except BaseException:
                _remove(final)
                raise
            return QuarantinedError(conflict.reason, row.id, relative, conflict.kind)
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
    return _write_new(store.incoming, parts)


def _write_new(folder: Path, parts: Sequence[Buffer]) -> tuple[Path, str]:
    """Writes and fsyncs a new partial file in ``folder``; returns it and its SHA-256.

    The hash runs in a second thread while this one writes: hashlib and os.write both release
    the GIL, so a large loop is hashed for free instead of adding a third of the write time.
    """
    path = folder / f"{uuid.uuid4().hex}{PARTIAL_SUFFIX}"
    views = [memoryview(part).cast("B") for part in parts]
    digest = hashlib.sha256()
    hasher = threading.Thread(target=_hash_into, args=(digest, views), name="echo-agent-hash")
    hasher.start()
    try:
        with open(path, "xb", buffering=0) as fh:
            for view in views:
                for start in range(0, len(view), WRITE_CHUNK_BYTES):
                    _write_all(fh.fileno(), view[start : start + WRITE_CHUNK_BYTES])
            os.fsync(fh.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)
        if exc.errno in _OUT_OF_SPACE_ERRNOS:
            raise OutOfSpaceError(f"disk full while writing: {exc.strerror}") from exc
        raise StoreError(f"cannot write {path}: {exc.strerror}") from exc
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    finally:
        hasher.join()
    return path, digest.hexdigest()


def _hash_into(digest: hashlib._Hash, views: Sequence[memoryview]) -> None:
    for view in views:
        digest.update(view)


def _write_all(fd: int, chunk: memoryview) -> None:
    written = 0
    while written < len(chunk):
        written += os.write(fd, chunk[written:])


def _place(store: InstanceStore, partial: Path, relative: str) -> Path:
    """Renames the partial file to its final name and makes the new directory entries durable."""
    final = store.root / relative
    try:
        _make_dirs(store.root, final.parent)
        os.replace(partial, final)
    except OSError as exc:
        raise StoreError(f"cannot place {relative}: {exc.strerror}") from exc
    try:
        _fsync_dir(final.parent)
    except OSError as exc:
        _remove(final)
        raise StoreError(f"cannot sync the folder of {relative}: {exc.strerror}") from exc
    return final


def _make_dirs(root: Path, target: Path) -> None:
    """Creates missing folders below ``root``, fsyncing each parent so the new entry survives."""
    missing: list[Path] = []
    current = target
    while current != root and not current.is_dir():
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue  # another association created it meanwhile
        _fsync_dir(folder.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
        _fsync_dir(path.parent)
    except OSError as exc:  # the caller is already failing; say what is left behind
        log.error("could not remove %s after a failed store: %s", path, exc.strerror)
