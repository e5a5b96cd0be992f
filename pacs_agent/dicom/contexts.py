"""The SOP classes and transfer syntaxes the node accepts: the one list every DICOM part uses.

pynetdicom's stock ``StoragePresentationContexts`` offer only the uncompressed syntaxes, but echo
scanners send JPEG, JPEG-LS, JPEG 2000, RLE and (current GE scanners) JPEG XL. The node stores
what it receives unchanged, so it accepts each syntax it can later decode rather than asking the
sender to transcode (JPEG XL is decoded by ``inference.jpegxl``: pydicom 3.0 does not know it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from pynetdicom.presentation import PresentationContext, build_context

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR_LOSSLESS = "1.2.840.10008.1.2.4.81"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_2000 = "1.2.840.10008.1.2.4.91"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
JPEG_XL_LOSSLESS = "1.2.840.10008.1.2.4.110"
JPEG_XL_JPEG_RECOMPRESSION = "1.2.840.10008.1.2.4.111"
JPEG_XL = "1.2.840.10008.1.2.4.112"

NATIVE_TRANSFER_SYNTAXES: tuple[str, ...] = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
JPEG_FAMILY: frozenset[str] = frozenset(
    {
        JPEG_BASELINE,
        JPEG_EXTENDED,
        JPEG_LOSSLESS,
        JPEG_LOSSLESS_SV1,
        JPEG_LS_LOSSLESS,
        JPEG_LS_NEAR_LOSSLESS,
    }
)
JPEG_2000_FAMILY: frozenset[str] = frozenset({JPEG_2000_LOSSLESS, JPEG_2000})
JPEG_XL_FAMILY: frozenset[str] = frozenset({JPEG_XL_LOSSLESS, JPEG_XL_JPEG_RECOMPRESSION, JPEG_XL})
ENCAPSULATED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    JPEG_BASELINE,
    JPEG_EXTENDED,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    JPEG_2000_LOSSLESS,
    JPEG_2000,
    RLE_LOSSLESS,
    JPEG_XL_LOSSLESS,
    JPEG_XL_JPEG_RECOMPRESSION,
    JPEG_XL,
)
# Preference order when the node is offered several syntaxes in one context: native first,
# because a sender that offers both would otherwise be asked for a lossy one.
IMAGE_TRANSFER_SYNTAXES: tuple[str, ...] = NATIVE_TRANSFER_SYNTAXES + ENCAPSULATED_TRANSFER_SYNTAXES

TRANSFER_SYNTAX_NAMES: Mapping[str, str] = MappingProxyType(
    {
        IMPLICIT_VR_LITTLE_ENDIAN: "Implicit VR Little Endian",
        EXPLICIT_VR_LITTLE_ENDIAN: "Explicit VR Little Endian",
        JPEG_BASELINE: "JPEG Baseline",
        JPEG_EXTENDED: "JPEG Extended",
        JPEG_LOSSLESS: "JPEG Lossless",
        JPEG_LOSSLESS_SV1: "JPEG Lossless SV1",
        JPEG_LS_LOSSLESS: "JPEG-LS Lossless",
        JPEG_LS_NEAR_LOSSLESS: "JPEG-LS Near-lossless",
        JPEG_2000_LOSSLESS: "JPEG 2000 Lossless",
        JPEG_2000: "JPEG 2000",
        RLE_LOSSLESS: "RLE Lossless",
        JPEG_XL_LOSSLESS: "JPEG XL Lossless",
        JPEG_XL_JPEG_RECOMPRESSION: "JPEG XL JPEG Recompression",
        JPEG_XL: "JPEG XL",
    }
)

US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"

# Image SOP classes of an echo study: the loops and stills a scanner sends, plus the secondary
# captures (measurement pages, screenshots) that travel with them.
IMAGE_SOP_CLASSES: Mapping[str, str] = MappingProxyType(
    {
        US_MULTIFRAME: "Ultrasound Multi-frame Image Storage",
        US_IMAGE: "Ultrasound Image Storage",
        "1.2.840.10008.5.1.4.1.1.3": "Ultrasound Multi-frame Image Storage (Retired)",
        "1.2.840.10008.5.1.4.1.1.6": "Ultrasound Image Storage (Retired)",
        "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
        "1.2.840.10008.5.1.4.1.1.7.1": "Multi-frame Single Bit Secondary Capture Image Storage",
        "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
        "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
        "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image Storage",
    }
)
# Documents without pixel data: measurement SRs from the scanner, reports, key images.
DOCUMENT_SOP_CLASSES: Mapping[str, str] = MappingProxyType(
    {
        "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR Storage",
        "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR Storage",
        "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR Storage",
        "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR Storage",
        "1.2.840.10008.5.1.4.1.1.88.59": "Key Object Selection Document Storage",
        ENCAPSULATED_PDF: "Encapsulated PDF Storage",
    }
)
# Multi-frame classes: a dataset of one of these without Number of Frames does not match it.
MULTIFRAME_SOP_CLASSES: frozenset[str] = frozenset(
    {
        US_MULTIFRAME,
        "1.2.840.10008.5.1.4.1.1.3",
        "1.2.840.10008.5.1.4.1.1.7.1",
        "1.2.840.10008.5.1.4.1.1.7.2",
        "1.2.840.10008.5.1.4.1.1.7.3",
        "1.2.840.10008.5.1.4.1.1.7.4",
    }
)
STORAGE_SOP_CLASSES: Mapping[str, str] = MappingProxyType(
    {**IMAGE_SOP_CLASSES, **DOCUMENT_SOP_CLASSES}
)

# pynetdicom refuses to request more; PS3.8 allows 128 presentation context IDs (odd 1..255).
MAX_REQUESTED_CONTEXTS = 128


def sop_class_name(uid: str) -> str:
    return STORAGE_SOP_CLASSES.get(uid, uid)


def transfer_syntax_name(uid: str) -> str:
    return TRANSFER_SYNTAX_NAMES.get(uid, uid)


def accepted_transfer_syntaxes(sop_class_uid: str) -> tuple[str, ...]:
    """Images in every syntax the node decodes; documents uncompressed only (nothing to gain)."""
    if sop_class_uid in IMAGE_SOP_CLASSES:
        return IMAGE_TRANSFER_SYNTAXES
    return NATIVE_TRANSFER_SYNTAXES


def storage_scp_contexts() -> list[PresentationContext]:
    """The SCP's supported contexts: C-ECHO plus every storage class with its syntaxes.

    The 128-context limit applies to what a requestor proposes, not to what an acceptor
    supports, so one context per SOP class carries all of its transfer syntaxes.
    """
    contexts = [build_context(VERIFICATION_SOP_CLASS, list(NATIVE_TRANSFER_SYNTAXES))]
    for uid in STORAGE_SOP_CLASSES:
        contexts.append(build_context(uid, list(accepted_transfer_syntaxes(uid))))
    return contexts


def scu_contexts(pairs: Iterable[tuple[str, str]]) -> list[PresentationContext]:
    """Requested contexts for sending already-encoded instances: one per (SOP class, syntax).

    A stored instance goes out in the syntax it was received in, so each pair gets its own
    context (an acceptor picks one syntax per context). Raises ``ValueError`` beyond pynetdicom's
    limit of 128, rather than silently dropping the instances that would not fit.
    """
    unique = list(dict.fromkeys((str(sop), str(ts)) for sop, ts in pairs))
    if len(unique) > MAX_REQUESTED_CONTEXTS:
        raise ValueError(
            f"{len(unique)} (SOP class, transfer syntax) pairs need more than "
            f"{MAX_REQUESTED_CONTEXTS} presentation contexts: send them in several associations"
        )
    return [build_context(sop, ts) for sop, ts in unique]
