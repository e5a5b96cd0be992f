"""Per-frame LV masks (+ per-clip EF predictions) -> ``Measurements``.

The masks may be the segmentation network's (mapped back to source pixels) or, in tests, the
phantom's true masks; the EF predictions come from the caller, either as an array with one
value per clip start (``beats.clip_starts``) or as a callable that predicts the starts it is
asked for, so only the clips actually used are run. Everything here is plain numpy: no network,
no torch, so it is tested exactly with the phantom truth.

What is reported, and from what (see ``inference.beats`` for beats and clips, and
``inference.lv_geometry`` for landmarks and volumes):

* ``ef_percent``: the regression EF of each beat's ES-aligned clip, averaged over beats; with no
  beat, the average over every clip (``ef_source = "all_clips"``, flagged).
* ``edv_ml`` / ``esv_ml``: method of disks at each beat's ED and ES frame, averaged over beats;
  ``ef_disks_percent`` from those two means. Without spacing no volume is reported, but the
  disks EF (a ratio) still is, computed in pixel units (square pixels assumed, flagged).
* ``heart_rate_bpm``: from the ECG's R-R intervals when the loop has an ECG
  (``heart_rate_source = "ecg"``, see ``inference.ecg``); else from the ED-to-ED cycles of
  complete beats; otherwise the header's value (``heart_rate_source = "header"``, flagged);
  otherwise null.
* beats: with ECG R waves, ED at each R wave and ES the smallest area between
  (``beats.ecg_cycle_events``); without, the extrema of the LV area curve.
* ``heart_rate_disagrees``: the area curve's cycles are cross-checked against the header's
  heart rate and the ECG's; a difference over ``HEART_RATE_DISAGREEMENT_FRACTION`` is flagged
  (the area curve then found the wrong number of beats).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from inference.beats import (
    CLIP_LENGTH_FRAMES,
    beat_clip_start,
    clip_period_for,
    clip_span_frames,
    clip_starts,
    heart_rate_from_beats,
)
from inference.calibration import CALIBRATION_FLAG_CODES
from inference.disks import ejection_fraction_percent
from inference.measure_beats import (
    ClipEF,
    FrameVolumes,
    clip_predictions,
    frame_volumes,
    heart_rate_of,
    loop_beats,
    rate_from_r_waves,
    regression_ef,
    wanted_starts,
)
from inference.measure_flags import (
    AREA_RESIDUAL_FRACTION,
    EDGE_BAND_PX,
    EDGE_FRAME_FRACTION,
    EF_DISAGREEMENT_POINTS,
    FLAG_EF_FROM_ALL_CLIPS,
    FLAG_EF_METHODS_DISAGREE,
    FLAG_HEART_RATE_DISAGREES,
    FLAG_HEART_RATE_FROM_HEADER,
    FLAG_LESS_THAN_ONE_BEAT,
    FLAG_LOOP_SHORTER_THAN_CLIP,
    FLAG_LV_MISSING,
    FLAG_LV_OUTLINE_FAILED,
    FLAG_LV_TOUCHES_SECTOR_EDGE,
    FLAG_NO_FRAME_TIME,
    FLAG_NO_SPACING,
    FLAG_UNSTABLE_LV_AREA,
    HEART_RATE_DISAGREEMENT_FRACTION,
    MIN_UNSTABLE_FRAMES,
    UNSTABLE_FRAME_FRACTION,
    beat_flags,
    heart_rate_agreement,
    mask_flags,
)
from inference.types import Beat, Cine, Measurements, QualityFlag

__all__ = [
    "AREA_RESIDUAL_FRACTION",
    "EDGE_BAND_PX",
    "EDGE_FRAME_FRACTION",
    "EF_DISAGREEMENT_POINTS",
    "FLAG_EF_FROM_ALL_CLIPS",
    "FLAG_EF_METHODS_DISAGREE",
    "FLAG_HEART_RATE_DISAGREES",
    "FLAG_HEART_RATE_FROM_HEADER",
    "FLAG_LESS_THAN_ONE_BEAT",
    "FLAG_LOOP_SHORTER_THAN_CLIP",
    "FLAG_LV_MISSING",
    "FLAG_LV_OUTLINE_FAILED",
    "FLAG_LV_TOUCHES_SECTOR_EDGE",
    "FLAG_NO_FRAME_TIME",
    "FLAG_NO_SPACING",
    "FLAG_UNSTABLE_LV_AREA",
    "HEART_RATE_DISAGREEMENT_FRACTION",
    "MIN_UNSTABLE_FRAMES",
    "UNSTABLE_FRAME_FRACTION",
    "ClipEF",
    "ef_clip_starts",
    "measure_cine",
    "measure_loop",
]


def measure_cine(
    cine: Cine,
    masks: np.ndarray,
    clip_ef: ClipEF | None,
    *,
    transducer_px: tuple[float, float] | None = None,
    sector_mask: np.ndarray | None = None,
    all_clip_stride: int = 1,
) -> Measurements:
    """``measure_loop`` with timing, spacing, heart rate and notes taken from the Cine, and the
    Cine's flags (a refused calibration) added to the measurements' flags. A refused
    calibration replaces the generic "no spacing in the header" flag, which would contradict it."""
    m = measure_loop(
        masks,
        frame_time_ms=cine.frame_time_ms,
        spacing_cm=cine.spacing_cm,
        transducer_px=transducer_px,
        sector_mask=sector_mask,
        header_heart_rate_bpm=cine.heart_rate_bpm,
        clip_ef=clip_ef,
        all_clip_stride=all_clip_stride,
        notes=cine.notes,
        r_wave_frames=cine.ecg_r_wave_frames,
        ecg_heart_rate_bpm=cine.ecg_heart_rate_bpm,
    )
    if not cine.flags:
        return m
    refused = any(f.code in CALIBRATION_FLAG_CODES for f in cine.flags)
    kept = tuple(f for f in m.flags if not (refused and f.code == FLAG_NO_SPACING))
    return dataclasses.replace(m, flags=(*kept, *cine.flags))


def ef_clip_starts(
    cine: Cine,
    masks: np.ndarray,
    *,
    all_clip_stride: int = 1,
    clip_length: int = CLIP_LENGTH_FRAMES,
    clip_period: int | None = None,
) -> np.ndarray:
    """The clip starts ``measure_cine`` asks its EF callable for on the same Cine and masks
    (sorted, unique): every ``all_clip_stride``-th start plus each beat's ES-aligned start. So
    the EF model can run as a stage of its own, before the measurements, on the same clips.
    Without ``clip_period`` the period follows the frame time (``beats.clip_period_for``)."""
    m = np.asarray(masks)
    if m.ndim != 3 or m.shape[0] < 1:
        raise ValueError(f"masks must be (frames, rows, cols), got shape {m.shape}")
    if int(all_clip_stride) != all_clip_stride or all_clip_stride < 1:
        raise ValueError(f"all_clip_stride must be a positive integer, got {all_clip_stride!r}")
    n = int(m.shape[0])
    area_px = m.astype(bool, copy=False).reshape(n, -1).sum(axis=1).astype(np.float64)
    frame_time_ms = cine.frame_time_ms if cine.frame_time_ms and cine.frame_time_ms > 0 else None
    if clip_period is None:
        clip_period = clip_period_for(frame_time_ms)
    _, _, beat_frames = loop_beats(
        area_px, frame_time_ms, cine.heart_rate_bpm, cine.ecg_r_wave_frames
    )
    averaged = clip_starts(n, clip_length, clip_period)[:: int(all_clip_stride)]
    beat_starts = [beat_clip_start(b.es_frame, n, clip_length, clip_period) for b in beat_frames]
    return wanted_starts(averaged, beat_starts)


def measure_loop(
    masks: np.ndarray,
    *,
    frame_time_ms: float | None,
    spacing_cm: tuple[float, float] | None,
    transducer_px: tuple[float, float] | None = None,
    sector_mask: np.ndarray | None = None,
    header_heart_rate_bpm: float | None = None,
    clip_ef: ClipEF | None = None,
    clip_length: int = CLIP_LENGTH_FRAMES,
    clip_period: int | None = None,
    all_clip_stride: int = 1,
    notes: Sequence[str] = (),
    r_wave_frames: Sequence[int] | None = None,
    ecg_heart_rate_bpm: float | None = None,
) -> Measurements:
    """Measures one loop from its per-frame LV masks (frames x rows x cols, source pixels).

    ``transducer_px`` (column, row) orients the LV (base away from it); without it the base is
    taken to be the lower end. ``sector_mask`` (rows x cols) is the scanned fan, for the edge
    check; without it the image border is the edge. ``all_clip_stride`` > 1 averages every
    k-th clip start instead of every start (for slow hardware); beat clips are always run.
    ``r_wave_frames`` (the ECG's R waves, ``inference.ecg``) time the beats when given and not
    empty; ``ecg_heart_rate_bpm`` is the ECG's rate (else taken from the R-wave frames).
    """
    m = np.asarray(masks)
    if m.ndim != 3 or m.shape[0] < 1:
        raise ValueError(f"masks must be (frames, rows, cols), got shape {m.shape}")
    m = m.astype(bool, copy=False)
    n = int(m.shape[0])
    if int(all_clip_stride) != all_clip_stride or all_clip_stride < 1:
        raise ValueError(f"all_clip_stride must be a positive integer, got {all_clip_stride!r}")
    flags: list[QualityFlag] = []
    frame_time_ms = frame_time_ms if frame_time_ms and frame_time_ms > 0 else None
    if frame_time_ms is None:
        flags.append(
            QualityFlag(FLAG_NO_FRAME_TIME, "No frame timing: heart rate cannot be measured.")
        )
    if clip_period is None:  # a clip sample about every 40 ms, whatever the frame rate
        clip_period = clip_period_for(frame_time_ms)

    area_px = m.reshape(n, -1).sum(axis=1).astype(np.float64)
    px_cm2 = None if spacing_cm is None else float(spacing_cm[0]) * float(spacing_cm[1])
    area_cm2 = None if px_cm2 is None else area_px * px_cm2

    area_beats, events, beat_frames = loop_beats(
        area_px, frame_time_ms, header_heart_rate_bpm, r_wave_frames
    )
    area_heart_rate = heart_rate_from_beats(area_beats, frame_time_ms)
    ecg_heart_rate = None
    if r_wave_frames:
        ecg_heart_rate = ecg_heart_rate_bpm or rate_from_r_waves(r_wave_frames, frame_time_ms)
    flags += beat_flags(beat_frames)

    if ecg_heart_rate:
        heart_rate, hr_source = float(ecg_heart_rate), "ecg"
    else:
        heart_rate, hr_source = heart_rate_of(
            beat_frames, frame_time_ms, header_heart_rate_bpm, flags
        )
    flags += heart_rate_agreement(area_heart_rate, header_heart_rate_bpm, ecg_heart_rate)

    # regression EF: every clip start (or every k-th) plus each beat's ES-aligned start
    all_starts = clip_starts(n, clip_length, clip_period)
    if n < clip_span_frames(clip_length, clip_period):
        flags.append(
            QualityFlag(
                FLAG_LOOP_SHORTER_THAN_CLIP,
                f"The loop has {n} frames, fewer than one {clip_length}-frame clip at period "
                f"{clip_period} needs; it was padded.",
            )
        )
    averaged = all_starts[:: int(all_clip_stride)]
    beat_starts = [beat_clip_start(b.es_frame, n, clip_length, clip_period) for b in beat_frames]
    ef_by_start = clip_predictions(clip_ef, all_starts, averaged, beat_starts)

    volumes: dict[int, FrameVolumes] = {}
    outline_failures: list[int] = []

    def volumes_at(frame: int) -> FrameVolumes:
        if frame not in volumes:
            volumes[frame] = frame_volumes(m[frame], spacing_cm, transducer_px, px_cm2)
            if volumes[frame].volume is None:
                outline_failures.append(frame)
        return volumes[frame]

    beats = []
    for b, start in zip(beat_frames, beat_starts, strict=True):
        ed, es = volumes_at(b.ed_frame), volumes_at(b.es_frame)
        ef_disks = (
            ejection_fraction_percent(ed.volume, es.volume)
            if ed.volume is not None and es.volume is not None and ed.volume > 0
            else None
        )
        have_ml = spacing_cm is not None
        beats.append(
            Beat(
                ed_frame=b.ed_frame,
                es_frame=b.es_frame,
                next_ed_frame=b.next_ed_frame,
                ef_percent=ef_by_start.get(start),
                clip_start_frame=start,
                edv_ml=ed.volume if have_ml else None,
                esv_ml=es.volume if have_ml else None,
                ef_disks_percent=ef_disks,
                ed_area_cm2=ed.area_cm2,
                es_area_cm2=es.area_cm2,
                ed_landmarks=ed.landmarks,
                es_landmarks=es.landmarks,
            )
        )
    if outline_failures:
        flags.append(
            QualityFlag(
                FLAG_LV_OUTLINE_FAILED,
                f"No LV outline on frame(s) {sorted(set(outline_failures))}: those volumes are "
                "missing.",
            )
        )

    # volumes and disks EF: means over beats that have both volumes
    paired = [
        (volumes[b.ed_frame].volume, volumes[b.es_frame].volume)
        for b in beat_frames
        if volumes[b.ed_frame].volume is not None and volumes[b.es_frame].volume is not None
    ]
    edv = float(np.mean([p[0] for p in paired])) if paired else None
    esv = float(np.mean([p[1] for p in paired])) if paired else None
    ef_disks = ejection_fraction_percent(edv, esv) if edv else None
    if spacing_cm is None:
        edv = esv = None
        flags.append(
            QualityFlag(
                FLAG_NO_SPACING,
                "No physical spacing in the header: volumes and areas are not reported; the "
                "method-of-disks EF assumes square pixels.",
            )
        )

    averaged_efs = [ef_by_start[int(s)] for s in averaged if int(s) in ef_by_start]
    clips_mean = float(np.mean(averaged_efs)) if averaged_efs else None
    ef, ef_sd, ef_source = regression_ef(beats, clips_mean, flags)
    if ef is not None and ef_disks is not None and abs(ef - ef_disks) > EF_DISAGREEMENT_POINTS:
        flags.append(
            QualityFlag(
                FLAG_EF_METHODS_DISAGREE,
                f"Regression EF ({ef:.0f} %) and method-of-disks EF ({ef_disks:.0f} %) differ "
                f"by more than {EF_DISAGREEMENT_POINTS:.0f} points.",
            )
        )
    measured_frames = sorted({f for b in beat_frames for f in (b.ed_frame, b.es_frame)})
    flags += mask_flags(m, area_px, frame_time_ms, sector_mask, measured_frames)

    return Measurements(
        ef_percent=ef,
        ef_sd_percent=ef_sd,
        ef_source=ef_source,
        ef_clips_mean_percent=clips_mean,
        ef_disks_percent=ef_disks,
        edv_ml=edv,
        esv_ml=esv,
        heart_rate_bpm=heart_rate,
        heart_rate_source=hr_source,
        beats=tuple(beats),
        flags=tuple(flags),
        n_frames=n,
        frame_time_ms=frame_time_ms,
        spacing_cm=None if spacing_cm is None else (float(spacing_cm[0]), float(spacing_cm[1])),
        ed_frames=events.ed_frames,
        es_frames=events.es_frames,
        lv_area_px=tuple(float(a) for a in area_px),
        lv_area_cm2=None if area_cm2 is None else tuple(float(a) for a in area_cm2),
        clip_length_frames=int(clip_length),
        clip_period_frames=int(clip_period),
        clip_starts=tuple(int(s) for s in averaged),
        ef_clips_percent=tuple(averaged_efs),
        notes=tuple(notes),
    )
