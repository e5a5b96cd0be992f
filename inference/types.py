"""Data that crosses package lines: frozen dataclasses with units in their field names."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np


@dataclass(frozen=True)
class RegionBox:
    """A rectangle in source pixels, inclusive corners, as DICOM ultrasound regions give them."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width_px(self) -> int:
        return self.x1 - self.x0 + 1

    @property
    def height_px(self) -> int:
        return self.y1 - self.y0 + 1


@dataclass(frozen=True)
class Cine:
    """A decoded cine loop: RGB frames plus the timing and geometry that turn pixels into
    physiology. ``spacing_cm`` is None when the header gives no physical calibration, or one that
    was refused (``inference.calibration``): EF can still be measured, volumes and areas in
    physical units cannot; ``notes`` says so, and ``flags`` says why a calibration was refused."""

    frames: np.ndarray = field(repr=False)  # (frames, rows, cols, 3) uint8 RGB
    frame_time_ms: float | None
    frame_time_source: str
    spacing_cm: tuple[float, float] | None  # (row/y, column/x) cm per pixel
    tissue_region: RegionBox | None
    heart_rate_bpm: float | None
    sop_instance_uid: str
    notes: tuple[str, ...] = ()
    flags: tuple[QualityFlag, ...] = ()  # carried into the loop's Measurements
    # the ECG's R waves (frame indices) and rate, when the loop has one (``inference.ecg``)
    ecg_r_wave_frames: tuple[int, ...] | None = None
    ecg_heart_rate_bpm: float | None = None

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def frames_per_s(self) -> float | None:
        return None if not self.frame_time_ms else 1000.0 / self.frame_time_ms

    @property
    def duration_s(self) -> float | None:
        return None if not self.frame_time_ms else self.n_frames * self.frame_time_ms / 1000.0


# ---------------------------------------------------------------------------------------------
# Measurements: what one analysed loop yields. ``to_json`` gives the plain dict that the command
# line prints, the database stores and the report grounding checks against; every value that
# could not be measured is None (null), never a guess.
# ---------------------------------------------------------------------------------------------

Point = tuple[float, float]  # (column, row) in source pixels, pixel-centre coordinates


def _pt(value: Point | None) -> list[float] | None:
    return None if value is None else [float(value[0]), float(value[1])]


def _opt_pt(value: object) -> Point | None:
    if value is None:
        return None
    col, row = value  # type: ignore[misc]
    return (float(col), float(row))


@dataclass(frozen=True)
class QualityFlag:
    """A reason to look twice: ``code`` is a stable identifier software may match on,
    ``message`` the sentence a reader sees."""

    code: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class Landmarks:
    """LV landmarks found from the mask alone, in source pixels (column, row).

    ``annulus_left_px`` / ``annulus_right_px`` are the viewer's left and right basal corners;
    in the standard A4C display (LV on the viewer's right) the left one is septal.
    """

    apex_px: Point
    annulus_left_px: Point
    annulus_right_px: Point
    long_axis_cm: float | None = None  # apex to annulus midpoint; None without spacing

    @property
    def annulus_mid_px(self) -> Point:
        return (
            0.5 * (self.annulus_left_px[0] + self.annulus_right_px[0]),
            0.5 * (self.annulus_left_px[1] + self.annulus_right_px[1]),
        )

    def to_json(self) -> dict[str, object]:
        return {
            "apex_px": _pt(self.apex_px),
            "annulus_left_px": _pt(self.annulus_left_px),
            "annulus_right_px": _pt(self.annulus_right_px),
            "annulus_mid_px": _pt(self.annulus_mid_px),
            "long_axis_cm": self.long_axis_cm,
        }

    @classmethod
    def from_json(cls, data: dict | None) -> Landmarks | None:
        if data is None:
            return None
        return cls(
            apex_px=_opt_pt(data["apex_px"]),  # type: ignore[arg-type]
            annulus_left_px=_opt_pt(data["annulus_left_px"]),  # type: ignore[arg-type]
            annulus_right_px=_opt_pt(data["annulus_right_px"]),  # type: ignore[arg-type]
            long_axis_cm=data.get("long_axis_cm"),
        )


@dataclass(frozen=True)
class Beat:
    """One end-diastole -> end-systole pair found on the LV area curve.

    ``next_ed_frame`` is the following end-diastole when the loop reaches it: such a beat is
    *complete* (ED -> ES -> next ED) and gives a cycle length for the heart rate. The last
    beat of a loop may stop after its ES; it still has an EDV, an ESV and an ES-aligned clip,
    so it counts for EF and volumes, but not for the heart rate.
    """

    ed_frame: int
    es_frame: int
    next_ed_frame: int | None
    ef_percent: float | None  # regression EF of the clip aligned to this beat's ES
    clip_start_frame: int | None
    edv_ml: float | None
    esv_ml: float | None
    ef_disks_percent: float | None
    ed_area_cm2: float | None
    es_area_cm2: float | None
    ed_landmarks: Landmarks | None = None
    es_landmarks: Landmarks | None = None

    @property
    def complete(self) -> bool:
        return self.next_ed_frame is not None

    def to_json(self) -> dict[str, object]:
        return {
            "ed_frame": self.ed_frame,
            "es_frame": self.es_frame,
            "next_ed_frame": self.next_ed_frame,
            "complete": self.complete,
            "ef_percent": self.ef_percent,
            "clip_start_frame": self.clip_start_frame,
            "edv_ml": self.edv_ml,
            "esv_ml": self.esv_ml,
            "ef_disks_percent": self.ef_disks_percent,
            "ed_area_cm2": self.ed_area_cm2,
            "es_area_cm2": self.es_area_cm2,
            "ed_landmarks": None if self.ed_landmarks is None else self.ed_landmarks.to_json(),
            "es_landmarks": None if self.es_landmarks is None else self.es_landmarks.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict) -> Beat:
        return cls(
            ed_frame=int(data["ed_frame"]),
            es_frame=int(data["es_frame"]),
            next_ed_frame=data.get("next_ed_frame"),
            ef_percent=data.get("ef_percent"),
            clip_start_frame=data.get("clip_start_frame"),
            edv_ml=data.get("edv_ml"),
            esv_ml=data.get("esv_ml"),
            ef_disks_percent=data.get("ef_disks_percent"),
            ed_area_cm2=data.get("ed_area_cm2"),
            es_area_cm2=data.get("es_area_cm2"),
            ed_landmarks=Landmarks.from_json(data.get("ed_landmarks")),
            es_landmarks=Landmarks.from_json(data.get("es_landmarks")),
        )


class Validity(StrEnum):
    """Whether the node stands behind a value: a value that is not measurable is never shown or
    exported as a number, only its reason."""

    MEASURED = "measured"
    NOT_MEASURABLE = "not_measurable"


# The values the validity gate rules on, by their ``Measurements`` field names.
GATED_KEYS = ("ef_percent", "ef_disks_percent", "edv_ml", "esv_ml", "heart_rate_bpm")


@dataclass(frozen=True)
class ValueValidity:
    """One value's validity; ``reason`` (empty when measured) is the sentence a cardiologist
    reads after "LVEF not measurable: ", e.g. "LV not identified on 30 of 30 frames"."""

    state: Validity
    reason: str = ""

    @property
    def measured(self) -> bool:
        return self.state is Validity.MEASURED

    def to_json(self) -> dict[str, str]:
        return {"state": self.state.value, "reason": self.reason}

    @classmethod
    def from_json(cls, data: dict) -> ValueValidity:
        return cls(Validity(str(data["state"])), str(data.get("reason", "")))


@dataclass(frozen=True)
class GateEvidence:
    """What the validity gate measured on one loop (``inference.gate``)."""

    n_frames: int
    lv_frames: int  # frames with one plausible LV component
    segmentation_confidence: float  # 0..1, median over frames
    area_consistency: float  # share of frames on a smooth LV area curve
    ef_disagreement_points: float | None  # |regression - disks| before the gate
    heart_rate_disagreement_fraction: float | None  # |loop - header| / header
    ood_score: float | None  # distance to the training set; None without a reference
    # intensity step across the LV outline, fan SDs (``inference.cavity_edge``); None: not measured
    cavity_edge_contrast: float | None = None
    # the same over the quarter of frames with the smallest LV outline; None: not measured
    systolic_cavity_edge_contrast: float | None = None
    # the OOD feature furthest from the training reference (``inference.ood.FEATURE_NAMES``)
    ood_furthest_feature: str | None = None

    @property
    def lv_coverage(self) -> float:
        return self.lv_frames / self.n_frames if self.n_frames else 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "n_frames": self.n_frames,
            "lv_frames": self.lv_frames,
            "lv_coverage": round(self.lv_coverage, 4),
            "segmentation_confidence": round(self.segmentation_confidence, 4),
            "area_consistency": round(self.area_consistency, 4),
            "ef_disagreement_points": _round_opt(self.ef_disagreement_points),
            "heart_rate_disagreement_fraction": _round_opt(self.heart_rate_disagreement_fraction),
            "ood_score": _round_opt(self.ood_score),
            "cavity_edge_contrast": _round_opt(self.cavity_edge_contrast),
            "systolic_cavity_edge_contrast": _round_opt(self.systolic_cavity_edge_contrast),
            "ood_furthest_feature": self.ood_furthest_feature,
        }

    @classmethod
    def from_json(cls, data: dict | None) -> GateEvidence | None:
        if not data:
            return None
        return cls(
            n_frames=int(data["n_frames"]),
            lv_frames=int(data["lv_frames"]),
            segmentation_confidence=float(data["segmentation_confidence"]),
            area_consistency=float(data["area_consistency"]),
            ef_disagreement_points=data.get("ef_disagreement_points"),
            heart_rate_disagreement_fraction=data.get("heart_rate_disagreement_fraction"),
            ood_score=data.get("ood_score"),
            cavity_edge_contrast=data.get("cavity_edge_contrast"),
            systolic_cavity_edge_contrast=data.get("systolic_cavity_edge_contrast"),
            ood_furthest_feature=data.get("ood_furthest_feature"),
        )


def _round_opt(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


@dataclass(frozen=True)
class Measurements:
    """Everything measured on one A4C loop.

    ``ef_percent`` is the regression network's EF averaged over the beats' ES-aligned clips
    (``ef_source == "beats"``), or over every clip when no beat was found (``"all_clips"``).
    ``ef_disks_percent`` comes from the mean EDV and ESV over beats (single-plane method of
    disks), the same definition as the phantom truth. Volumes need physical spacing.
    """

    ef_percent: float | None
    ef_sd_percent: float | None  # SD over beats (n - 1); None with fewer than two beats
    ef_source: str  # "beats" | "all_clips" | "none"
    ef_clips_mean_percent: float | None
    ef_disks_percent: float | None
    edv_ml: float | None
    esv_ml: float | None
    heart_rate_bpm: float | None
    heart_rate_source: str  # "ecg" | "beats" | "header" | "none"
    beats: tuple[Beat, ...]
    flags: tuple[QualityFlag, ...]
    n_frames: int
    frame_time_ms: float | None
    spacing_cm: tuple[float, float] | None
    ed_frames: tuple[int, ...]  # every LV area maximum found, paired in a beat or not
    es_frames: tuple[int, ...]  # every LV area minimum found
    lv_area_px: tuple[float, ...] = field(repr=False)  # per frame, source pixels
    lv_area_cm2: tuple[float, ...] | None = field(repr=False)
    clip_length_frames: int = 32
    clip_period_frames: int = 2
    clip_starts: tuple[int, ...] = field(default=(), repr=False)  # the clips averaged
    ef_clips_percent: tuple[float, ...] = field(default=(), repr=False)
    notes: tuple[str, ...] = ()
    # the validity gate's ruling (``inference.gate``): per value in GATED_KEYS, the loop's
    # quality score (0..1, 0.5 on the threshold of the weakest check) and its evidence
    validity: dict[str, ValueValidity] = field(default_factory=dict)
    quality_score: float | None = None
    gate: GateEvidence | None = None

    @property
    def flag_codes(self) -> tuple[str, ...]:
        return tuple(f.code for f in self.flags)

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict (``json.dumps`` takes it as is)."""
        return {
            "ef_percent": self.ef_percent,
            "ef_sd_percent": self.ef_sd_percent,
            "ef_source": self.ef_source,
            "ef_clips_mean_percent": self.ef_clips_mean_percent,
            "ef_disks_percent": self.ef_disks_percent,
            "edv_ml": self.edv_ml,
            "esv_ml": self.esv_ml,
            "heart_rate_bpm": self.heart_rate_bpm,
            "heart_rate_source": self.heart_rate_source,
            "beats": [b.to_json() for b in self.beats],
            "flags": [f.to_json() for f in self.flags],
            "n_frames": self.n_frames,
            "frame_time_ms": self.frame_time_ms,
            "spacing_cm": None if self.spacing_cm is None else list(self.spacing_cm),
            "ed_frames": list(self.ed_frames),
            "es_frames": list(self.es_frames),
            "lv_area_px": list(self.lv_area_px),
            "lv_area_cm2": None if self.lv_area_cm2 is None else list(self.lv_area_cm2),
            "clip_length_frames": self.clip_length_frames,
            "clip_period_frames": self.clip_period_frames,
            "clip_starts": list(self.clip_starts),
            "ef_clips_percent": list(self.ef_clips_percent),
            "notes": list(self.notes),
            "validity": {key: v.to_json() for key, v in self.validity.items()},
            "quality_score": self.quality_score,
            "gate": None if self.gate is None else self.gate.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict) -> Measurements:
        """The inverse of ``to_json`` (for reading back a stored analysis)."""
        spacing = data.get("spacing_cm")
        area_cm2 = data.get("lv_area_cm2")
        return cls(
            ef_percent=data.get("ef_percent"),
            ef_sd_percent=data.get("ef_sd_percent"),
            ef_source=str(data.get("ef_source", "none")),
            ef_clips_mean_percent=data.get("ef_clips_mean_percent"),
            ef_disks_percent=data.get("ef_disks_percent"),
            edv_ml=data.get("edv_ml"),
            esv_ml=data.get("esv_ml"),
            heart_rate_bpm=data.get("heart_rate_bpm"),
            heart_rate_source=str(data.get("heart_rate_source", "none")),
            beats=tuple(Beat.from_json(b) for b in data.get("beats", [])),
            flags=tuple(QualityFlag(f["code"], f["message"]) for f in data.get("flags", [])),
            n_frames=int(data.get("n_frames", 0)),
            frame_time_ms=data.get("frame_time_ms"),
            spacing_cm=None if spacing is None else (float(spacing[0]), float(spacing[1])),
            ed_frames=tuple(int(v) for v in data.get("ed_frames", [])),
            es_frames=tuple(int(v) for v in data.get("es_frames", [])),
            lv_area_px=tuple(float(v) for v in data.get("lv_area_px", [])),
            lv_area_cm2=None if area_cm2 is None else tuple(float(v) for v in area_cm2),
            clip_length_frames=int(data.get("clip_length_frames", 32)),
            clip_period_frames=int(data.get("clip_period_frames", 2)),
            clip_starts=tuple(int(v) for v in data.get("clip_starts", [])),
            ef_clips_percent=tuple(float(v) for v in data.get("ef_clips_percent", [])),
            notes=tuple(str(v) for v in data.get("notes", [])),
            validity={
                str(k): ValueValidity.from_json(v) for k, v in (data.get("validity") or {}).items()
            },
            quality_score=data.get("quality_score"),
            gate=GateEvidence.from_json(data.get("gate")),
        )
