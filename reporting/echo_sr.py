"""DICOM Comprehensive SR: the TID 5200 Echocardiography Procedure Report of one analysed loop,
the form echo reporting systems and cardiology PACS import measurements from (beside the
TID 1500 Measurement Report of ``reporting.sr``, which carries the same numbers).

highdicom has no TID 5200 template class, so the tree is built from its content items
(DICOM PS3.16; the codes and where each comes from are in ``reporting.codes``)::

    CONTAINER (125200, DCM, "Adult Echocardiography Procedure Report")      TID 5200 row 1
      HAS OBS CONTEXT  device observer (the node)                           TID 1001 / 1004
      CONTAINS CONTAINER (59776-5, LN, "Findings")                          TID 5202 row 1
        HAS CONCEPT MOD CODE Finding Site = Left ventricle                  TID 5202 row 2
        CONTAINS CONTAINER Measurement Group                                TID 5202 row 3
          HAS CONCEPT MOD CODE Image Mode = 2D mode                         TID 5202 row 4
          CONTAINS NUM LVEF / EDV / ESV / stroke volume                     TID 5203
            HAS CONCEPT MOD CODE Measurement Method = Method of Disks, Single Plane
            HAS CONCEPT MOD CODE Derivation = Mean          (a mean over beats)
            HAS ACQ CONTEXT CODE Image View = Apical four chamber
            HAS CONCEPT MOD CODE Cardiac Cycle Point = End diastole | End Systole
            HAS CONCEPT MOD TEXT Algorithm Name / Version / Parameters     TID 4019
            INFERRED FROM IMAGE Source of Measurement (the loop, its frames)
        CONTAINS CONTAINER Measurement Group    (no image mode)
          CONTAINS NUM Heart rate                                           CID 12220
      CONTAINS TEXT Comment = the demo label    (demo models only)

The values are ``reporting.values.reported_values``, so every surface states the same numbers;
a value the validity gate withheld (``withheld_values``) is left out of this report altogether:
no NUM, no placeholder (the TID 1500 SR, PDF and FHIR bundle say why it is missing). Without any
reported value the document has no Findings section (TID 5200 makes every section optional).
The heart rate is in CID 12200 through CID 12220, so it belongs in the Left Ventricle section;
it has a group of its own because it is not always measured on the 2D loop (ECG, header).

The regression EF: no measurement method of CID 12227 describes a video regression network, so
it has none, and TID 4019 Algorithm Identification (the network's name and version, as TID 300
attaches it in TID 1500) says it was derived by the algorithm; the disks EF carries the
method and the segmentation network's identification. The two LVEF items differ by exactly this.

Relationships: the TID 5203 table itself could not be read from a source while writing this,
so its rows rest on what could be checked. The image view is acquisition context (NUM HAS ACQ
CONTEXT: the relationship CP-571 added to the SR IODs for TID 5203, as dcmtk records it); the
method, derivation and cardiac cycle point are concept modifiers, as a scanner's TID 5200 SR
writes them; the image mode sits on the measurement group (TID 5202 row 4). The cardiac phase
repeats what the EDV / ESV LOINC codes pre-coordinate; TID 5203 readers group by it.

Sign-off mirrors ``reporting.sr``: unsigned, PARTIAL / UNVERIFIED / PRELIMINARY; signing writes
a new instance, COMPLETE / VERIFIED / FINAL, in the same series, naming its predecessor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from highdicom.sr import (
    CodeContentItem,
    ContainerContentItem,
    DeviceObserverIdentifyingAttributes,
    NumContentItem,
    ObservationContext,
    ObserverContext,
    RelationshipTypeValues,
    SourceImageForMeasurement,
    TextContentItem,
)
from pydicom.dataset import Dataset

from inference.types import Measurements
from reporting import codes
from reporting.codes import ClinicalCode
from reporting.dicom_base import (
    Equipment,
    derived_uid,
    save,
)
from reporting.sr import sr_document, successor_options
from reporting.sr_items import algorithm_identification
from reporting.types import DEMO_LABEL_ASCII, Algorithms, DraftReport
from reporting.values import KEY_LV_EDV, KEY_LV_ESV, ReportedValue, reported_values

TEMPLATE_ID = "5200"  # ContentTemplateSequence: Mapping Resource DCMR, Template 5200
# The next number after ``reporting.dicom_base``'s derived series (SEG 9001 ... PDF 9004): a
# series of its own, so a viewer lists it beside the TID 1500 SR, not as a version of it.
SERIES_NUMBER_ECHO_SR = 9005
SERIES_DESCRIPTION = "Echocardiography procedure report"

# TID 5203 cardiac phase of the measurements taken at one point of the cycle (CID 12233)
_CARDIAC_PHASE: dict[str, ClinicalCode] = {
    KEY_LV_EDV: codes.END_DIASTOLE,
    KEY_LV_ESV: codes.END_SYSTOLE,
}

_CONTAINS = RelationshipTypeValues.CONTAINS
_CONCEPT_MOD = RelationshipTypeValues.HAS_CONCEPT_MOD


def build_echo_sr(
    source_ds: Dataset,
    measurements: Measurements,
    algorithms: Algorithms,
    report: DraftReport,
    *,
    series_number: int = SERIES_NUMBER_ECHO_SR,
    equipment: Equipment | None = None,
    **options: Any,
) -> Dataset:
    """The TID 5200 SR for this report version, with the inputs ``reporting.sr.build_sr`` takes:
    preliminary and unverified while ``report`` is unsigned, complete, verified and final once
    it carries a signature (see ``build_signed_echo_sr``). The document around the content is
    ``reporting.sr.sr_document``'s, the same as the TID 1500 report's."""
    equipment = equipment or Equipment()
    demo = report.demo_models or algorithms.demo_models
    texts = [a.display_name for a in (algorithms.segmentation, algorithms.ejection_fraction)]
    texts += [DEMO_LABEL_ASCII] if demo else []
    return sr_document(
        source_ds,
        _content(source_ds, measurements, algorithms, equipment, demo),
        report,
        texts=texts,
        series_description=f"{SERIES_DESCRIPTION}{' [DEMO]' if demo else ''}",
        series_number=series_number,
        equipment=equipment,
        **options,
    )


def build_signed_echo_sr(
    preliminary_sr: Dataset,
    source_ds: Dataset,
    measurements: Measurements,
    algorithms: Algorithms,
    report: DraftReport,
    **options: Any,
) -> Dataset:
    """The new TID 5200 SR written when the cardiologist signs (or amends): same series as the
    preliminary one, the next instance number, the signature, and the preliminary (or
    previously signed) one as its predecessor."""
    return build_echo_sr(
        source_ds, measurements, algorithms, report,
        **successor_options(preliminary_sr, report, options),
    )  # fmt: skip


def write_echo_sr(
    source_ds: Dataset,
    measurements: Measurements,
    algorithms: Algorithms,
    report: DraftReport,
    out_path: str | Path,
    **options: object,
) -> Dataset:
    """``build_echo_sr`` and save it to ``out_path``; returns the dataset written."""
    sr = build_echo_sr(source_ds, measurements, algorithms, report, **options)  # type: ignore[arg-type]
    save(sr, out_path)
    return sr


def write_signed_echo_sr(
    preliminary_sr: Dataset,
    source_ds: Dataset,
    measurements: Measurements,
    algorithms: Algorithms,
    report: DraftReport,
    out_path: str | Path,
    **options: object,
) -> Dataset:
    """``build_signed_echo_sr`` and save it to ``out_path``; returns the dataset written."""
    sr = build_signed_echo_sr(
        preliminary_sr, source_ds, measurements, algorithms, report, **options
    )
    save(sr, out_path)
    return sr


def _content(
    source_ds: Dataset,
    measurements: Measurements,
    algorithms: Algorithms,
    equipment: Equipment,
    demo: bool,
) -> ContainerContentItem:
    root = ContainerContentItem(
        name=codes.ADULT_ECHO_PROCEDURE_REPORT.dicom(), template_id=TEMPLATE_ID
    )
    items: list[Dataset] = list(_observation_context(equipment))
    values = reported_values(measurements, algorithms)
    if values:
        items.append(_left_ventricle_section(source_ds, values))
    if demo:
        items.append(
            TextContentItem(
                name=codes.COMMENT.dicom(), value=DEMO_LABEL_ASCII, relationship_type=_CONTAINS
            )
        )
    root.ContentSequence = items
    return root


def _observation_context(equipment: Equipment) -> ObservationContext:
    """TID 1001: the node as the device observer (the same identity ``reporting.sr`` gives)."""
    device = DeviceObserverIdentifyingAttributes(
        uid=derived_uid("device-observer", equipment.device_serial_number),
        name=equipment.model_name,
        manufacturer_name=equipment.manufacturer,
        model_name=equipment.model_name,
        serial_number=equipment.device_serial_number,
    )
    return ObservationContext(
        observer_device_context=ObserverContext(
            observer_type=codes.OBSERVER_TYPE_DEVICE.dicom(),
            observer_identifying_attributes=device,
        )
    )


def _left_ventricle_section(
    source_ds: Dataset, values: list[ReportedValue]
) -> ContainerContentItem:
    """TID 5202 with $SectionSubject Left Ventricle: LV values measured on the 2D loop in one
    group (image mode 2D), the heart rate in another (its source may be the ECG or the
    scanner's header, not the 2D image)."""
    section = ContainerContentItem(name=codes.FINDINGS.dicom(), relationship_type=_CONTAINS)
    children: list[Dataset] = [
        CodeContentItem(
            name=codes.FINDING_SITE.dicom(),
            value=codes.LEFT_VENTRICLE.dicom(),
            relationship_type=_CONCEPT_MOD,
        )
    ]
    on_image = [v for v in values if v.left_ventricle]
    other = [v for v in values if not v.left_ventricle]
    if on_image:
        children.append(_group(source_ds, on_image, image_mode=codes.IMAGE_MODE_2D))
    if other:
        children.append(_group(source_ds, other, image_mode=None))
    section.ContentSequence = children
    return section


def _group(
    source_ds: Dataset, values: list[ReportedValue], image_mode: ClinicalCode | None
) -> ContainerContentItem:
    group = ContainerContentItem(name=codes.MEASUREMENT_GROUP.dicom(), relationship_type=_CONTAINS)
    children: list[Dataset] = []
    if image_mode is not None:
        children.append(
            CodeContentItem(
                name=codes.IMAGE_MODE.dicom(),
                value=image_mode.dicom(),
                relationship_type=_CONCEPT_MOD,
            )
        )
    children += [_echo_measurement(source_ds, v) for v in values]
    group.ContentSequence = children
    return group


def _echo_measurement(source_ds: Dataset, value: ReportedValue) -> NumContentItem:
    """TID 5203 for one reported value (see the module docstring for the rows)."""
    num = NumContentItem(
        name=value.concept.dicom(),
        value=value.value,
        unit=value.unit.dicom(),
        relationship_type=_CONTAINS,
    )
    children: list[Dataset] = []
    if value.method is not None:
        children.append(_code(codes.MEASUREMENT_METHOD, value.method, _CONCEPT_MOD))
    if value.n_beats > 1:
        children.append(_code(codes.DERIVATION, codes.MEAN, _CONCEPT_MOD))
    if value.left_ventricle:
        children.append(
            _code(
                codes.IMAGE_VIEW,
                codes.APICAL_FOUR_CHAMBER,
                RelationshipTypeValues.HAS_ACQ_CONTEXT,
            )
        )
    phase = _CARDIAC_PHASE.get(value.key)
    if phase is not None:
        children.append(_code(codes.CARDIAC_CYCLE_POINT, phase, _CONCEPT_MOD))
    algorithm = algorithm_identification(value.algorithm)
    if algorithm is not None:
        children += list(algorithm)
    frames = [f + 1 for f in value.source_frames]  # DICOM frame numbers are 1-based
    children.append(
        SourceImageForMeasurement(
            referenced_sop_class_uid=str(source_ds.SOPClassUID),
            referenced_sop_instance_uid=str(source_ds.SOPInstanceUID),
            referenced_frame_numbers=frames or None,
        )
    )
    num.ContentSequence = children
    return num


def _code(
    name: ClinicalCode, value: ClinicalCode, relationship: RelationshipTypeValues
) -> CodeContentItem:
    return CodeContentItem(name=name.dicom(), value=value.dicom(), relationship_type=relationship)
