"""The TID 1500 report's content items, one per reported or withheld value: the TID 300
measurement with its method, finding site, view and frames, the "Measurement failure"
evaluation of a withheld value, the loop quality score, and the algorithm identification.
``sr`` assembles them into the document; ``echo_sr`` reuses the algorithm identification.
"""

from __future__ import annotations

from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    FindingSite,
    Measurement,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForMeasurement,
    TextContentItem,
)
from pydicom.dataset import Dataset

from reporting import codes
from reporting.types import AlgorithmInfo
from reporting.values import LoopQuality, ReportedValue, WithheldValue


def measurement_item(source_ds: Dataset, value: ReportedValue) -> Measurement:
    frames = [f + 1 for f in value.source_frames]  # DICOM frame numbers are 1-based
    image = SourceImageForMeasurement(
        referenced_sop_class_uid=str(source_ds.SOPClassUID),
        referenced_sop_instance_uid=str(source_ds.SOPInstanceUID),
        referenced_frame_numbers=frames or None,
    )
    measurement = Measurement(
        name=value.concept.dicom(),
        value=value.value,
        unit=value.unit.dicom(),
        method=value.method.dicom() if value.method is not None else None,
        derivation=codes.MEAN.dicom() if value.n_beats > 1 else None,
        finding_sites=[FindingSite(codes.LEFT_VENTRICLE.dicom())] if value.left_ventricle else None,
        referenced_images=[image],
        algorithm_id=algorithm_identification(value.algorithm),
    )
    if value.left_ventricle:
        measurement[0].ContentSequence.append(
            CodeContentItem(
                name=codes.IMAGE_VIEW.dicom(),
                value=codes.APICAL_FOUR_CHAMBER.dicom(),
                relationship_type=RelationshipTypeValues.HAS_CONCEPT_MOD,
            )
        )
    return measurement


def _lv_view_modifiers() -> list[CodeContentItem]:
    """Finding site Left ventricle and view A4C, as on every LV measurement."""
    return [
        FindingSite(codes.LEFT_VENTRICLE.dicom()),
        CodeContentItem(
            name=codes.IMAGE_VIEW.dicom(),
            value=codes.APICAL_FOUR_CHAMBER.dicom(),
            relationship_type=RelationshipTypeValues.HAS_CONCEPT_MOD,
        ),
    ]


def withheld_evaluation(value: WithheldValue) -> QualitativeEvaluation:
    """A value the node does not stand behind: no NUM item (no number to misread), but a CODE
    item, its concept = "Measurement failure" (DCM 114006, CID 42), with the method, finding
    site and view as for a measurement, and the reason as a TEXT property.

    Why not a NUM item with an empty Measured Value Sequence and a Numeric Value Qualifier, as
    PS3.3 allows: highdicom cannot write one (``NumContentItem`` always writes a value, and
    ``ComprehensiveSR`` re-reads its content, failing on an empty sequence) nor read one back,
    and a NUM item with a placeholder value and the qualifier would put a number in the SR that
    a reader ignoring the qualifier takes for the measurement."""
    evaluation = QualitativeEvaluation(
        name=value.concept.dicom(), value=codes.MEASUREMENT_FAILURE.dicom()
    )
    children = []
    if value.method is not None:
        children.append(
            CodeContentItem(
                name=codes.MEASUREMENT_METHOD.dicom(),
                value=value.method.dicom(),
                relationship_type=RelationshipTypeValues.HAS_CONCEPT_MOD,
            )
        )
    if value.left_ventricle:
        children += _lv_view_modifiers()
    children.append(
        TextContentItem(
            name=codes.COMMENT.dicom(),
            value=value.statement,
            relationship_type=RelationshipTypeValues.HAS_PROPERTIES,
        )
    )
    evaluation[0].ContentSequence = children
    return evaluation


def quality_measurement(source_ds: Dataset, quality: LoopQuality) -> Measurement:
    """The loop quality score as a TID 300 measurement of the whole loop (private code, unit
    UCUM "1"; see ``reporting.codes.LOOP_QUALITY_SCORE``)."""
    image = SourceImageForMeasurement(
        referenced_sop_class_uid=str(source_ds.SOPClassUID),
        referenced_sop_instance_uid=str(source_ds.SOPInstanceUID),
    )
    return Measurement(
        name=codes.LOOP_QUALITY_SCORE.dicom(),
        value=round(quality.score, 3),
        unit=codes.UNIT_NONE.dicom(),
        referenced_images=[image],
    )


def algorithm_identification(algorithm: AlgorithmInfo | None) -> AlgorithmIdentification | None:
    if algorithm is None:
        return None
    return AlgorithmIdentification(
        name=algorithm.display_name,
        version=algorithm.version,
        parameters=list(algorithm.parameters) or None,
    )
