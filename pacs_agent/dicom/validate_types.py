"""What validating a received dataset yields: the refusal (``InvalidInstanceError``) and the
header values the database needs (``InstanceHeader``, ``PixelDataLayout``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from pacs_agent.dicom.status import (
    Refusal,
)
from pacs_agent.errors import EchoAgentError


class InvalidInstanceError(EchoAgentError):
    """The dataset is refused; ``refusal`` carries the status and the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.refusal = Refusal(status, reason)


class StructureError(EchoAgentError):
    def __init__(self, reason: str, in_pixel_data: bool = False) -> None:
        super().__init__(reason)
        self.in_pixel_data = in_pixel_data


@dataclass(frozen=True)
class PixelDataLayout:
    """Where the pixel data sits in the encoded dataset and how it is laid out.

    ``fragments`` are (offset, length) of each encapsulated fragment after the Basic Offset
    Table, ``native_length_bytes`` the value length of native pixel data.
    """

    element_offset: int
    encapsulated: bool
    native_length_bytes: int = 0
    offset_table_entries: int = 0
    fragments: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True)
class InstanceHeader:
    """What the node records about an instance; identifying fields stay out of ``repr``."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str = ""
    number_of_frames: int = 1
    rows: int | None = None
    columns: int | None = None
    instance_number: int | None = None
    series_number: int | None = None
    series_description: str = ""
    protocol_name: str = ""
    study_date: dt.date | None = None
    study_time: str = ""
    study_description: str = ""
    accession_number: str = field(default="", repr=False)
    referring_physician: str = field(default="", repr=False)
    patient_id: str = field(default="", repr=False)
    issuer_of_patient_id: str = field(default="", repr=False)
    patient_name: str = field(default="", repr=False)
    patient_birth_date: dt.date | None = field(default=None, repr=False)
    patient_sex: str = field(default="", repr=False)
    pixel_data: PixelDataLayout | None = None
