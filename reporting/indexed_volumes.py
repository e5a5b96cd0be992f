"""LV volumes indexed to body surface area, in one list the report's surfaces share.

Why one place: the structured report text and the PDF table (and the chat's fact sheet, which
uses ``index_ml_per_m2``) must state the same index, rounded the same way, against the same
range. An index exists only for a volume the report states (``reported_values``: a withheld
volume has no index) and only when the header gave a plausible height and weight
(``reporting.body_size``); otherwise every surface says the volumes are not indexed and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from reporting.body_size import BSA_FORMULA, BodySize
from reporting.interpretation import Interpretation, interpret_indexed
from reporting.values import DECIMALS, KEY_LV_EDV, KEY_LV_ESV, ReportedValue

UNIT_ML_PER_M2 = "mL/m2"
BSA_DECIMALS = 2
INDEX_LABELS = {
    KEY_LV_EDV: "LV end-diastolic volume index",
    KEY_LV_ESV: "LV end-systolic volume index",
}
BSA_LABEL = "Body surface area"


@dataclass(frozen=True)
class IndexedVolume:
    """One LV volume divided by the BSA, with its grade against the indexed range."""

    volume_key: str  # ``KEY_LV_EDV`` or ``KEY_LV_ESV``
    label: str
    value_ml_per_m2: float
    volume_ml: float
    bsa_m2: float
    interpretation: Interpretation

    @property
    def key(self) -> str:
        return f"{self.volume_key}_index"

    @property
    def text(self) -> str:
        return f"{self.value_ml_per_m2:.{DECIMALS}f} {UNIT_ML_PER_M2}"

    @property
    def reference_text(self) -> str:
        """The range(s) as the PDF prints them: "29-61 mL/m2 (women)", both sexes' when the
        sex is unknown."""
        who = {"M": " (men)", "F": " (women)", None: ""}
        return "; ".join(f"{r.low:g}-{r.high:g} {UNIT_ML_PER_M2}{who[r.sex]}"
                         for r in self.interpretation.ranges)  # fmt: skip

    @property
    def statement(self) -> str:
        """The report sentence: label, index, grade and reference."""
        grade = self.interpretation.grade or "not graded (sex unknown)"
        return (f"{self.label}: {self.text} ({grade}; reference {self.reference_text}, "
                "ASE/EACVI 2015 biplane).")  # fmt: skip


def index_ml_per_m2(volume_ml: float, bsa_m2: float) -> float:
    """The volume over the BSA, rounded as every surface prints it (0.1 mL/m2)."""
    if not bsa_m2 > 0:
        raise ValueError(f"body surface area {bsa_m2} m2 must be positive")
    return round(volume_ml / bsa_m2, DECIMALS)


def bsa_text(bsa_m2: float) -> str:
    return f"{bsa_m2:.{BSA_DECIMALS}f} m2"


def bsa_statement(body: BodySize) -> str:
    """The BSA sentence: "Body surface area: 1.82 m2 (Mosteller, from height 170 cm and weight
    70 kg in the DICOM header)." or, without one, "LV volumes not indexed to body surface area:
    <reason>."."""
    bsa = body.bsa_m2
    if bsa is None:
        return f"LV volumes not indexed to body surface area: {body.withheld_reason}."
    return (f"{BSA_LABEL}: {bsa_text(bsa)} ({BSA_FORMULA}, from height {body.height_cm:g} cm "
            f"and weight {body.weight_kg:g} kg in the DICOM header).")  # fmt: skip


def indexed_volumes(
    values: Sequence[ReportedValue], body: BodySize, sex: str | None
) -> list[IndexedVolume]:
    """The EDV and ESV indices of the reported volumes; [] without a BSA."""
    bsa = body.bsa_m2
    if bsa is None:
        return []
    out = []
    for value in values:
        if value.key not in INDEX_LABELS:
            continue
        index = index_ml_per_m2(value.value, bsa)
        out.append(IndexedVolume(value.key, INDEX_LABELS[value.key], index, value.value, bsa,
                                 interpret_indexed(value.key, index, sex)))  # fmt: skip
    return out


def index_lines(
    values: Sequence[ReportedValue], body: BodySize | None, sex: str | None
) -> list[str]:
    """The report's sentences about indexing: none when no volume is reported or no body size
    was looked for (``body`` None); else the BSA (or why there is none) and each index."""
    if body is None or not any(v.key in INDEX_LABELS for v in values):
        return []
    return [bsa_statement(body)] + [v.statement for v in indexed_volumes(values, body, sex)]
