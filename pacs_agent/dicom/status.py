"""C-STORE response statuses the node answers with (PS3.4 B.2.3, PS3.7 C).

The code tells a sending PACS whether to retry: 0xA7xx (out of resources) is worth a retry
later, 0xA9xx and 0xCxxx are about the dataset itself and will fail again unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110  # the node failed (database, I/O): not the sender's fault
OUT_OF_RESOURCES = 0xA700  # free disk space below dicom.min_free_disk_mb
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000  # generic: decoded, but not usable
CANNOT_PARSE = 0xC210  # the bytes are not a well-formed dataset in the agreed syntax
PIXEL_DATA_INCOMPLETE = 0xC220  # fewer pixel bytes or frames than the header promises
# The instance's patient identity conflicts with its study's (pacs_agent.identity). An error in
# the dataset, so 0xCxxx (Cannot understand): the sender must not retry it unchanged, and a
# person has to resolve it. Not 0x0110, which says the node failed and invites a retry; not
# 0xA900, which is about the SOP class. The object itself is kept in the node's quarantine.
PATIENT_CONFLICT = 0xC230
PATIENT_CONFLICT_COMMENT = "patient differs from the study's; kept in quarantine"
# The same family, same handling (refused, kept in quarantine, a person resolves it); a code of
# its own each, so a PACS operator can tell from the status alone what to look at.
SERIES_CONFLICT = 0xC231  # the Series Instance UID is recorded under another study
SERIES_CONFLICT_COMMENT = "series belongs to another study; kept in quarantine"
INSTANCE_CONFLICT = 0xC232  # the SOP Instance UID is stored for another patient or study
INSTANCE_CONFLICT_COMMENT = "SOP instance stored for other patient/study; quarantined"
# by pacs_agent.ingest.ConflictKind
CONFLICT_RESPONSES: dict[str, tuple[int, str]] = {
    "patient": (PATIENT_CONFLICT, PATIENT_CONFLICT_COMMENT),
    "series": (SERIES_CONFLICT, SERIES_CONFLICT_COMMENT),
    "instance": (INSTANCE_CONFLICT, INSTANCE_CONFLICT_COMMENT),
}

# (0000,0902) Error Comment is LO: at most 64 characters.
ERROR_COMMENT_MAX_CHARS = 64


@dataclass(frozen=True)
class Refusal:
    """Why an instance was not stored: the status for the sender and a reason for the log."""

    status: int
    reason: str

    def as_response(self) -> Dataset:
        return response(self.status, self.reason)


def response(status: int, comment: str = "") -> Dataset:
    """A C-STORE response status dataset; the comment is cut to what the LO VR allows."""
    ds = Dataset()
    ds.Status = status
    if comment and status != SUCCESS:
        ds.ErrorComment = _lo_safe(comment)[:ERROR_COMMENT_MAX_CHARS]
    return ds


def _lo_safe(text: str) -> str:
    # LO forbids backslash and control characters; keep the comment printable ASCII
    return "".join(c if 32 <= ord(c) < 127 and c != "\\" else " " for c in text).strip()
