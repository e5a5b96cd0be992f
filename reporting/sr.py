"""DICOM Comprehensive SR: the TID 1500 measurement report of one analysed loop, built with
highdicom's SR templates.

Content (DICOM PS3.16): TID 1500 with procedure Echocardiography, one TID 1501 measurement group
("LV function, A4C") whose TID 300 measurements are the ``reported_values``: LVEF by the
regression network (algorithm identification of the EF model) and by the method of disks, EDV,
ESV, stroke volume (Method of Disks, Single Plane; algorithm identification of the segmentation
model) and heart rate. LV measurements carry finding site Left ventricle and, as TID 5203 does
for echo measurements, the image view (Apical four chamber) as a concept modifier; each names
the source loop and the frames it was measured on (1-based DICOM frame numbers: ED frames for
EDV, ES for ESV, both for EF and stroke volume). A Qualitative Evaluations container (TID 1500
row 12) holds the report narrative and, for demo models, the demo label as TEXT items.

Sign-off: an unsigned report is PARTIAL / UNVERIFIED / PRELIMINARY. Signing does not edit it:
``build_signed_sr`` writes a new SR, COMPLETE / VERIFIED / FINAL, with the verifying observer and
organisation and the signing time, that names its predecessor (Predecessor Documents Sequence).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from highdicom.sr import (
    ComprehensiveSR,
    ContainerContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    RelationshipTypeValues,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.valuerep import DT

from inference.types import Measurements
from reporting import codes
from reporting.dicom_base import (
    SERIES_NUMBER_SR,
    Equipment,
    derived_uid,
    local_now,
    new_uid,
    person_name,
    save,
)
from reporting.sr_items import measurement_item, quality_measurement, withheld_evaluation
from reporting.types import DEMO_LABEL_ASCII, AlgorithmInfo, Algorithms, DraftReport
from reporting.values import (
    loop_quality,
    reported_values,
    withheld_values,
)

GROUP_TRACKING_ID = "LV function, A4C"
LATIN1_CHARSETS = ("", "ISO_IR 6", "ISO_IR 100")
# what highdicom's SR constructor reads from its evidence (see source_evidence)
_EVIDENCE_IDENTITY = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def build_sr(
    source_ds: Dataset,
    measurements: Measurements,
    algorithms: Algorithms,
    report: DraftReport,
    *,
    series_number: int = SERIES_NUMBER_SR,
    equipment: Equipment | None = None,
    **options: Any,
) -> Dataset:
    """The SR for this report version: preliminary and unverified while ``report`` is unsigned,
    complete, verified and final once it carries a signature (see ``build_signed_sr``).
    ``options``: those of ``sr_document``."""
    equipment = equipment or Equipment()
    content = _measurement_report(source_ds, measurements, algorithms, report, equipment)
    texts = _texts(report, algorithms) + [a.display_name for a in _algorithms(algorithms)]
    demo = report.demo_models or algorithms.demo_models
    return sr_document(
        source_ds,
        content,
        report,
        texts=texts,
        series_description=f"LV function measurements{' [DEMO]' if demo else ''}",
        series_number=series_number,
        equipment=equipment,
        **options,
    )


def sr_document(
    source_ds: Dataset,
    content: ContentSequence,
    report: DraftReport,
    *,
    texts: list[str],
    series_description: str,
    series_number: int,
    previous_versions: list[Dataset] | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    instance_number: int | None = None,
    equipment: Equipment | None = None,
    now: dt.datetime | None = None,
) -> Dataset:
    """One Comprehensive SR around ``content`` (a template's root container) for this report
    version. The TID 1500 and the TID 5200 reports both go through it, so they carry the same
    completion and verification flags, signature, equipment, character set and patient/study
    modules; only their content differs. ``texts``: the free texts the content holds, for the
    character set."""
    equipment = equipment or Equipment()
    now = now or local_now()
    signature = report.signature
    if signature is not None:
        texts = [*texts, signature.observer_name, signature.organisation]
    sr = ComprehensiveSR(
        evidence=[source_evidence(source_ds)],
        content=content,
        series_instance_uid=series_instance_uid or new_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or new_uid(),
        instance_number=instance_number or report.version,
        manufacturer=equipment.manufacturer,
        is_complete=signature is not None,
        is_final=signature is not None,
        is_verified=signature is not None,
        institution_name=equipment.institution_name,
        # built so that highdicom's person-name check (whose warning quotes it) stays silent
        verifying_observer_name=None if signature is None else person_name(signature.observer_name),
        verifying_organization=None if signature is None else signature.organisation,
        previous_versions=previous_versions,
        specific_character_set=character_set_for(source_ds, texts),
        series_description=series_description,
        manufacturer_model_name=equipment.model_name,
        software_versions=equipment.software_versions,
        device_serial_number=equipment.device_serial_number,
        content_date=now.date(),
        content_time=now.time().replace(microsecond=0),
    )
    # the patient and study as the source has them: its Type 2 attributes empty where it
    # lacks them, nothing invented (as for the SEG, SC and PDF, see dicom_base.new_instance)
    sr.copy_patient_and_study_information(source_ds)
    if signature is not None:  # highdicom stamps "now"; the signature has its own instant
        sr.VerifyingObserverSequence[0].VerificationDateTime = DT(signature.signed_at)
    return sr


def successor_options(
    preliminary_sr: Dataset, report: DraftReport, options: dict[str, Any]
) -> dict[str, Any]:
    """``options`` for the SR written when the cardiologist signs (or amends): same series as
    ``preliminary_sr``, the next instance number, ``preliminary_sr`` as its predecessor."""
    if report.signature is None:
        raise ValueError("a signed SR needs a signed report (DraftReport.signed(...))")
    return {
        "series_instance_uid": str(preliminary_sr.SeriesInstanceUID),
        "series_number": int(preliminary_sr.SeriesNumber),
        "instance_number": int(preliminary_sr.InstanceNumber) + 1,
        **options,
        "previous_versions": [preliminary_sr],
    }


def build_signed_sr(
    preliminary_sr: Dataset,
    source_ds: Dataset,
    measurements: Measurements,
    algorithms: Algorithms,
    report: DraftReport,
    **options: Any,
) -> Dataset:
    """The new SR written when the cardiologist signs (or amends): same series as the
    preliminary one, the next instance number, the signature, and the preliminary (or
    previously signed) SR as its predecessor."""
    return build_sr(
        source_ds, measurements, algorithms, report,
        **successor_options(preliminary_sr, report, options),
    )  # fmt: skip


def write_sr(
    source_ds: Dataset,
    measurements: Measurements,
    algorithms: Algorithms,
    report: DraftReport,
    out_path: str | Path,
    **options: object,
) -> Dataset:
    """``build_sr`` and save it to ``out_path``; returns the dataset written."""
    sr = build_sr(source_ds, measurements, algorithms, report, **options)  # type: ignore[arg-type]
    save(sr, out_path)
    return sr


def write_signed_sr(
    preliminary_sr: Dataset,
    source_ds: Dataset,
    measurements: Measurements,
    algorithms: Algorithms,
    report: DraftReport,
    out_path: str | Path,
    **options: object,
) -> Dataset:
    """``build_signed_sr`` and save it to ``out_path``; returns the dataset written."""
    sr = build_signed_sr(preliminary_sr, source_ds, measurements, algorithms, report, **options)
    save(sr, out_path)
    return sr


def _measurement_report(
    source_ds: Dataset,
    measurements: Measurements,
    algorithms: Algorithms,
    report: DraftReport,
    equipment: Equipment,
) -> MeasurementReport:
    device = DeviceObserverIdentifyingAttributes(
        uid=derived_uid("device-observer", equipment.device_serial_number),
        name=equipment.model_name,
        manufacturer_name=equipment.manufacturer,
        model_name=equipment.model_name,
        serial_number=equipment.device_serial_number,
    )
    context = ObservationContext(
        observer_device_context=ObserverContext(
            observer_type=codes.OBSERVER_TYPE_DEVICE.dicom(),
            observer_identifying_attributes=device,
        )
    )
    values = reported_values(measurements, algorithms)
    numbers = [measurement_item(source_ds, v) for v in values]
    quality = loop_quality(measurements)
    if quality is not None:
        numbers.append(quality_measurement(source_ds, quality))
    withheld = withheld_values(measurements)
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=derived_uid("sr-group", str(source_ds.SOPInstanceUID)),
            identifier=GROUP_TRACKING_ID,
        ),
        measurements=numbers or None,
        qualitative_evaluations=[withheld_evaluation(w) for w in withheld] or None,
    )
    content = MeasurementReport(
        observation_context=context,
        procedure_reported=codes.ECHOCARDIOGRAPHY.dicom(),
        imaging_measurements=[group],
    )
    texts = _texts(report, algorithms)
    if texts:
        evaluations = ContainerContentItem(
            name=codes.QUALITATIVE_EVALUATIONS.dicom(),
            relationship_type=RelationshipTypeValues.CONTAINS,
        )
        evaluations.ContentSequence = [
            TextContentItem(
                name=codes.COMMENT.dicom(),
                value=text,
                relationship_type=RelationshipTypeValues.CONTAINS,
            )
            for text in texts
        ]
        content[0].ContentSequence.append(evaluations)
    return content


def source_evidence(source_ds: Dataset) -> Dataset:
    """What highdicom's SR constructor takes as evidence: the source's references only.

    highdicom reads the evidence's Patient ID, Name, Birth Date, Sex, Accession Number, Study
    ID, Date and Time as attributes, so a real loop without one of these Type 2 attributes
    raised AttributeError; it also checks the patient name and its warning prints the name
    ("PLA" of a SonoSite loop). With empty values here nothing is read or checked, and
    ``build_sr`` copies the patient and study modules from the source afterwards, raw."""
    evidence = Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        if keyword not in source_ds:
            raise ValueError(f"the source dataset has no {keyword}")
        setattr(evidence, keyword, source_ds[keyword].value)
    for keyword in _EVIDENCE_IDENTITY:
        setattr(evidence, keyword, None)
    return evidence


def _algorithms(algorithms: Algorithms) -> list[AlgorithmInfo]:
    return [algorithms.segmentation, algorithms.ejection_fraction]


def character_set_for(source_ds: Dataset, texts: list[str]) -> str:
    """The source's Latin-1 repertoire when our free text fits in it (what most PACS and
    dcmtk handle best), UTF-8 otherwise."""
    source = source_ds.get("SpecificCharacterSet") or ""
    source = source if isinstance(source, str) else "\\".join(source)
    if source in LATIN1_CHARSETS:
        try:
            for text in texts:
                text.encode("latin-1")
        except UnicodeEncodeError:
            return "ISO_IR 192"
        return "ISO_IR 100"
    return "ISO_IR 192"


def _texts(report: DraftReport, algorithms: Algorithms) -> list[str]:
    texts = []
    if report.demo_models or algorithms.demo_models:
        texts.append(DEMO_LABEL_ASCII)
    if report.narrative_text.strip():
        texts.append(report.narrative_text.strip())
    return texts
