"""The measurements a report states, in one list every surface shares.

The SR, the PDF table and the FHIR Observations all iterate ``reported_values``: one place
decides which numbers are reported (only those measured: a null is left out, never written as
0), how they are rounded, what they are called, which method and algorithm produced them and
which source frames they rest on. So the PACS, the EHR and the printed page cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from inference.types import Measurements
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


def reported_values(measurements: Measurements, algorithms: Algorithms) -> list[ReportedValue]:
    """The non-null measurements, primary EF (regression) first."""
    m = measurements
    volume_beats = [b for b in m.beats if b.edv_ml is not None and b.esv_ml is not None]
    ed_frames = tuple(sorted({b.ed_frame for b in volume_beats}))
    es_frames = tuple(sorted({b.es_frame for b in volume_beats}))
    both = tuple(sorted(set(ed_frames) | set(es_frames)))
    n_vol = len(volume_beats)
    disks = f"method of disks, single plane (A4C), mean of {_beats(n_vol)}"
    mod = codes.METHOD_OF_DISKS_SINGLE_PLANE
    seg = algorithms.segmentation

    ef_beats = [b for b in m.beats if b.ef_percent is not None]
    if m.ef_source == "beats":
        ef_text = (
            "video regression network, clips aligned to end-systole, "
            f"mean of {_beats(len(ef_beats))}"
        )
        ef_frames, n_ef = tuple(sorted({b.es_frame for b in ef_beats})), len(ef_beats)
    else:
        ef_text = "video regression network, mean over every clip of the loop (no beat found)"
        ef_frames, n_ef = (), 0
    complete = [b for b in m.beats if b.complete]
    if m.heart_rate_source == "beats":
        hr_text = f"from {len(complete)} cardiac cycle(s) on the LV area curve"
        hr_frames = tuple(sorted({f for b in complete for f in (b.ed_frame, b.next_ed_frame)}))
    else:
        hr_text, hr_frames = "from the scanner's header (not measured on the loop)", ()
    stroke = None if m.edv_ml is None or m.esv_ml is None else m.edv_ml - m.esv_ml

    candidates = [
        (KEY_LVEF_REGRESSION, "LVEF (AI regression)", codes.LVEF, codes.UNIT_PERCENT,
         m.ef_percent, None, ef_text, algorithms.ejection_fraction,
         ef_frames, True, n_ef),
        (KEY_LVEF_DISKS, "LVEF (method of disks)", codes.LVEF, codes.UNIT_PERCENT,
         m.ef_disks_percent, mod, disks, seg, both, True, n_vol),
        (KEY_LV_EDV, "LV end-diastolic volume", codes.LV_EDV, codes.UNIT_ML,
         m.edv_ml, mod, disks, seg, ed_frames, True, n_vol),
        (KEY_LV_ESV, "LV end-systolic volume", codes.LV_ESV, codes.UNIT_ML,
         m.esv_ml, mod, disks, seg, es_frames, True, n_vol),
        (KEY_LV_SV, "LV stroke volume", codes.STROKE_VOLUME, codes.UNIT_ML,
         stroke, mod, f"EDV - ESV, {disks}", seg, both, True, n_vol),
        (KEY_HEART_RATE, "Heart rate", codes.HEART_RATE, codes.UNIT_PER_MIN,
         m.heart_rate_bpm, None, hr_text, None, hr_frames, False, 0),
    ]  # fmt: skip
    return [
        ReportedValue(key, label, concept, unit, round(float(value), DECIMALS), method,
                      method_text, algorithm, tuple(int(f) for f in frames), lv, n_beats)
        for (key, label, concept, unit, value, method, method_text, algorithm, frames, lv,
             n_beats) in candidates
        if value is not None
    ]  # fmt: skip


def _beats(n: int) -> str:
    return f"{n} beat{'s' if n != 1 else ''}"


def primary_ef(values: list[ReportedValue]) -> ReportedValue | None:
    """The EF a conclusion rests on: the regression EF when measured, else the disks EF."""
    by_key = {v.key: v for v in values}
    return by_key.get(KEY_LVEF_REGRESSION) or by_key.get(KEY_LVEF_DISKS)
