"""The validity gate: which measurements of one loop the node can stand behind.

A wrong EF that looks right is the worst thing this node can do, so every value the measurement
step produced passes this gate before anything reports it. The gate looks at evidence the
networks' outputs carry about themselves (is there one plausible LV on nearly every frame, is the
segmentation sure of it, does its area move like a heart, do the two EF methods agree, does the
loop's rhythm agree with the header or ECG) and at whether the loop resembles what the models
were trained on (``inference.ood``). A value that fails becomes ``None`` with a
``ValueValidity`` that says why in words a cardiologist reads; nothing downstream ever sees the
number.

The thresholds are a ``GateThresholds`` the configuration fills; their defaults were chosen from
``echo-agent evaluate gate`` (see the README), not by hand.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import cv2
import numpy as np

from inference.beats import smooth_curve, smoothing_window_frames
from inference.cavity_edge import cavity_edge_contrast, systolic_edge_contrast
from inference.measure import FLAG_EF_METHODS_DISAGREE, FLAG_HEART_RATE_DISAGREES
from inference.ood import FEATURE_WORDS, OodReference, furthest_feature, loop_features, ood_score
from inference.types import (
    GATED_KEYS,
    GateEvidence,
    Measurements,
    QualityFlag,
    Validity,
    ValueValidity,
)

# Flag codes the gate adds (stable: software matches on them).
FLAG_LV_NOT_IDENTIFIED = "lv_not_identified"
FLAG_LOW_SEGMENTATION_CONFIDENCE = "low_segmentation_confidence"
FLAG_INCONSISTENT_LV_AREA = "inconsistent_lv_area"
FLAG_EF_DISAGREEMENT = "ef_methods_disagree_beyond_limit"
FLAG_OUT_OF_DISTRIBUTION = "out_of_distribution"
FLAG_OUTLINE_OFF_CAVITY_EDGE = "lv_outline_off_cavity_edge"
FLAG_SYSTOLIC_OUTLINE_OFF_CAVITY_EDGE = "lv_outline_off_cavity_edge_in_systole"

MANUAL = "manual measurement required"
NOTHING_WITHHELD = "no reported value rests on it"
# the values the smallest (systolic) LV outlines give directly
SYSTOLIC_OUTLINE_KEYS = ("ef_disks_percent", "edv_ml", "esv_ml")

# An LV component counts as plausible when it covers this share of the fan on the 112 grid:
# the LV of an A4C view fills a few per cent (small, foreshortened) to a third (dilated) of it.
MIN_LV_FAN_FRACTION = 0.01
MAX_LV_FAN_FRACTION = 0.40
# ... and holds this share of all LV pixels of the frame (one LV, not scattered blobs)
MIN_MAIN_COMPONENT_FRACTION = 0.85
# probability band counted as "unsure" for the confidence measure
UNSURE_LOW, UNSURE_HIGH = 0.2, 0.8
AREA_JUMP_FRACTION = 0.15  # |area - smoothed| above this share of the median area is a jump


@dataclass(frozen=True)
class GateThresholds:
    """Where each check fails. Defaults from ``echo-agent evaluate gate`` on the phantom test
    split and the negative set (README, "The validity gate")."""

    min_lv_coverage: float = 0.9  # frames with one plausible LV component
    min_segmentation_confidence: float = 0.72  # 1 - unsure pixels / (LV + unsure pixels)
    min_area_consistency: float = 0.8  # frames without a jump of the LV area curve
    max_ef_disagreement_points: float = 15.0  # |regression - disks|
    max_heart_rate_disagreement_fraction: float = 0.15
    max_ood_score: float = 3.0  # robust z-distance to the training set (``inference.ood``)
    # grey step across the LV outline, in fan SDs (``inference.cavity_edge``)
    min_cavity_edge_contrast: float = 0.25
    # the same over the quarter of frames with the smallest outline (``systolic_edge_contrast``),
    # the frames the ESV and the disks' EF come from
    min_systolic_cavity_edge_contrast: float = 0.33

    def __post_init__(self) -> None:
        for name in ("min_lv_coverage", "min_segmentation_confidence", "min_area_consistency"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")
        for name in (
            "max_ef_disagreement_points",
            "max_heart_rate_disagreement_fraction",
            "max_ood_score",
            "min_cavity_edge_contrast",
            "min_systolic_cavity_edge_contrast",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True)
class GateSettings:
    """The thresholds and, when the model set ships one, its training-set reference."""

    thresholds: GateThresholds = field(default_factory=GateThresholds)
    ood_reference: OodReference | None = None


def gather_evidence(
    measurements: Measurements,
    lv_probability: np.ndarray,
    sector_mask: np.ndarray,
    network_input: np.ndarray,
    header_heart_rate_bpm: float | None,
    ood_reference: OodReference | None,
) -> GateEvidence:
    """What the gate decides on, measured from the segmentation's probabilities on the grid
    (``lv_probability`` (frames, S, S), zero outside ``sector_mask``), the measurements and
    the network input (for the out-of-distribution check)."""
    n = int(lv_probability.shape[0])
    fan_px = max(int(np.count_nonzero(sector_mask)), 1)
    identified = 0
    confidences = []
    for p in lv_probability:
        lv = p > 0.5
        area = int(np.count_nonzero(lv))
        unsure = int(np.count_nonzero((p > UNSURE_LOW) & (p < UNSURE_HIGH)))
        confidences.append(0.0 if area == 0 else 1.0 - unsure / (area + unsure))
        if area and _one_plausible_component(lv, area, fan_px):
            identified += 1
    area_px = np.asarray(measurements.lv_area_px, np.float64)
    ood, furthest = None, None
    if ood_reference is not None:
        features = loop_features(network_input, sector_mask, lv_probability)
        ood = ood_score(features, ood_reference)
        furthest = furthest_feature(features, ood_reference)
    measured_hr = measurements.heart_rate_bpm if measurements.heart_rate_source == "beats" else None
    return GateEvidence(
        n_frames=n,
        lv_frames=identified,
        segmentation_confidence=float(np.median(confidences)) if confidences else 0.0,
        area_consistency=_area_consistency(area_px, measurements.frame_time_ms),
        ef_disagreement_points=(
            None
            if measurements.ef_percent is None or measurements.ef_disks_percent is None
            else abs(measurements.ef_percent - measurements.ef_disks_percent)
        ),
        heart_rate_disagreement_fraction=_relative_difference(measured_hr, header_heart_rate_bpm),
        ood_score=ood,
        ood_furthest_feature=furthest,
        cavity_edge_contrast=cavity_edge_contrast(network_input, sector_mask, lv_probability),
        systolic_cavity_edge_contrast=systolic_edge_contrast(
            network_input, sector_mask, lv_probability
        ),
    )


def _one_plausible_component(lv: np.ndarray, area: int, fan_px: int) -> bool:
    count, _labels, stats, _ = cv2.connectedComponentsWithStats(lv.astype(np.uint8), 8)
    if count < 2:
        return False
    largest = int(stats[1:, cv2.CC_STAT_AREA].max())
    fraction = largest / fan_px
    return (
        largest >= MIN_MAIN_COMPONENT_FRACTION * area
        and MIN_LV_FAN_FRACTION <= fraction <= MAX_LV_FAN_FRACTION
    )


def _area_consistency(area_px: np.ndarray, frame_time_ms: float | None) -> float:
    """Share of frames whose LV area sits on the smoothed curve (a heart changes smoothly)."""
    if area_px.size == 0 or not np.any(area_px > 0):
        return 0.0
    smoothed = smooth_curve(area_px, smoothing_window_frames(frame_time_ms))
    median = float(np.median(area_px[area_px > 0]))
    jumps = np.abs(area_px - smoothed) > AREA_JUMP_FRACTION * median
    return float(1.0 - np.count_nonzero(jumps | (area_px == 0)) / area_px.size)


def _most_different(feature: str | None) -> str:
    """The clause naming the feature furthest from the training loops, after the distance;
    empty for evidence stored before the gate named it."""
    words = FEATURE_WORDS.get(feature or "")
    return f", most of all in {words}" if words else ""


def _relative_difference(measured: float | None, reference: float | None) -> float | None:
    if not measured or not reference:
        return None
    return abs(measured - reference) / reference


def apply_gate(
    measurements: Measurements, evidence: GateEvidence, thresholds: GateThresholds
) -> Measurements:
    """The measurements with every value the evidence does not support withheld (``None``),
    each value's validity and reason, the gate's flags and the loop's quality score."""
    t = thresholds
    reasons: dict[str, list[str]] = {key: [] for key in GATED_KEYS}
    flags: list[QualityFlag] = []
    lv_keys = ("ef_percent", "ef_disks_percent", "edv_ml", "esv_ml")
    n = evidence.n_frames

    def withhold(keys: tuple[str, ...], code: str, reason: str) -> None:
        # a check that finds nothing resting on its failing evidence withholds nothing, and its
        # flag must not ask for a manual measurement of a value that is shown beside it
        consequence = MANUAL if keys else NOTHING_WITHHELD
        flags.append(QualityFlag(code, f"{reason[0].upper()}{reason[1:]}; {consequence}."))
        for key in keys:
            reasons[key].append(reason)

    from_beats = measurements.heart_rate_source == "beats"
    beat_keys = (*lv_keys, "heart_rate_bpm") if from_beats else lv_keys
    if evidence.lv_coverage < t.min_lv_coverage:
        withhold(
            beat_keys,
            FLAG_LV_NOT_IDENTIFIED,
            f"LV not identified on {n - evidence.lv_frames} of {n} frames",
        )
    if evidence.ood_score is not None and evidence.ood_score > t.max_ood_score:
        withhold(
            beat_keys,
            FLAG_OUT_OF_DISTRIBUTION,
            "the images differ from those the models were trained on "
            f"(distance {evidence.ood_score:.1f}, limit {t.max_ood_score:.1f})"
            + _most_different(evidence.ood_furthest_feature),
        )
    if evidence.lv_frames and evidence.segmentation_confidence < t.min_segmentation_confidence:
        withhold(
            beat_keys,
            FLAG_LOW_SEGMENTATION_CONFIDENCE,
            f"the LV outline is uncertain (confidence {evidence.segmentation_confidence:.2f}, "
            f"limit {t.min_segmentation_confidence:.2f})",
        )
    if evidence.lv_frames and evidence.area_consistency < t.min_area_consistency:
        withhold(
            beat_keys,
            FLAG_INCONSISTENT_LV_AREA,
            f"the LV area jumps between frames on {round((1 - evidence.area_consistency) * n)} "
            f"of {n} frames",
        )
    edge = evidence.cavity_edge_contrast
    if evidence.lv_frames and edge is not None and edge < t.min_cavity_edge_contrast:
        withhold(
            lv_keys,
            FLAG_OUTLINE_OFF_CAVITY_EDGE,
            "the LV outline does not follow the dark cavity's border (edge contrast "
            f"{edge:.2f}, limit {t.min_cavity_edge_contrast:.2f})",
        )
    systolic = evidence.systolic_cavity_edge_contrast
    limit = t.min_systolic_cavity_edge_contrast
    if evidence.lv_frames and systolic is not None and systolic < limit:
        # what rests on the smallest outlines: the ESV (so the volumes and the disks' EF) and the
        # regression's EF when its clips were aligned to end-systoles found on them; averaged
        # over every clip (no beat found) it never saw an outline; a value the measurement step
        # did not give keeps its own reason
        resting = lv_keys if measurements.ef_source == "beats" else SYSTOLIC_OUTLINE_KEYS
        withhold(
            tuple(key for key in resting if getattr(measurements, key) is not None),
            FLAG_SYSTOLIC_OUTLINE_OFF_CAVITY_EDGE,
            "in systole the LV outline does not follow the dark cavity's border (edge "
            f"contrast {systolic:.2f} on the smallest outlines, limit {limit:.2f})",
        )
    if (
        evidence.ef_disagreement_points is not None
        and evidence.ef_disagreement_points > t.max_ef_disagreement_points
    ):
        withhold(
            ("ef_percent", "ef_disks_percent"),
            FLAG_EF_DISAGREEMENT,
            "the AI regression and method-of-disks EF disagree by more than "
            f"{t.max_ef_disagreement_points:.0f} points",
        )
    if (
        evidence.heart_rate_disagreement_fraction is not None
        and evidence.heart_rate_disagreement_fraction > t.max_heart_rate_disagreement_fraction
    ):
        withhold(
            ("heart_rate_bpm", "edv_ml", "esv_ml", "ef_disks_percent"),
            FLAG_HEART_RATE_DISAGREES,
            "the cardiac cycles found on the LV area curve disagree with the header heart rate by "
            f"more than {t.max_heart_rate_disagreement_fraction:.0%} (beat timing unreliable)",
        )

    values = {key: getattr(measurements, key) for key in GATED_KEYS}
    validity: dict[str, ValueValidity] = {}
    for key in GATED_KEYS:
        if reasons[key]:
            validity[key] = ValueValidity(Validity.NOT_MEASURABLE, "; ".join(reasons[key]))
            values[key] = None
        elif values[key] is None:
            validity[key] = ValueValidity(
                Validity.NOT_MEASURABLE, _missing_reason(key, measurements)
            )
        else:
            validity[key] = ValueValidity(Validity.MEASURED)
    beats = measurements.beats
    if values["ef_percent"] is None or values["edv_ml"] is None:
        beats = tuple(_strip_beat(b, values) for b in beats)
    return dataclasses.replace(
        measurements,
        **values,
        ef_sd_percent=None if values["ef_percent"] is None else measurements.ef_sd_percent,
        ef_clips_mean_percent=(
            None if values["ef_percent"] is None else measurements.ef_clips_mean_percent
        ),
        ef_clips_percent=() if values["ef_percent"] is None else measurements.ef_clips_percent,
        beats=beats,
        flags=_merged_flags(measurements.flags, flags, values),
        validity=validity,
        quality_score=quality_score(evidence, thresholds),
        gate=evidence,
    )


# Measurement-step flags whose text quotes values, and the values they quote: once the gate
# withholds one of them the flag goes (its number must not reach any surface or the stored JSON;
# the gate's own flag, without numbers, says what is wrong).
_FLAGS_QUOTING_VALUES = {
    FLAG_EF_METHODS_DISAGREE: ("ef_percent", "ef_disks_percent"),
    FLAG_HEART_RATE_DISAGREES: ("heart_rate_bpm",),
}


def _merged_flags(
    measured: tuple[QualityFlag, ...],
    gate_flags: list[QualityFlag],
    values: dict[str, float | None],
) -> tuple[QualityFlag, ...]:
    kept = [
        flag
        for flag in measured
        if not any(values[key] is None for key in _FLAGS_QUOTING_VALUES.get(flag.code, ()))
    ]
    codes = {flag.code for flag in kept}
    for flag in gate_flags:
        if flag.code not in codes:
            kept.append(flag)
            codes.add(flag.code)
    return tuple(kept)


def _strip_beat(beat, values: dict[str, float | None]):  # type: ignore[no-untyped-def]
    """A beat without the per-beat numbers the gate withheld for the loop."""
    changes: dict[str, None] = {}
    if values["ef_percent"] is None:
        changes["ef_percent"] = None
    if values["ef_disks_percent"] is None:
        changes["ef_disks_percent"] = None
    if values["edv_ml"] is None:
        changes.update(edv_ml=None, esv_ml=None, ed_area_cm2=None, es_area_cm2=None)
    return dataclasses.replace(beat, **changes)


def _missing_reason(key: str, m: Measurements) -> str:
    """Why the measurement step itself produced no value (before any gate check)."""
    codes = {f.code: f.message for f in m.flags}
    calibration = [f.message for f in m.flags if f.code.startswith("calibration_")]
    if key in ("edv_ml", "esv_ml"):
        if calibration:
            return calibration[0].rstrip(".")
        if "no_spacing" in codes:
            return "no physical calibration in the image header"
        return "no cardiac cycle (end-diastole and end-systole) found on the LV area curve"
    if key == "heart_rate_bpm":
        if "no_frame_time" in codes:
            return "no frame timing in the header"
        return "no complete cardiac cycle in the loop and no heart rate in the header"
    if key == "ef_percent":
        return "no EF model ran on this loop"
    return "no cardiac cycle (end-diastole and end-systole) found on the LV area curve"


def quality_score(evidence: GateEvidence, thresholds: GateThresholds) -> float:
    """One number from 0 to 1 for how well this loop supports its measurements: the weakest
    check's margin, scaled so that 0.5 sits exactly on its threshold (below 0.5, at least one
    value was withheld; 1.0 means every check is at its ideal)."""
    t = thresholds
    scores = [
        _higher_is_better(evidence.lv_coverage, t.min_lv_coverage),
        _higher_is_better(evidence.segmentation_confidence, t.min_segmentation_confidence),
        _higher_is_better(evidence.area_consistency, t.min_area_consistency),
    ]
    if evidence.ef_disagreement_points is not None:
        scores.append(
            _lower_is_better(evidence.ef_disagreement_points, t.max_ef_disagreement_points)
        )
    if evidence.heart_rate_disagreement_fraction is not None:
        scores.append(
            _lower_is_better(
                evidence.heart_rate_disagreement_fraction, t.max_heart_rate_disagreement_fraction
            )
        )
    if evidence.ood_score is not None:
        scores.append(_lower_is_better(evidence.ood_score, t.max_ood_score))
    if evidence.cavity_edge_contrast is not None:
        scores.append(_at_least(evidence.cavity_edge_contrast, t.min_cavity_edge_contrast))
    if evidence.systolic_cavity_edge_contrast is not None:
        scores.append(
            _at_least(evidence.systolic_cavity_edge_contrast, t.min_systolic_cavity_edge_contrast)
        )
    return round(float(min(scores)), 3)


def _higher_is_better(value: float, threshold: float) -> float:
    if threshold >= 1.0:
        return 1.0 if value >= 1.0 else 0.5 * value
    if value >= threshold:
        return 0.5 + 0.5 * (value - threshold) / (1.0 - threshold)
    return 0.5 * value / threshold if threshold > 0 else 0.0


def _at_least(value: float, threshold: float) -> float:
    """For evidence without an upper bound: 0.5 on the threshold, 1.0 at twice it."""
    if value >= threshold:
        return min(1.0, 0.5 + 0.5 * (value - threshold) / threshold)
    return max(0.0, 0.5 * value / threshold)


def _lower_is_better(value: float, threshold: float) -> float:
    if value <= threshold:
        return 1.0 - 0.5 * value / threshold
    return 0.5 * threshold / value


def validity_of(measurements: Measurements, key: str) -> ValueValidity:
    """The validity of ``key`` (one of ``GATED_KEYS``), also for measurements stored before the
    gate existed (then: measured when a value is there)."""
    if key in measurements.validity:
        return measurements.validity[key]
    if getattr(measurements, key) is None:
        return ValueValidity(Validity.NOT_MEASURABLE, _missing_reason(key, measurements))
    return ValueValidity(Validity.MEASURED)


__all__ = [
    "GateSettings",
    "GateThresholds",
    "apply_gate",
    "gather_evidence",
    "quality_score",
    "validity_of",
]
