"""One phantom study on disk: the A4C loop (DICOM + truth JSON + masks) and its distractors."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .cases import A4CLoop, Layout, a4c_paints, sample_a4c_case, shapes_at, simulate_a4c
from .dicom_writer import (
    ENCODING_CYCLE,
    JPEG_YBR,
    RAW_MONO,
    RAW_RGB,
    REGION_COLOR_FLOW,
    RLE_RGB,
    PixelEncoding,
    SeriesInfo,
    UltrasoundRegion,
    write_ultrasound,
)
from .distractors import colour_bar, colour_box_for, colourise, simulate_plax
from .geometry import Sector
from .identity import StudyIdentity, sample_identity
from .motion import CardiacTiming, ecg_mv
from .overlay import build_overlay, compose, to_grey
from .render import BeamRenderer
from .truthio import save_json, save_npz

DISTRACTOR_KINDS = ("plax", "still", "color")
VIEW_OF_KIND = {"a4c": "A4C", "plax": "PLAX", "still": "still", "color": "color_doppler"}

A4C_DESCRIPTIONS = ("A4C", "Apical 4 chamber", "AP4", "4CH", "Apical four chamber", "", None)
DESCRIPTIONS = {
    "a4c": A4C_DESCRIPTIONS,
    "plax": ("PLAX", "Parasternal long axis", "PLAX LV", "", None),
    "still": ("A4C", "Apical 4 chamber still", "AP4 frame", "", None),
    "color": ("A4C color", "4CH CFM", "MV color flow", "", None),
}


@dataclass(frozen=True)
class MatrixPlan:
    """Matrix sizes and frame cap per encoding; the caps keep uncompressed files < ~90 MB."""

    matrices: tuple[tuple[int, int], ...]
    max_frames: int


MATRIX_PLANS: dict[PixelEncoding, MatrixPlan] = {
    JPEG_YBR: MatrixPlan(((600, 800), (540, 720), (480, 640)), 160),
    RLE_RGB: MatrixPlan(((480, 640),), 100),
    RAW_RGB: MatrixPlan(((480, 640),), 90),
    RAW_MONO: MatrixPlan(((600, 800), (540, 720)), 160),
}


def layout_for(rows: int, cols: int) -> Layout:
    return Layout(
        rows=rows,
        cols=cols,
        top_px=round(float(0.07 * rows)),
        bottom_px=round(float(0.13 * rows)),
        n_theta=224 if cols >= 700 else 192,
    )


def _pick_layout(rng: np.random.Generator, enc: PixelEncoding) -> tuple[Layout, int]:
    plan = MATRIX_PLANS[enc]
    rows, cols = plan.matrices[int(rng.integers(len(plan.matrices)))]
    return layout_for(rows, cols), plan.max_frames


def _description(rng: np.random.Generator, kind: str) -> str | None:
    options = DESCRIPTIONS[kind]
    return options[int(rng.integers(len(options)))]


def _tissue_region(sector: Sector) -> UltrasoundRegion:
    x0, y0, x1, y1 = sector.bbox()
    return UltrasoundRegion(x0, y0, x1, y1, sector.spacing_cm, sector.apex_col, sector.apex_row)


def _burn_in_text(
    idn: StudyIdentity, sector: Sector, fps: float | None, hr: int | None, extra: str = ""
) -> tuple[list[str], list[str]]:
    date = dt.datetime.strptime(idn.study_date + idn.study_time, "%Y%m%d%H%M%S")
    left = [
        idn.institution,
        idn.display_name,
        f"ID {idn.patient_id}",
        date.strftime("%d %b %Y %H:%M:%S"),
        "Adult TTE",
    ]
    right = ["echo-agent phantom", "P5-1  2.5 MHz", f"Depth {sector.depth_cm:.0f} cm"]
    if fps is not None:
        right.append(f"FR {fps:.0f} Hz")
    if hr is not None:
        right.append(f"HR {hr} bpm")
    if extra:
        right.append(extra)
    return left, right


def _annotated(
    grey: np.ndarray,
    sector: Sector,
    idn: StudyIdentity,
    timing: CardiacTiming,
    frame_time_ms: float,
    multi: bool,
    extra: str = "",
) -> np.ndarray:
    """Adds text, depth scale and ECG to grey fan frames; returns RGB frames."""
    n = grey.shape[0]
    t_end = (n - 1) * frame_time_ms / 1000.0 if multi else 2.0 * timing.period_s
    ecg = ecg_mv(np.linspace(0.0, t_end, max(400, 4 * n)), timing)
    fps = 1000.0 / frame_time_ms if multi else None
    left, right = _burn_in_text(idn, sector, fps, int(timing.heart_rate_bpm), extra)
    overlay = build_overlay(sector, left, right, ecg, max(n, 2))
    return np.stack([compose(grey[i], overlay, i) for i in range(n)])


def _encode_frames(rgb: np.ndarray, enc: PixelEncoding) -> np.ndarray:
    if enc.samples_per_pixel == 1:
        return np.stack([to_grey(f) for f in rgb])
    return rgb


def _a4c_truth(loop: A4CLoop) -> dict[str, Any]:
    case, sector = loop.case, loop.case.sector
    edv, esv = loop.edv_ml, loop.esv_ml
    return {
        "view": "A4C",
        "ef_percent": 100.0 * (edv - esv) / edv,
        "edv_ml": edv,
        "esv_ml": esv,
        "heart_rate_bpm": float(case.plan.timing.heart_rate_bpm),
        "ed_frames": list(loop.ed_frames),
        "es_frames": list(loop.es_frames),
        "beats": [
            {
                "ed_frame": b.ed_frame,
                "es_frame": b.es_frame,
                "edv_ml": b.edv_ml,
                "esv_ml": b.esv_ml,
                "ef_percent": b.ef_percent,
            }
            for b in loop.beats
        ],
        "volumes_ml": [float(v) for v in loop.volumes_ml],
        "n_disks": 20,
        "ef_target_percent": case.ef_target_percent,
        "lv_length_ed_cm": case.anatomy.lv_length_cm,
        "depth_cm": sector.depth_cm,
        "sector": {
            "apex_col": sector.apex_col,
            "apex_row": sector.apex_row,
            "half_angle_deg": float(np.rad2deg(sector.half_angle_rad)),
            "depth_cm": sector.depth_cm,
            "bbox_px": list(sector.bbox()),
        },
    }


def _landmarks_px(loop: A4CLoop) -> dict[str, np.ndarray]:
    sector = loop.case.sector
    return {
        "apex_px": np.array([sector.to_px(s.lv_apex) for s in loop.shapes_cm]),
        "mv_septal_px": np.array([sector.to_px(s.mv_septal) for s in loop.shapes_cm]),
        "mv_lateral_px": np.array([sector.to_px(s.mv_lateral) for s in loop.shapes_cm]),
        "mv_mid_px": np.array([sector.to_px(s.mv_mid) for s in loop.shapes_cm]),
    }


class StudyWriter:
    """Writes study `index` of a seeded run into outdir."""

    def __init__(self, outdir: Path, seed: int, index: int, ss: np.random.SeedSequence) -> None:
        self.outdir = Path(outdir)
        self.seed = seed
        self.index = index
        streams = ss.spawn(6)
        self.rng = {
            k: np.random.default_rng(s)
            for k, s in zip(
                ("identity", "a4c", "plax", "still", "color", "misc"), streams, strict=True
            )
        }
        self.identity = sample_identity(self.rng["identity"], seed, index)
        self.series_number = 0

    @property
    def stem(self) -> str:
        return f"study_{self.index:04d}"

    def _series(
        self,
        kind: str,
        rng: np.random.Generator,
        sector: Sector,
        frame_time_ms: float | None,
        hr: int | None,
        regions: tuple[UltrasoundRegion, ...] | None = None,
        colour: bool = False,
    ) -> SeriesInfo:
        self.series_number += 1
        return SeriesInfo(
            identity=self.identity,
            series_uid=self.identity.uid("series", kind),
            sop_uid=self.identity.uid("sop", kind),
            series_number=self.series_number,
            series_description=_description(rng, kind),
            seconds_after_study=60 * self.series_number + int(rng.integers(0, 50)),
            regions=regions or (_tissue_region(sector),),
            frame_time_ms=frame_time_ms,
            heart_rate_bpm=hr,
            colour_flow=colour,
            depth_cm=sector.depth_cm,
        )

    def _common_truth(self, info: SeriesInfo, enc: PixelEncoding, sector: Sector, n: int):
        return {
            "n_frames": n,
            "rows": sector.rows,
            "cols": sector.cols,
            "spacing_cm": [sector.spacing_cm, sector.spacing_cm],
            "transfer_syntax_uid": str(enc.transfer_syntax_uid),
            "photometric_interpretation": enc.photometric,
            "series_description": info.series_description,
            "sop_class_uid": "1.2.840.10008.5.1.4.1.1.3.1"
            if info.frame_time_ms is not None
            else "1.2.840.10008.5.1.4.1.1.6.1",
            "sop_instance_uid": info.sop_uid,
            "series_instance_uid": info.series_uid,
            "study_instance_uid": self.identity.study_instance_uid,
            "patient_id": self.identity.patient_id,
            "seed": self.seed,
            "study_index": self.index,
        }

    def write_a4c(self, enc: PixelEncoding) -> Path:
        rng = self.rng["a4c"]
        layout, max_frames = _pick_layout(rng, enc)
        case = sample_a4c_case(rng, layout, max_frames=max_frames)
        loop = simulate_a4c(case, rng)
        plan, sector = case.plan, case.sector
        hr = int(plan.timing.heart_rate_bpm)
        info = self._series("a4c", rng, sector, plan.frame_time_ms, hr)
        rgb = _annotated(loop.frames, sector, self.identity, plan.timing, plan.frame_time_ms, True)
        name = f"{self.stem}_a4c"
        path = write_ultrasound(self.outdir / f"{name}.dcm", _encode_frames(rgb, enc), info, enc)
        masks_name = f"{name}_masks.npz"
        save_npz(
            self.outdir / masks_name,
            masks=loop.masks,
            volumes_ml=loop.volumes_ml,
            **_landmarks_px(loop),
        )
        truth = {
            **_a4c_truth(loop),
            "frame_time_ms": plan.frame_time_ms,
            "frame_rate_hz": plan.frame_rate_hz,
            **self._common_truth(info, enc, sector, plan.n_frames),
            "masks_file": masks_name,
        }
        save_json(self.outdir / f"{name}.json", truth)
        return path

    def _distractor_truth(self, kind: str, hr: float | None, frame_time_ms: float | None):
        return {
            "view": VIEW_OF_KIND[kind],
            "ef_percent": None,
            "edv_ml": None,
            "esv_ml": None,
            "heart_rate_bpm": hr,
            "ed_frames": None,
            "es_frames": None,
            "beats": None,
            "frame_time_ms": frame_time_ms,
            "frame_rate_hz": None if frame_time_ms is None else 1000.0 / frame_time_ms,
            "masks_file": None,
        }

    def write_plax(self, enc: PixelEncoding) -> Path:
        rng = self.rng["plax"]
        layout, max_frames = _pick_layout(rng, enc)
        loop = simulate_plax(rng, layout, max_frames)
        plan, sector = loop.plan, loop.sector
        hr = int(plan.timing.heart_rate_bpm)
        info = self._series("plax", rng, sector, plan.frame_time_ms, hr)
        rgb = _annotated(loop.frames, sector, self.identity, plan.timing, plan.frame_time_ms, True)
        name = f"{self.stem}_plax"
        path = write_ultrasound(self.outdir / f"{name}.dcm", _encode_frames(rgb, enc), info, enc)
        truth = {
            **self._distractor_truth("plax", float(hr), plan.frame_time_ms),
            **self._common_truth(info, enc, sector, plan.n_frames),
        }
        save_json(self.outdir / f"{name}.json", truth)
        return path

    def write_still(self, enc: PixelEncoding) -> Path:
        rng = self.rng["still"]
        layout, _ = _pick_layout(rng, enc)
        case = sample_a4c_case(rng, layout, max_frames=400)
        t_s = float(rng.uniform(0.0, case.plan.timing.period_s))
        renderer = BeamRenderer(case.sector, case.grid, case.style, rng)
        grey = renderer.frame(a4c_paints(shapes_at(case, t_s), case.levels), rng)[None]
        sector = case.sector
        hr = int(case.plan.timing.heart_rate_bpm)
        info = self._series("still", rng, sector, None, hr)
        rgb = _annotated(
            grey, sector, self.identity, case.plan.timing, case.plan.frame_time_ms, False
        )
        name = f"{self.stem}_still"
        path = write_ultrasound(self.outdir / f"{name}.dcm", _encode_frames(rgb, enc), info, enc)
        truth = {
            **self._distractor_truth("still", float(hr), None),
            **self._common_truth(info, enc, sector, 1),
        }
        save_json(self.outdir / f"{name}.json", truth)
        return path

    def write_colour(self, enc: PixelEncoding) -> Path:
        if enc.samples_per_pixel != 3:
            raise ValueError("colour Doppler needs an RGB-capable encoding")
        rng = self.rng["color"]
        layout, max_frames = _pick_layout(rng, enc)
        case = sample_a4c_case(rng, layout, max_frames=max_frames)
        loop = simulate_a4c(case, rng)
        plan, sector = case.plan, case.sector
        hr = int(plan.timing.heart_rate_bpm)
        box = colour_box_for(loop, rng)
        x0, y0, x1, y1 = box.bbox_px(sector)
        regions = (
            _tissue_region(sector),
            UltrasoundRegion(
                x0,
                y0,
                x1,
                y1,
                sector.spacing_cm,
                sector.apex_col,
                sector.apex_row,
                data_type=REGION_COLOR_FLOW,
            ),
        )
        info = self._series("color", rng, sector, plan.frame_time_ms, hr, regions, colour=True)
        rgb = _annotated(
            loop.frames,
            sector,
            self.identity,
            plan.timing,
            plan.frame_time_ms,
            True,
            extra="CF 2.0 MHz",
        )
        rgb = colourise(rgb, loop, box, rng)
        bar_h = int(0.2 * sector.rows)
        top = int(0.3 * sector.rows)
        for f in rgb:
            colour_bar(f, sector.cols - 24, top, bar_h)
        name = f"{self.stem}_color"
        path = write_ultrasound(self.outdir / f"{name}.dcm", rgb, info, enc)
        truth = {
            **self._distractor_truth("color", float(hr), plan.frame_time_ms),
            **self._common_truth(info, enc, sector, plan.n_frames),
            "color_box_px": [x0, y0, x1, y1],
        }
        save_json(self.outdir / f"{name}.json", truth)
        return path


def write_study(
    outdir: Path, seed: int, index: int, ss: np.random.SeedSequence, distractors: bool
) -> list[Path]:
    """The A4C loop's encoding cycles with the study index so any four consecutive studies
    cover all four encodings; distractor kinds cycle the same way."""
    w = StudyWriter(outdir, seed, index, ss)
    paths = [w.write_a4c(ENCODING_CYCLE[index % 4])]
    if distractors:
        kind = DISTRACTOR_KINDS[index % len(DISTRACTOR_KINDS)]
        enc = ENCODING_CYCLE[(index + 1 + index // 4) % 4]
        if kind == "plax":
            paths.append(w.write_plax(enc))
        elif kind == "still":
            paths.append(w.write_still(enc))
        else:
            if enc.samples_per_pixel != 3:
                enc = ENCODING_CYCLE[(index + 2) % 3]
            paths.append(w.write_colour(enc))
    return paths
