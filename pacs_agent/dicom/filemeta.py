"""The DICOM File Meta Information the node writes in front of each dataset it receives.

The dataset itself is stored exactly as it arrived; only this header is the node's own. It
depends on nothing but the instance and its syntax (the sender's AE title is in the database),
so the same instance received twice makes the same file, and a repeat can be recognised by
its size and hash.
"""

from __future__ import annotations

from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info

from pacs_agent import __version__

# A fixed UUID-derived UID (2.25 root): generate_uid(entropy_srcs=["echo-agent",
# "implementation class"]). It names the software, so it never changes between runs.
IMPLEMENTATION_CLASS_UID = "2.25.278644423388222769772979336681215999520"
IMPLEMENTATION_VERSION_NAME = f"ECHOAGENT_{__version__}"[:16]
PREAMBLE = b"\x00" * 128 + b"DICM"


def encode_file_meta(
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
) -> bytes:
    """Preamble, ``DICM`` prefix and group 0002, ready to be followed by the encoded dataset."""
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax_uid
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    buffer = DicomBytesIO()
    buffer.write(PREAMBLE)
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue()
