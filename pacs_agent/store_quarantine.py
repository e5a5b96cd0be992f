"""The quarantine: an instance that contradicts what is recorded (``pacs_agent.ingest.Conflict``)
is kept under ``<home>/quarantine``, recorded as a ``QuarantinedInstance`` for an admin, and
refused with ``QuarantinedError``.

Why a module of its own: a refused instance joins no study and is written and recorded by
other rules than a stored one (deduplicated by its bytes, not by its SOP Instance UID).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from pacs_agent.db.models import QuarantinedInstance, utcnow
from pacs_agent.dicom.validate import InstanceHeader
from pacs_agent.disk_guard import disk_guard_shortfall
from pacs_agent.errors import EchoAgentError
from pacs_agent.ingest import Conflict, ConflictKind
from pacs_agent.store_files import (
    PARTIAL_SUFFIX,
    QUARANTINE_DIR_NAME,
    Buffer,
    InstanceStore,
    OutOfSpaceError,
    StoreError,
    fsync_dir,
    make_dirs,
    remove_durably,
    write_new,
)


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
        make_dirs(store.home, folder)
    except OSError as exc:
        raise StoreError(f"cannot create {folder}: {exc.strerror}") from exc
    partial, sha256 = write_new(folder, parts)
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
                fsync_dir(folder)
            except OSError as exc:
                remove_durably(final)
                raise StoreError(f"cannot place {relative}: {exc.strerror}") from exc
            try:
                session.commit()
            except BaseException:
                remove_durably(final)
                raise
            return QuarantinedError(conflict.reason, row.id, relative, conflict.kind)
    finally:
        partial.unlink(missing_ok=True)
