"""Sending fuzz cases: raw bytes by C-STORE over pynetdicom associations to the node, C-ECHO
after each, and what each case's outcome is called.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID
from pynetdicom import AE, build_context
from pynetdicom import _config as pynetdicom_config
from pynetdicom import association as pynetdicom_association
from pynetdicom.association import Association
from pynetdicom.status import code_to_category

from echo_agent.bench.fuzz_mutations import (
    Mutant,
)
from pacs_agent.dicom import contexts

# C-STOREs per association before it is released and a new one opened
STORES_PER_ASSOCIATION = 25
# client timeouts: a node that stops answering ends the case, not the run
ACSE_TIMEOUT_S = 10.0
DIMSE_TIMEOUT_S = 20.0
NETWORK_TIMEOUT_S = 20.0
CALLING_AE = "FUZZSCU"
CALLED_AE = "ECHOAGENT"
STORED = "stored"
REFUSED = "refused"
WARNING = "warning"
NOT_SENT = "not sent"
NO_RESPONSE = "no response"


class Sender:
    """pynetdicom associations to the node: raw bytes by C-STORE, C-ECHO after each."""

    def __init__(self, sop_classes: Sequence[str], syntaxes: Sequence[str]) -> None:
        self._ae = AE(ae_title=CALLING_AE)
        self._ae.acse_timeout = ACSE_TIMEOUT_S
        self._ae.dimse_timeout = DIMSE_TIMEOUT_S
        self._ae.network_timeout = NETWORK_TIMEOUT_S
        # proposed per association (``associate(contexts=...)``); the AE's own list stays empty
        self._contexts = [build_context(contexts.VERIFICATION_SOP_CLASS)] + [
            build_context(sop_class, syntax) for sop_class in sop_classes for syntax in syntaxes
        ]
        self._assoc: Association | None = None
        self._stores = 0
        self.port = 0

    def _association(self) -> Association | None:
        """The association in use, or a new one after STORES_PER_ASSOCIATION C-STOREs or
        when the last one ended; None when the node does not accept one."""
        assoc = self._assoc
        if assoc is not None and assoc.is_established:
            if self._stores < STORES_PER_ASSOCIATION:
                return assoc
            self.release()
        self._assoc = self._ae.associate(
            "127.0.0.1", self.port, contexts=self._contexts, ae_title=CALLED_AE
        )
        self._stores = 0
        return self._assoc if self._assoc.is_established else None

    def store(self, path: Path) -> tuple[str, int | None, str]:
        """(outcome, status, note): NOT_SENT when pynetdicom would not send it."""
        assoc = self._association()
        if assoc is None:
            return NO_RESPONSE, None, "association not established"
        self._stores += 1
        try:
            response = assoc.send_c_store(path)
        except (ValueError, AttributeError, TypeError, KeyError) as exc:
            return NOT_SENT, None, f"{type(exc).__name__}: {str(exc)[:120]}"
        if "Status" not in response:
            return NO_RESPONSE, None, "no C-STORE response"
        status = int(response.Status)
        category = code_to_category(status)
        if category == "Success":
            return STORED, status, ""
        comment = str(response.get("ErrorComment", "") or "")
        return (WARNING if category == "Warning" else REFUSED), status, comment

    def echo(self) -> tuple[bool, str]:
        """C-ECHO on the association in use and, when that fails, once more on a new one:
        the node may end an association, but it must go on taking new ones and answering.
        Returns (answered, why the first try failed: '' when it did not)."""
        whys = []
        for _ in range(2):
            started = time.perf_counter()
            assoc = self._association()
            if assoc is None:
                whys.append("no association accepted")
            else:
                response = assoc.send_c_echo()
                if "Status" in response and int(response.Status) == 0:
                    return True, "; ".join(whys)
                status = int(response.Status) if "Status" in response else None
                whys.append(
                    f"C-ECHO status 0x{status:04X}" if status is not None else "no C-ECHO response"
                )
            whys[-1] += f" after {time.perf_counter() - started:.1f} s"
            self.release()
        return False, "; ".join(whys)

    def release(self) -> None:
        assoc, self._assoc = self._assoc, None
        if assoc is not None and assoc.is_established:
            assoc.release()
        elif assoc is not None and assoc.is_alive():
            assoc.abort()

    def shutdown(self) -> None:
        self.release()
        self._ae.shutdown()


# File Meta and dataset offset of each file written for sending (see raw_send)
SPLITS: dict[Path, tuple[FileMetaDataset, int]] = {}


@contextlib.contextmanager
def raw_send() -> Iterator[None]:
    """pynetdicom sends a file's bytes after its File Meta unchanged (a process-wide switch).

    pynetdicom finds where the dataset starts by reading group 0002 elements until another
    group begins, so a dataset that itself starts with group 0002 elements (one of the
    mutations) would lose them on the way. Here the split is the one the file was written
    with, as its (0002,0000) group length says: the bytes that travel are the mutant's.
    """

    def split(path: Path) -> tuple[FileMetaDataset, int]:
        return SPLITS[Path(path)]

    previous = (
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET,
        pynetdicom_association.split_dataset,
    )
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    pynetdicom_association.split_dataset = split  # type: ignore[assignment]
    try:
        yield
    finally:
        (
            pynetdicom_config.STORE_SEND_CHUNKED_DATASET,
            pynetdicom_association.split_dataset,
        ) = previous
        SPLITS.clear()


def write_part10(path: Path, mutant: Mutant) -> None:
    """A file whose File Meta names the request's UIDs and syntax, and whose dataset is the
    mutant's bytes, whatever they hold."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = mutant.sop_class
    meta.MediaStorageSOPInstanceUID = mutant.sop_instance
    meta.TransferSyntaxUID = mutant.syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    buffer = DicomBytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    head = buffer.getvalue()
    path.write_bytes(head + mutant.data)
    SPLITS[path] = (meta, len(head))
