"""Checks a received dataset before anything is written, and reads what the database needs.

The dataset arrives as the sender encoded it and is stored byte for byte, so it is checked in
its encoded form: a small walk over the element headers proves the structure is sound (no
element runs past the end, sequences close, pixel fragments are complete) without copying the
pixel data, and pydicom then decodes only the header in front of the pixel data. Whatever fails
here is refused with a status the sender can act on, so a broken loop never reaches the
assembler and the analysis.

This module runs the checks in order (``inspect_dataset``); the walk over the element headers
is ``validate_structure``, the header values ``validate_header``, the pixel data checks
``validate_pixels``, and what they yield ``validate_types`` (re-exported here).
"""

from __future__ import annotations

from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset

from pacs_agent.dicom import contexts
from pacs_agent.dicom.status import (
    CANNOT_PARSE,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    PIXEL_DATA_INCOMPLETE,
)
from pacs_agent.dicom.validate_header import element_text, header_from
from pacs_agent.dicom.validate_pixels import check_image_size, check_pixel_data, has_pixel
from pacs_agent.dicom.validate_structure import check_decodable, walk_top_level
from pacs_agent.dicom.validate_types import (
    InstanceHeader,
    InvalidInstanceError,
    PixelDataLayout,
    StructureError,
)

__all__ = [
    "InstanceHeader",
    "InvalidInstanceError",
    "PixelDataLayout",
    "inspect_dataset",
]


# SR-based documents: their content is a tree under a root CONTAINER (PS3.3 C.17.3).
SR_SOP_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."


def inspect_dataset(
    data: bytes | memoryview,
    transfer_syntax_uid: str,
    affected_sop_class_uid: str,
    affected_sop_instance_uid: str,
) -> InstanceHeader:
    """Validates an encoded dataset (no File Meta) received under ``transfer_syntax_uid``.

    Raises ``InvalidInstanceError`` with 0xC210 when the bytes are not a well-formed dataset, 0xA900
    when the dataset does not match its SOP class or the C-STORE request, and 0xC220 when the
    pixel data holds fewer bytes or frames than the header promises.
    """
    view = memoryview(data).cast("B")
    implicit = transfer_syntax_uid == contexts.IMPLICIT_VR_LITTLE_ENDIAN
    try:
        pixel = walk_top_level(view, implicit)
    except StructureError as exc:
        status = PIXEL_DATA_INCOMPLETE if exc.in_pixel_data else CANNOT_PARSE
        raise InvalidInstanceError(status, str(exc)) from None
    header_end = pixel.element_offset if pixel is not None else len(view)
    try:
        ds = read_dataset(BytesIO(view[:header_end].tobytes()), implicit, True)
    except Exception as exc:  # pydicom raises many types for malformed input
        # the exception's type only: pydicom's message can quote the dataset's bytes (a patient
        # name), and this reason goes to the log and to the sender's Error Comment
        raise InvalidInstanceError(
            CANNOT_PARSE, f"dataset header cannot be decoded ({type(exc).__name__})"
        ) from None
    header = header_from(ds, transfer_syntax_uid, pixel)
    _check_matches_request(header, affected_sop_class_uid, affected_sop_instance_uid)
    _check_sop_class(ds, header)
    if pixel is not None and header.sop_class_uid in contexts.IMAGE_SOP_CLASSES:
        check_pixel_data(view, ds, header, pixel)
    check_decodable(ds, 0)  # last: it converts the raw values the checks above read
    return header


def _check_matches_request(header: InstanceHeader, sop_class: str, sop_instance: str) -> None:
    if header.sop_class_uid != sop_class:
        raise InvalidInstanceError(
            DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"dataset SOP Class UID {header.sop_class_uid} differs from the request's {sop_class}",
        )
    if header.sop_instance_uid != sop_instance:
        raise InvalidInstanceError(
            DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"dataset SOP Instance UID {header.sop_instance_uid} differs from the request's "
            f"{sop_instance}",
        )


def _check_sop_class(ds: Dataset, header: InstanceHeader) -> None:
    sop = header.sop_class_uid
    if sop in contexts.IMAGE_SOP_CLASSES:
        required = ["Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "PixelData"]
        if sop in contexts.MULTIFRAME_SOP_CLASSES:
            required.insert(0, "NumberOfFrames")
        missing = [kw for kw in required if kw not in ds and not has_pixel(kw, header)]
        if missing:
            raise InvalidInstanceError(
                DATASET_DOES_NOT_MATCH_SOP_CLASS,
                f"{contexts.sop_class_name(sop)} without {', '.join(missing)}",
            )
        check_image_size(ds, header)
        return
    if header.pixel_data is not None:
        raise InvalidInstanceError(
            DATASET_DOES_NOT_MATCH_SOP_CLASS,
            f"{contexts.sop_class_name(sop)} carries Pixel Data, which the class has none of",
        )
    if sop == contexts.ENCAPSULATED_PDF and "EncapsulatedDocument" not in ds:
        raise InvalidInstanceError(
            DATASET_DOES_NOT_MATCH_SOP_CLASS, "Encapsulated PDF without EncapsulatedDocument"
        )
    if sop.startswith(SR_SOP_CLASS_PREFIX):
        missing = [kw for kw in ("ValueType", "ContentSequence") if kw not in ds]
        if missing or element_text(ds, "ValueType") != "CONTAINER":
            what = f"without {', '.join(missing)}" if missing else "whose root is no CONTAINER"
            raise InvalidInstanceError(
                DATASET_DOES_NOT_MATCH_SOP_CLASS,
                f"{contexts.sop_class_name(sop)} {what} (no SR content)",
            )
