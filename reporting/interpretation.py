"""Reference ranges and what a value means against them, for the EHR's interpretation flags
and the report's conclusion about LV systolic function.

Source, unless said otherwise: Lang RM, Badano LP, Mor-Avi V, et al. "Recommendations for
Cardiac Chamber Quantification by Echocardiography in Adults: An Update from the American
Society of Echocardiography and the European Association of Cardiovascular Imaging."
J Am Soc Echocardiogr 2015;28:1-39.e14 (ASE/EACVI 2015).

* Table 4 (2D LVEF, %): men normal 52-72, mildly abnormal 41-51, moderately abnormal 30-40,
  severely abnormal < 30; women normal 54-74, mildly abnormal 41-53, moderately abnormal 30-40,
  severely abnormal < 30.
* Table 1 (2D LV volumes, biplane method of disks, absolute, mean +- 2 SD): EDV men 62-150 mL,
  women 46-106 mL; ESV men 21-61 mL, women 14-42 mL. Our volumes are single-plane (A4C); the
  guideline gives no separate single-plane range, so the biplane one is used and the range text
  says so.
* Table 1, indexed to body surface area (mL/m2): EDV/BSA men 34-74, women 29-61; ESV/BSA men
  11-31, women 8-24. Used only when the header gives a plausible height and weight
  (``reporting.body_size``, Mosteller BSA).

Where the sex is unknown and the two sexes' grades differ, no grade is given: the value is
shown with both ranges and no flag, rather than a guess.

The conclusion describes LV systolic function only. It never names heart failure, which is a
clinical syndrome an echocardiogram alone cannot diagnose.
"""

from __future__ import annotations

from dataclasses import dataclass

from reporting import codes
from reporting.codes import ClinicalCode
from reporting.values import (
    KEY_HEART_RATE,
    KEY_LV_EDV,
    KEY_LV_ESV,
    NOT_MEASURABLE,
    ReportedValue,
    WithheldValue,
)

ASE_2015 = "ASE/EACVI 2015 (Lang et al., J Am Soc Echocardiogr 2015;28:1-39)"

GRADE_NORMAL = "normal"
GRADE_ABOVE = "above normal range"
GRADE_BELOW = "below normal range"
GRADE_MILD = "mildly abnormal"
GRADE_MODERATE = "moderately abnormal"
GRADE_SEVERE = "severely abnormal"


@dataclass(frozen=True)
class ReferenceRange:
    low: float
    high: float
    sex: str | None  # "M", "F", None (applies to both)
    source: str

    @property
    def text(self) -> str:
        who = {"M": "men", "F": "women", None: "adults"}[self.sex]
        return f"{self.low:g}-{self.high:g} ({who}; {self.source})"


@dataclass(frozen=True)
class Interpretation:
    """A value against its range: ``flag`` is the HL7 interpretation code (None when the
    grade cannot be decided), ``grade`` the words."""

    grade: str | None
    flag: ClinicalCode | None
    ranges: tuple[ReferenceRange, ...]  # the range(s) it was judged against

    @property
    def text(self) -> str:
        ranges = "; ".join(r.text for r in self.ranges)
        if self.grade is None:
            return f"not graded (sex unknown; reference {ranges})"
        return f"{self.grade} (reference {ranges})"


# LVEF bands (ASE/EACVI 2015 Table 4): lower limit of normal, upper limit of normal;
# mildly abnormal down to 41, moderately down to 30, severely below 30, for both sexes.
_LVEF_NORMAL = {"M": (52.0, 72.0), "F": (54.0, 74.0)}
_LVEF_MILD_LOW = 41.0
_LVEF_MODERATE_LOW = 30.0
# LV volumes (ASE/EACVI 2015 Table 1, 2D biplane, mL)
_VOLUME_NORMAL = {
    KEY_LV_EDV: {"M": (62.0, 150.0), "F": (46.0, 106.0)},
    KEY_LV_ESV: {"M": (21.0, 61.0), "F": (14.0, 42.0)},
}
# LV volumes indexed to BSA (ASE/EACVI 2015 Table 1, 2D biplane, mL/m2)
INDEXED_VOLUME_NORMAL_ML_PER_M2 = {
    KEY_LV_EDV: {"M": (34.0, 74.0), "F": (29.0, 61.0)},
    KEY_LV_ESV: {"M": (11.0, 31.0), "F": (8.0, 24.0)},
}
# Resting adult heart rate: the conventional 60-100 /min (AHA), not an ASE range
_HEART_RATE_NORMAL = (60.0, 100.0)
_HEART_RATE_SOURCE = "conventional adult resting range (AHA)"

_SEVERITY_OF_GRADE = {
    GRADE_MILD: codes.SEVERITY_MILD,
    GRADE_MODERATE: codes.SEVERITY_MODERATE,
    GRADE_SEVERE: codes.SEVERITY_SEVERE,
}


def _sexes(sex: str | None) -> tuple[str, ...]:
    return (sex,) if sex in ("M", "F") else ("M", "F")


def lvef_grade(ef_percent: float, sex: str) -> str:
    low, high = _LVEF_NORMAL[sex]
    if ef_percent > high:
        return GRADE_ABOVE
    if ef_percent >= low:
        return GRADE_NORMAL
    if ef_percent >= _LVEF_MILD_LOW:
        return GRADE_MILD
    if ef_percent >= _LVEF_MODERATE_LOW:
        return GRADE_MODERATE
    return GRADE_SEVERE


def _range_grade(value: float, low: float, high: float) -> str:
    if value < low:
        return GRADE_BELOW
    if value > high:
        return GRADE_ABOVE
    return GRADE_NORMAL


def _flag(grade: str | None) -> ClinicalCode | None:
    if grade is None:
        return None
    if grade == GRADE_NORMAL:
        return codes.INTERPRETATION_NORMAL
    if grade == GRADE_ABOVE:
        return codes.INTERPRETATION_HIGH
    return codes.INTERPRETATION_LOW


def _agreed(grades: list[str]) -> str | None:
    return grades[0] if len(set(grades)) == 1 else None


def range_grade(key: str, value: float, sex: str | None) -> str | None:
    """Normal, below or above the reference range for an LV volume or the heart rate
    (``reporting.values`` keys); None for a value without a range (stroke volume, EF: EF has
    grades, ``lvef_grade``) or when the sex is unknown and the two sexes' ranges disagree.
    Shared by the EHR's interpretation flags and the grounding guard, so a narrative can only
    call a value normal when the exported Observation does."""
    if key in _VOLUME_NORMAL:
        table = _VOLUME_NORMAL[key]
        return _agreed([_range_grade(value, *table[s]) for s in _sexes(sex)])
    if key == KEY_HEART_RATE:
        return _range_grade(value, *_HEART_RATE_NORMAL)
    return None


def indexed_range_grade(key: str, value_ml_per_m2: float, sex: str | None) -> str | None:
    """Normal, below or above the BSA-indexed range of an LV volume (``KEY_LV_EDV`` or
    ``KEY_LV_ESV``); None when the sex is unknown and the two sexes' grades differ."""
    table = INDEXED_VOLUME_NORMAL_ML_PER_M2[key]
    return _agreed([_range_grade(value_ml_per_m2, *table[s]) for s in _sexes(sex)])


def interpret_indexed(key: str, value_ml_per_m2: float, sex: str | None) -> Interpretation:
    """An LV volume index against its sex-specific ASE/EACVI 2015 range, as ``interpret``
    words it for an absolute volume."""
    table = INDEXED_VOLUME_NORMAL_ML_PER_M2[key]
    source = f"{ASE_2015}, biplane, indexed to BSA"
    ranges = tuple(ReferenceRange(*table[s], s, source) for s in _sexes(sex))
    grade = indexed_range_grade(key, value_ml_per_m2, sex)
    return Interpretation(grade, _flag(grade), ranges)


def interpret(value: ReportedValue, sex: str | None) -> Interpretation | None:
    """The value against its reference range for ``sex`` ("M"/"F"; anything else: unknown);
    None for values without a range (stroke volume)."""
    sexes = _sexes(sex)
    if value.concept == codes.LVEF:
        ranges = tuple(ReferenceRange(*_LVEF_NORMAL[s], s, ASE_2015) for s in sexes)
        grade = _agreed([lvef_grade(value.value, s) for s in sexes])
        return Interpretation(grade, _flag(grade), ranges)
    if value.key in _VOLUME_NORMAL:
        table = _VOLUME_NORMAL[value.key]
        source = f"{ASE_2015}, biplane"
        ranges = tuple(ReferenceRange(*table[s], s, source) for s in sexes)
        grade = range_grade(value.key, value.value, sex)
        return Interpretation(grade, _flag(grade), ranges)
    if value.key == KEY_HEART_RATE:
        rng = ReferenceRange(*_HEART_RATE_NORMAL, None, _HEART_RATE_SOURCE)
        grade = range_grade(value.key, value.value, sex)
        return Interpretation(grade, _flag(grade), (rng,))
    return None


@dataclass(frozen=True)
class SystolicFunction:
    """The conclusion about LV systolic function: a code (with a severity qualifier for
    dysfunction) when the EF can be graded, and the sentence a reader sees."""

    code: ClinicalCode | None
    severity: ClinicalCode | None
    text: str


NOT_GRADED_WITHHELD = "LV systolic function not graded."


def lv_systolic_function(
    ef: ReportedValue | None, sex: str | None, withheld: WithheldValue | None = None
) -> SystolicFunction:
    """What the primary EF says about LV systolic function. With no EF reported and
    ``withheld`` the EF the node does not stand behind (``reporting.values.withheld_ef``), no
    grade and no conclusion: the sentence says the LVEF is not measurable, why, and that it
    must be measured by hand."""
    if ef is None and withheld is not None:
        return SystolicFunction(
            None, None, f"LVEF {NOT_MEASURABLE}: {withheld.detail}. {NOT_GRADED_WITHHELD}"
        )
    if ef is None:
        return SystolicFunction(None, None, "LV systolic function not assessed: no LVEF measured.")
    interpretation = interpret(ef, sex)
    grade = None if interpretation is None else interpretation.grade
    basis = f"{ef.label} {ef.text}"
    if grade == GRADE_NORMAL:
        return SystolicFunction(
            codes.NORMAL_LV_SYSTOLIC_FUNCTION,
            None,
            f"Normal LV systolic function: {basis}. Regional wall motion was not assessed.",
        )
    if grade in _SEVERITY_OF_GRADE:
        severity = _SEVERITY_OF_GRADE[grade]
        return SystolicFunction(
            codes.LV_SYSTOLIC_DYSFUNCTION,
            severity,
            f"{severity.meaning} LV systolic dysfunction: {basis}, {grade}.",
        )
    if grade == GRADE_ABOVE:
        return SystolicFunction(None, None, f"LVEF above the reference range: {basis}.")
    return SystolicFunction(
        None,
        None,
        f"{basis}: not graded, because the normal range depends on sex, which is unknown.",
    )
