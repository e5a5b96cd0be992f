"""The measurements a report states, in one list every surface shares.

The SR, the PDF table and the FHIR Observations all iterate ``reported_values``: one place
decides which numbers are reported (only those measured: a null is left out, never written as
0), how they are rounded, what they are called, which method and algorithm produced them and
which source frames they rest on. So the PACS, the EHR and the printed page cannot disagree.

Its companion ``withheld_values`` lists the values the node does not stand behind (the validity
gate, ``inference.gate``, or a step that could not measure them), each with the reason every
surface states instead of a number: "LVEF (AI regression) not measurable: LV not identified on
30 of 30 frames; manual measurement required." A value is in exactly one of the two lists, or
in neither (none of this loop's values is ever both shown and withheld). ``loop_quality`` is the
loop's quality score as every surface prints it beside the EF.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from inference.gate import MANUAL, validity_of
from inference.types import Measurements, QualityFlag
from reporting import codes
from reporting.codes import ClinicalCode
from reporting.types import AlgorithmInfo, Algorithms

DECIMALS = 1  # every reported value: 0.1 %, 0.1 mL, 0.1 /min

KEY_LVEF_REGRESSION = "lvef_regression"
KEY_LVEF_DISKS = "lvef_disks"
KEY_LV_EDV = "lv_edv"
KEY_LV_ESV = "lv_esv"
KEY_LV_SV = "lv_sv"
KEY_HEART_RATE = "heart_rate"

NOT_MEASURABLE = "not measurable"
MANUAL_MEASUREMENT = MANUAL  # "manual measurement required"
QUALITY_LABEL = "Image quality score"
QUALITY_DECIMALS = 2
QUALITY_THRESHOLD = 0.5  # the score on the validity gate's threshold (``inference.gate``)

LABELS = {
    KEY_LVEF_REGRESSION: "LVEF (AI regression)",
    KEY_LVEF_DISKS: "LVEF (method of disks)",
    KEY_LV_EDV: "LV end-diastolic volume",
    KEY_LV_ESV: "LV end-systolic volume",
    KEY_LV_SV: "LV stroke volume",
    KEY_HEART_RATE: "Heart rate",
}
# each reported value's field(s) in ``Measurements`` (stroke volume rests on both volumes)
GATED_FIELDS: dict[str, tuple[str, ...]] = {
    KEY_LVEF_REGRESSION: ("ef_percent",),
    KEY_LVEF_DISKS: ("ef_disks_percent",),
    KEY_LV_EDV: ("edv_ml",),
    KEY_LV_ESV: ("esv_ml",),
    KEY_LV_SV: ("edv_ml", "esv_ml"),
    KEY_HEART_RATE: ("heart_rate_bpm",),
}


@dataclass(frozen=True)
class ReportedValue:
    """One reported number with everything a surface needs to state it honestly."""

    key: str  # stable: FHIR identifiers, PDF rows and tests match on it
    label: str
    concept: ClinicalCode
    unit: ClinicalCode
    value: float
    # coded method (DICOM "Measurement Method", FHIR method); None for the regression EF, which
    # no method code describes: its algorithm identification says what produced it
    method: ClinicalCode | None
    method_text: str  # the method in words, with the averaging
    algorithm: AlgorithmInfo | None
    source_frames: tuple[int, ...]  # 0-based source frames it was measured on; () = whole loop
    left_ventricle: bool  # finding site LV, image view A4C
    n_beats: int  # beats averaged (0: not a per-beat mean)

    @property
    def unit_text(self) -> str:
        return self.unit.value

    @property
    def text(self) -> str:
        """``"55.2 %"``: the value as every surface prints it."""
        return f"{self.value:.{DECIMALS}f} {self.unit_text}"


@dataclass(frozen=True)
class WithheldValue:
    """A value the report would state but the node does not stand behind: every surface shows
    ``text`` ("not measurable") and ``reason``, never a number."""

    key: str  # the same keys as ``ReportedValue``
    label: str
    concept: ClinicalCode
    unit: ClinicalCode
    method: ClinicalCode | None
    left_ventricle: bool
    reason: str  # e.g. "LV not identified on 30 of 30 frames"

    @property
    def text(self) -> str:
        return NOT_MEASURABLE

    @property
    def detail(self) -> str:
        """``"<reason>; manual measurement required"``: what follows "not measurable"."""
        return f"{self.reason}; {MANUAL_MEASUREMENT}"

    @property
    def statement(self) -> str:
        """The report sentence: ``"<label> not measurable: <reason>; manual measurement
        required."``"""
        return f"{self.label} {NOT_MEASURABLE}: {self.detail}."


@dataclass(frozen=True)
class LoopQuality:
    """The loop's quality score (``Measurements.quality_score``): 0 to 1, 0.5 exactly on the
    threshold of the validity gate's weakest check, so below 0.5 at least one value was
    withheld and 1.0 means every check is at its ideal."""

    score: float

    @property
    def text(self) -> str:
        return f"{self.score:.{QUALITY_DECIMALS}f}"

    @property
    def statement(self) -> str:
        """``"Image quality score 0.82 (0-1; below 0.50 values are withheld)."``"""
        return (
            f"{QUALITY_LABEL} {self.text} (0-1; below {QUALITY_THRESHOLD:.{QUALITY_DECIMALS}f} "
            "values are withheld)."
        )


def loop_quality(measurements: Measurements) -> LoopQuality | None:
    """The quality score, None for measurements stored before the validity gate existed."""
    score = measurements.quality_score
    return None if score is None else LoopQuality(float(score))


def _measured(m: Measurements, key: str) -> bool:
    return all(validity_of(m, f).measured for f in GATED_FIELDS[key])


def withheld_values(measurements: Measurements) -> list[WithheldValue]:
    """The values ``reported_values`` leaves out, with why, in the same order. Stroke volume is
    withheld when the EDV or the ESV is."""
    m = measurements
    mod = codes.METHOD_OF_DISKS_SINGLE_PLANE
    rows = [
        (KEY_LVEF_REGRESSION, LABELS[KEY_LVEF_REGRESSION], codes.LVEF, codes.UNIT_PERCENT,
         None, True),
        (KEY_LVEF_DISKS, LABELS[KEY_LVEF_DISKS], codes.LVEF, codes.UNIT_PERCENT, mod, True),
        (KEY_LV_EDV, LABELS[KEY_LV_EDV], codes.LV_EDV, codes.UNIT_ML, mod, True),
        (KEY_LV_ESV, LABELS[KEY_LV_ESV], codes.LV_ESV, codes.UNIT_ML, mod, True),
        (KEY_LV_SV, LABELS[KEY_LV_SV], codes.STROKE_VOLUME, codes.UNIT_ML, mod, True),
        (KEY_HEART_RATE, LABELS[KEY_HEART_RATE], codes.HEART_RATE, codes.UNIT_PER_MIN,
         None, False),
    ]  # fmt: skip
    out = []
    for key, label, concept, unit, method, lv in rows:
        if _measured(m, key):
            continue
        reasons = [validity_of(m, f).reason for f in GATED_FIELDS[key]]
        reasons = [r for r in dict.fromkeys(reasons) if r] or ["not measured"]
        out.append(WithheldValue(key, label, concept, unit, method, lv, "; ".join(reasons)))
    return out


def withheld_by_key(measurements: Measurements) -> dict[str, WithheldValue]:
    return {w.key: w for w in withheld_values(measurements)}


# Quality flags of the measurement step that quote values by number (``inference.measure``):
# the flag's code, the values it quotes, and how their numbers read in its message. The gate
# adds its own flag for the same problem without the numbers.
_FLAGS_QUOTING_VALUES: dict[str, tuple[tuple[str, ...], re.Pattern[str]]] = {
    "ef_methods_disagree": ((KEY_LVEF_REGRESSION, KEY_LVEF_DISKS), re.compile(r"\d\s?%")),
    "heart_rate_disagrees": ((KEY_HEART_RATE,), re.compile(r"\d\s?/\s?min")),
}


def shown_flags(measurements: Measurements) -> tuple[QualityFlag, ...]:
    """The quality flags every surface prints: all of them, except one that quotes the number
    of a value now withheld ("Regression EF (46 %) and method-of-disks EF (62 %) differ ..."
    once the gate withheld both EFs), which would show the number the report must not."""
    withheld = {w.key for w in withheld_values(measurements)}
    shown = []
    for flag in measurements.flags:
        quoted = _FLAGS_QUOTING_VALUES.get(flag.code)
        if quoted and withheld & set(quoted[0]) and quoted[1].search(flag.message):
            continue
        shown.append(flag)
    return tuple(shown)


def reported_values(measurements: Measurements, algorithms: Algorithms) -> list[ReportedValue]:
    """The measured values (non-null, and not withheld: see ``withheld_values``), primary EF
    (regression) first."""
    m = measurements
    volume_beats = [b for b in m.beats if b.edv_ml is not None and b.esv_ml is not None]
    ed_frames = tuple(sorted({b.ed_frame for b in volume_beats}))
    es_frames = tuple(sorted({b.es_frame for b in volume_beats}))
    both = tuple(sorted(set(ed_frames) | set(es_frames)))
    n_vol = len(volume_beats)
    disks = f"method of disks, single plane (A4C){_mean_of(n_vol)}"
    # the disks EF is a ratio: without a pixel spacing it still rests on the beats' volumes in
    # pixel units, though no beat carries a volume in mL
    disk_beats = [b for b in m.beats if b.ef_disks_percent is not None] or volume_beats
    disk_frames = tuple(sorted({f for b in disk_beats for f in (b.ed_frame, b.es_frame)}))
    disks_ef = f"method of disks, single plane (A4C){_mean_of(len(disk_beats))}"
    mod = codes.METHOD_OF_DISKS_SINGLE_PLANE
    seg = algorithms.segmentation

    ef_beats = [b for b in m.beats if b.ef_percent is not None]
    if m.ef_source == "beats":
        ef_text = (
            "video regression network, clips aligned to end-systole"
            f"{_mean_of(len(ef_beats))}"
        )
        ef_frames, n_ef = tuple(sorted({b.es_frame for b in ef_beats})), len(ef_beats)
    elif m.ef_source == "all_clips":
        ef_text = "video regression network, mean over every clip of the loop (no beat found)"
        ef_frames, n_ef = (), 0
    else:
        ef_text, ef_frames, n_ef = "video regression network", (), 0
    complete = [b for b in m.beats if b.complete]
    if m.heart_rate_source == "beats":
        hr_text = f"from {len(complete)} cardiac cycle(s) on the LV area curve"
        hr_frames = tuple(sorted({f for b in complete for f in (b.ed_frame, b.next_ed_frame)}))
    elif m.heart_rate_source == "ecg":  # issue #14: R-R intervals of the loop's ECG
        hr_text = "from the R-R intervals of the loop's ECG"
        hr_frames = tuple(sorted({b.ed_frame for b in m.beats}))
    else:
        hr_text, hr_frames = "from the scanner's header (not measured on the loop)", ()
    stroke = None if m.edv_ml is None or m.esv_ml is None else m.edv_ml - m.esv_ml

    candidates = [
        (KEY_LVEF_REGRESSION, codes.LVEF, codes.UNIT_PERCENT,
         m.ef_percent, None, ef_text, algorithms.ejection_fraction,
         ef_frames, True, n_ef),
        (KEY_LVEF_DISKS, codes.LVEF, codes.UNIT_PERCENT,
         m.ef_disks_percent, mod, disks_ef, seg, disk_frames, True, len(disk_beats)),
        (KEY_LV_EDV, codes.LV_EDV, codes.UNIT_ML,
         m.edv_ml, mod, disks, seg, ed_frames, True, n_vol),
        (KEY_LV_ESV, codes.LV_ESV, codes.UNIT_ML,
         m.esv_ml, mod, disks, seg, es_frames, True, n_vol),
        (KEY_LV_SV, codes.STROKE_VOLUME, codes.UNIT_ML,
         stroke, mod, f"EDV - ESV, {disks}", seg, both, True, n_vol),
        (KEY_HEART_RATE, codes.HEART_RATE, codes.UNIT_PER_MIN,
         m.heart_rate_bpm, None, hr_text, None, hr_frames, False, 0),
    ]  # fmt: skip
    return [
        ReportedValue(key, LABELS[key], concept, unit, round(float(value), DECIMALS), method,
                      method_text, algorithm, tuple(int(f) for f in frames), lv, n_beats)
        for (key, concept, unit, value, method, method_text, algorithm, frames, lv,
             n_beats) in candidates
        if value is not None and _measured(m, key)
    ]  # fmt: skip


def _mean_of(n_beats: int) -> str:
    """", mean of 2 beats"; nothing when no beat is averaged (never "mean of 0 beats")."""
    if n_beats < 1:
        return ""
    return f", mean of {n_beats} beat{'s' if n_beats != 1 else ''}"


def primary_ef(values: list[ReportedValue]) -> ReportedValue | None:
    """The EF a conclusion rests on: the regression EF when measured, else the disks EF."""
    by_key = {v.key: v for v in values}
    return by_key.get(KEY_LVEF_REGRESSION) or by_key.get(KEY_LVEF_DISKS)


def withheld_ef(withheld: list[WithheldValue]) -> WithheldValue | None:
    """The withheld EF a conclusion names when no EF is reported: the regression EF's, else the
    disks EF's (callers ask only when ``primary_ef`` found none)."""
    by_key = {w.key: w for w in withheld}
    return by_key.get(KEY_LVEF_REGRESSION) or by_key.get(KEY_LVEF_DISKS)
