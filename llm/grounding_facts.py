"""The measured values a generated text may quote, and the grade of the primary LVEF.

Why a module of its own: the guard (``llm.grounding``), the fact sheet (``llm.facts``), chat and
drafting all need the same numbers with the same tolerances; a text is grounded only if it
matches one of these, so they are defined once, here.
"""

from __future__ import annotations

from dataclasses import dataclass

from inference.types import Measurements
from reporting.interpretation import (
    GRADE_ABOVE,
    GRADE_MILD,
    GRADE_MODERATE,
    GRADE_NORMAL,
    GRADE_SEVERE,
    lvef_grade,
)
from reporting.values import (
    KEY_HEART_RATE,
    KEY_LV_EDV,
    KEY_LV_ESV,
    KEY_LV_SV,
    KEY_LVEF_DISKS,
    KEY_LVEF_REGRESSION,
    NOT_MEASURABLE,
    QUALITY_DECIMALS,
    QUALITY_LABEL,
    QUALITY_THRESHOLD,
    WithheldValue,
    withheld_ef,
    withheld_values,
)

EF_TOLERANCE_POINTS = 0.5
VOLUME_TOLERANCE_ML = 0.5
HEART_RATE_TOLERANCE_BPM = 1.0

KIND_EF = "ef"
KIND_VOLUME = "volume"
KIND_HEART_RATE = "heart_rate"
KIND_UNMEASURED = "unmeasured"
KIND_QUALITY = "quality"
QUALITY_TOLERANCE = 0.005

# the grade words a text may use, as sets of the grades they allow
ALL_GRADES = frozenset({GRADE_NORMAL, GRADE_ABOVE, GRADE_MILD, GRADE_MODERATE, GRADE_SEVERE})
REDUCED = frozenset({GRADE_MILD, GRADE_MODERATE, GRADE_SEVERE})
SEVERITIES = (frozenset({GRADE_MILD}), frozenset({GRADE_MODERATE}), frozenset({GRADE_SEVERE}))


@dataclass(frozen=True)
class Fact:
    """One measured value a text may quote: ``text`` is how prompts print it."""

    key: str  # "ef_regression" | "ef_disks" | "ef_sd" | "edv" | "esv" | "sv" | "heart_rate"
    label: str
    kind: str
    value: float
    unit: str
    tolerance: float
    decimals: int = 1

    @property
    def text(self) -> str:
        return f"{self.value:.{self.decimals}f} {self.unit}".strip()

    def matches(self, number: float) -> bool:
        return abs(number - self.value) <= self.tolerance + 1e-9


def measured_facts(m: Measurements) -> tuple[Fact, ...]:
    """The numbers a text may state, from the measurements alone (nulls and withheld values
    are left out)."""
    withheld = {w.key for w in withheld_values(m)}
    keys = {"ef_regression": KEY_LVEF_REGRESSION, "ef_disks": KEY_LVEF_DISKS, "edv": KEY_LV_EDV,
            "esv": KEY_LV_ESV, "sv": KEY_LV_SV, "heart_rate": KEY_HEART_RATE}  # fmt: skip
    stroke = None if m.edv_ml is None or m.esv_ml is None else m.edv_ml - m.esv_ml
    rows = (
        ("ef_regression", "LVEF (AI regression)", KIND_EF, m.ef_percent, "%",
         EF_TOLERANCE_POINTS),
        ("ef_disks", "LVEF (method of disks)", KIND_EF, m.ef_disks_percent, "%",
         EF_TOLERANCE_POINTS),
        ("edv", "LV end-diastolic volume", KIND_VOLUME, m.edv_ml, "mL", VOLUME_TOLERANCE_ML),
        ("esv", "LV end-systolic volume", KIND_VOLUME, m.esv_ml, "mL", VOLUME_TOLERANCE_ML),
        ("sv", "LV stroke volume", KIND_VOLUME, stroke, "mL", VOLUME_TOLERANCE_ML),
        ("heart_rate", "Heart rate", KIND_HEART_RATE, m.heart_rate_bpm, "/min",
         HEART_RATE_TOLERANCE_BPM),
    )  # fmt: skip
    return tuple(
        Fact(key, label, kind, float(value), unit, tol)
        for key, label, kind, value, unit, tol in rows
        if value is not None and keys[key] not in withheld
    )


def quality_facts(m: Measurements) -> tuple[Fact, ...]:
    """The loop's quality score and the threshold its sentence names ("below 0.50 values are
    withheld"), which a text quoting the report may repeat; none for measurements from before
    the validity gate."""
    if m.quality_score is None:
        return ()
    return tuple(
        Fact(key, label, KIND_QUALITY, value, "", QUALITY_TOLERANCE, QUALITY_DECIMALS)
        for key, label, value in (
            ("quality_score", QUALITY_LABEL, float(m.quality_score)),
            ("quality_threshold", f"{QUALITY_LABEL} threshold", QUALITY_THRESHOLD),
        )
    )


def sd_fact(m: Measurements) -> Fact | None:
    """The SD of the EF over beats, which a text may quote after "±" or "SD"."""
    if m.ef_sd_percent is None:
        return None
    return Fact("ef_sd", "LVEF SD over beats", KIND_EF, float(m.ef_sd_percent), "%",
                EF_TOLERANCE_POINTS)  # fmt: skip


@dataclass(frozen=True)
class LvGrade:
    """The ASE/EACVI 2015 grade of the primary EF. ``grade`` is None when there is no EF, or
    when the sex is unknown and the two sexes' grades differ (then no grade may be stated)."""

    ef: Fact | None
    grade: str | None
    candidates: frozenset[str]
    withheld: WithheldValue | None = None  # the LVEF the node does not stand behind

    @property
    def phrase(self) -> str:
        """The words prompts give the model, so it never has to grade anything itself."""
        if self.ef is None and self.withheld is not None:
            return f"not graded: LVEF {NOT_MEASURABLE} ({self.withheld.reason}); state no grade"
        if self.ef is None:
            return "not assessed (no LVEF measured)"
        if self.grade is None:
            return (
                "not graded: the reference range depends on sex, which is unknown; state no grade"
            )
        return {
            GRADE_NORMAL: "normal LV systolic function",
            GRADE_ABOVE: "LVEF above the normal range (hyperdynamic)",
            GRADE_MILD: "mildly reduced LV systolic function (mildly abnormal LVEF)",
            GRADE_MODERATE: "moderately reduced LV systolic function (moderately abnormal LVEF)",
            GRADE_SEVERE: "severely reduced LV systolic function (severely abnormal LVEF)",
        }[self.grade]


def lv_grade(m: Measurements, sex: str | None) -> LvGrade:
    """The primary EF (regression, else method of disks) graded for ``sex`` ("M"/"F"/other)."""
    facts = {f.key: f for f in measured_facts(m)}
    ef = facts.get("ef_regression") or facts.get("ef_disks")
    if ef is None:
        return LvGrade(None, None, frozenset(), withheld_ef(withheld_values(m)))
    sexes = (sex,) if sex in ("M", "F") else ("M", "F")
    grades = frozenset(lvef_grade(ef.value, s) for s in sexes)
    return LvGrade(ef, next(iter(grades)) if len(grades) == 1 else None, grades)
