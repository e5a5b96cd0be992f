"""Durable files of the instance store: where they live (``InstanceStore``), and how one is
written so that it is either whole on disk or absent: a new partial file, written in chunks
and fsynced while a second thread hashes it, renamed into place, its folder fsynced.

Why a module of its own: the store (``pacs_agent.store``) and the quarantine
(``pacs_agent.store_quarantine``) write files the same way; only what they record differs.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pacs_agent.disk_guard import BYTES_PER_MB
from pacs_agent.errors import EchoAgentError

# the logger keeps the name the store has always logged under
log = logging.getLogger("echo_agent.store")

INCOMING_DIR_NAME = ".incoming"
QUARANTINE_DIR_NAME = "quarantine"  # under the node's home, beside the store
PARTIAL_SUFFIX = ".partial"
# Large writes in pieces, so a signal or a slow disk never sees one giant system call.
WRITE_CHUNK_BYTES = 4 * BYTES_PER_MB
_OUT_OF_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})

Buffer = bytes | bytearray | memoryview


class StoreError(EchoAgentError, RuntimeError):
    """The store could not keep an instance (I/O error); nothing of it was kept."""


class OutOfSpaceError(StoreError):
    """Keeping the instance would leave less free disk than ``dicom.min_free_disk_mb``."""


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


def write_new(folder: Path, parts: Sequence[Buffer]) -> tuple[Path, str]:
    """Writes and fsyncs a new partial file in ``folder``; returns it and its SHA-256.

    The hash runs in a second thread while this one writes: hashlib and os.write both release
    the GIL, so a large loop is hashed for free instead of adding a third of the write time.
    """
    path = folder / f"{uuid.uuid4().hex}{PARTIAL_SUFFIX}"
    views = [memoryview(part).cast("B") for part in parts]
    digest = hashlib.sha256()
    hasher = threading.Thread(target=hash_into, args=(digest, views), name="echo-agent-hash")
    hasher.start()
    try:
        with open(path, "xb", buffering=0) as fh:
            for view in views:
                for start in range(0, len(view), WRITE_CHUNK_BYTES):
                    write_all(fh.fileno(), view[start : start + WRITE_CHUNK_BYTES])
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


def hash_into(digest: hashlib._Hash, views: Sequence[memoryview]) -> None:
    """Feeds ``views`` to ``digest`` in order (run on the hashing thread)."""
    for view in views:
        digest.update(view)


def write_all(fd: int, chunk: memoryview) -> None:
    """Writes all of ``chunk``: ``os.write`` may write less than it is given."""
    written = 0
    while written < len(chunk):
        written += os.write(fd, chunk[written:])


def make_dirs(root: Path, target: Path) -> None:
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
        fsync_dir(folder.parent)


def fsync_dir(folder: Path) -> None:
    """Makes ``folder``'s entries (a new or removed file) durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_durably(path: Path) -> None:
    """Removes ``path`` and syncs its folder; a failure is logged, not raised (the caller is
    already failing)."""
    try:
        path.unlink(missing_ok=True)
        fsync_dir(path.parent)
    except OSError as exc:  # the caller is already failing; say what is left behind
        log.error("could not remove %s after a failed store: %s", path, exc.strerror)
