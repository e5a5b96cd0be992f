"""What every DICOM object this node writes shares: the equipment it names, its place in the
source study (same patient and study, a new series), UIDs, and how it goes to disk.

highdicom's ``SOPClass`` builds the patient/study/series/equipment skeleton and the file meta
information; the IOD-specific modules are added by each writer.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import uuid
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import PersonName

# Series numbers of the derived series: high, so they sort after the scanner's own series.
SERIES_NUMBER_SEG = 9001
SERIES_NUMBER_SR = 9002
SERIES_NUMBER_SECONDARY_CAPTURE = 9003
SERIES_NUMBER_PDF = 9004


def _package_version() -> str:
    try:
        return importlib.metadata.version("echo-agent")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "0+unknown"


@dataclass(frozen=True)
class Equipment:
    """The node as the creating equipment (General / Enhanced General Equipment modules)."""

    manufacturer: str = "echo-agent"
    model_name: str = "echo-agent"
    software_version: str = ""
    device_serial_number: str = "ECHOAGENT"
    institution_name: str | None = None

    @property
    def software_versions(self) -> str:
        return self.software_version or _package_version()


def person_name(pn: str) -> PersonName:
    """``pn`` (DICOM PN form) as a pydicom PersonName that highdicom accepts silently.

    highdicom's ``check_person_name`` warns about a name without a caret ("DOE JANE", "Admin")
    and its UserWarning quotes the name, which then reaches stderr and the logs. A name of one
    component gets the trailing caret DICOM allows (PS3.5 6.2.1.2: trailing empty components
    may be left out, so ``Admin^`` and ``Admin`` are the same family name); nothing else
    changes.
    """
    groups = pn.split("=")
    if groups[0].strip() and "^" not in groups[0]:
        groups[0] = groups[0] + "^"
    return PersonName("=".join(groups))


def new_uid() -> str:
    """A fresh UID under highdicom's root (random, never reused)."""
    return str(hd.UID())


def derived_uid(*parts: str) -> str:
    """A UID that is a pure function of ``parts`` (a 2.25 UUID-derived UID): a re-run of the
    same job with the same inputs gets the same SOP Instance UID, so PACS replaces the object
    instead of filing a duplicate."""
    if not parts or not all(parts):
        raise ValueError("derived_uid needs non-empty parts")
    # pydicom's generate_uid ignores entropy_srcs when prefix is None (2.25 UIDs are random
    # there), so derive the UUID ourselves: a name-based (v5) UUID is a pure function of parts
    name = "echo-agent:" + "/".join(parts)
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, name).int}"


def new_instance(
    source: Dataset,
    *,
    sop_class_uid: str,
    modality: str,
    series_instance_uid: str,
    series_number: int,
    sop_instance_uid: str,
    instance_number: int,
    series_description: str,
    equipment: Equipment,
    now: dt.datetime,
    specific_character_set: str | None = None,
) -> hd.SOPClass:
    """An empty instance of ``sop_class_uid`` in the source's study: patient and study modules
    copied from the source, a new series, this node as the equipment."""
    for keyword in ("StudyInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        if not source.get(keyword):
            raise ValueError(f"the source dataset has no {keyword}")
    instance = hd.SOPClass(
        study_instance_uid=source.StudyInstanceUID,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        sop_class_uid=sop_class_uid,
        instance_number=instance_number,
        modality=modality,
        manufacturer=equipment.manufacturer,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=series_description,
        manufacturer_model_name=equipment.model_name,
        software_versions=equipment.software_versions,
        device_serial_number=equipment.device_serial_number,
        institution_name=equipment.institution_name,
        content_date=now.date(),
        content_time=now.time().replace(microsecond=0),
        series_date=now.date(),
        series_time=now.time().replace(microsecond=0),
        specific_character_set=specific_character_set or source.get("SpecificCharacterSet"),
    )
    instance.copy_patient_and_study_information(source)
    instance.InstanceCreationDate = now.strftime("%Y%m%d")
    instance.InstanceCreationTime = now.strftime("%H%M%S")
    return instance


def source_image_item(source: Dataset, frame_numbers: list[int] | None = None) -> Dataset:
    """An item naming the source instance (and frames) for a Source Image / Referenced
    Instance sequence."""
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if frame_numbers:
        item.ReferencedFrameNumber = frame_numbers if len(frame_numbers) > 1 else frame_numbers[0]
    return item


def referenced_series(source: Dataset) -> list[Dataset]:
    """The Common Instance Reference module's Referenced Series Sequence for one source."""
    series = Dataset()
    series.SeriesInstanceUID = source.SeriesInstanceUID
    series.ReferencedInstanceSequence = [source_image_item(source)]
    return [series]


def copy_lossy_compression_history(source: Dataset, target: Dataset) -> None:
    """A derived image inherits "has been lossy compressed" from its source (PS3.3 C.7.6.1.1.5):
    a contour drawn on a JPEG loop carries the JPEG's artefacts."""
    target.LossyImageCompression = str(source.get("LossyImageCompression", "00") or "00")
    if target.LossyImageCompression == "01":
        for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
            if keyword in source:
                setattr(target, keyword, source[keyword].value)


def save(ds: Dataset, out_path: str | Path) -> Path:
    """Writes a DICOM Part 10 file (preamble, file meta), creating the folder."""
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def local_now() -> dt.datetime:
    """Now in the node's local zone: DICOM dates and times are local unless a zone is named."""
    return dt.datetime.now().astimezone()
