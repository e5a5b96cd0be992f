"""Negative loops: cine files a node must refuse to publish an EF on.

Five classes, each written as the normal phantoms are (same DICOM writer, header, fan and
burned-in annotations) so that only the content differs:

- ``blank``: the fan (or the whole image) one constant grey level;
- ``noise``: uniform random noise in the fan (or the whole image) on every frame;
- ``non_cardiac``: speckled abdominal wall and liver, static or drifting with breathing;
- ``wrong_view``: a parasternal long-axis loop (the PLAX distractor);
- ``lv_cut_off``: an A4C loop whose LV is in large part outside the fan (off-axis or too
  shallow), so no volume or EF can be measured from it.

Every file has a truth JSON beside it with ``negative_class`` and null measurements (the cut-off
loop keeps its true EF under ``reference_*`` keys). Negative i draws from its own child of a
seed sequence kept apart from the normal phantoms', so the same seed never repeats a patient or
a UID of ``generate_phantoms``, and the first k negatives do not depend on n.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .abdomen import abdomen_paints, sample_abdomen
from .anatomy import Pose
from .cases import (
    DEPTH_RANGE_CM,
    A4CCase,
    Layout,
    LoopPlan,
    plan_loop,
    sample_a4c_case,
    shapes_at,
    simulate_a4c,
)
from .dicom_writer import ENCODING_CYCLE, PixelEncoding, SeriesInfo, write_ultrasound
from .distractors import simulate_plax
from .geometry import PolarGrid, Sector
from .identity import phantom_uid, sample_identity
from .render import BeamRenderer, fill_mask, sample_style
from .study import (
    A4C_DESCRIPTIONS,
    MATRIX_PLANS,
    _annotated,
    _encode_frames,
    _tissue_region,
    layout_for,
)
from .truthio import save_json

NEGATIVE_CLASSES = ("blank", "noise", "non_cardiac", "wrong_view", "lv_cut_off")
NEGATIVE_STREAM_KEY = 0x4E4547  # "NEG": keeps negatives' random streams apart from studies'
MIN_FRAMES = 64  # two beats at the slowest heart rate and frame rate fit
NOISE_MAX_FRAMES = 64  # noise does not compress: fewer frames keep the files < ~70 MB
CUT_OFF_FRACTION = (0.3, 0.6)  # share of the LV outside the fan, least over the loop
_CUT_STEP_CM = 0.15
_DEPTH_STEP_CM = 0.2
_MIN_DEPTH_CM = 4.0


@dataclass(frozen=True)
class NegativeLoop:
    """One negative loop before it becomes DICOM: grey frames (zero outside the fan unless the
    whole image is the content), and what its header and truth need."""

    negative_class: str
    variant: str
    view: str  # "none", or the view it is ("PLAX", "A4C")
    frames: np.ndarray  # (n, rows, cols) uint8
    annotated: bool  # False: the content fills the image, no burned-in text or ECG
    sector: Sector
    plan: LoopPlan
    truth: dict[str, Any] = field(default_factory=dict)  # class-specific, JSON-ready


def _check_class(negative_class: str) -> None:
    if negative_class not in NEGATIVE_CLASSES:
        raise ValueError(
            f"negative class must be one of {', '.join(NEGATIVE_CLASSES)}, got {negative_class!r}"
        )


def _fan(rng: np.random.Generator, layout: Layout) -> Sector:
    """Depth and opening drawn as for the cardiac loops."""
    depth = float(rng.uniform(*DEPTH_RANGE_CM))
    half = float(np.deg2rad(rng.uniform(38.0, 45.0)))
    return layout.sector(depth, half)


def _blank(rng: np.random.Generator, layout: Layout, max_frames: int) -> NegativeLoop:
    sector = _fan(rng, layout)
    plan = plan_loop(rng, max_frames=max_frames)
    variant = str(rng.choice(["dark_fan", "flat_fan", "whole_image"]))
    shape = (plan.n_frames, sector.rows, sector.cols)
    if variant == "whole_image":
        level = int(rng.integers(0, 41))
        frames = np.full(shape, level, np.uint8)
    else:
        level = int(rng.integers(0, 9)) if variant == "dark_fan" else int(rng.integers(20, 161))
        frames = np.zeros(shape, np.uint8)
        frames[:, sector.mask()] = level
    return NegativeLoop(
        "blank",
        variant,
        "none",
        frames,
        variant != "whole_image",
        sector,
        plan,
        {"grey_level": level},
    )


def _noise(rng: np.random.Generator, layout: Layout, max_frames: int) -> NegativeLoop:
    sector = _fan(rng, layout)
    plan = plan_loop(rng, max_frames=min(max_frames, NOISE_MAX_FRAMES))
    variant = str(rng.choice(["fan", "whole_image"]))
    frames = rng.integers(0, 256, (plan.n_frames, sector.rows, sector.cols), dtype=np.uint8)
    if variant == "fan":
        frames[:, ~sector.mask()] = 0
    return NegativeLoop("noise", variant, "none", frames, variant == "fan", sector, plan)


def _non_cardiac(rng: np.random.Generator, layout: Layout, max_frames: int) -> NegativeLoop:
    sector = _fan(rng, layout)
    plan = plan_loop(rng, max_frames=max_frames)
    scene = sample_abdomen(rng, sector.depth_cm, sector.half_angle_rad)
    grid = PolarGrid(
        round(sector.height_px), layout.n_theta, sector.depth_cm, sector.half_angle_rad
    )
    renderer = BeamRenderer(sector, grid, sample_style(rng), rng)
    frames = np.zeros((plan.n_frames, sector.rows, sector.cols), np.uint8)
    for f, t in enumerate(plan.frame_times_s()):
        frames[f] = renderer.frame(abdomen_paints(scene, float(t)), rng)
    variant = "liver_static" if scene.drift_amp_cm == 0 else "liver_breathing"
    extra = {"drift_amp_cm": scene.drift_amp_cm, "n_vessels": len(scene.vessels)}
    return NegativeLoop("non_cardiac", variant, "none", frames, True, sector, plan, extra)


def _wrong_view(rng: np.random.Generator, layout: Layout, max_frames: int) -> NegativeLoop:
    loop = simulate_plax(rng, layout, max_frames)
    return NegativeLoop("wrong_view", "plax", "PLAX", loop.frames, True, loop.sector, loop.plan)


def lv_outside_fraction(lv_endo_cm: np.ndarray, sector: Sector, fan: np.ndarray) -> float:
    """Share of the LV cavity's area (cm^2) outside the fan; fan is sector.mask()."""
    x, y = lv_endo_cm[:, 0], lv_endo_cm[:, 1]
    total = 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))
    inside_px = np.count_nonzero(fill_mask(fan.shape, sector.to_px(lv_endo_cm)) & fan)
    inside = inside_px * sector.spacing_cm**2
    return float(np.clip(1.0 - inside / max(total, 1e-9), 0.0, 1.0))


def _lv_outlines(case: A4CCase, n_times: int = 16) -> list[np.ndarray]:
    """The LV cavity at instants spread over the loop (it shrinks and breathes)."""
    times = np.linspace(0.0, case.plan.frame_times_s()[-1], n_times)
    return [shapes_at(case, float(t)).lv_endo for t in times]


def _least_outside(outlines: list[np.ndarray], sector: Sector, fan: np.ndarray) -> float:
    return min(lv_outside_fraction(o, sector, fan) for o in outlines)


def _cut_off_case(rng: np.random.Generator, layout: Layout, case: A4CCase) -> tuple[A4CCase, str]:
    """Moves the heart sideways out of the fan (off-axis probe) or makes the scan too shallow
    for its base, in small steps until at least the drawn share of the LV is outside."""
    target = float(rng.uniform(*CUT_OFF_FRACTION))
    if rng.random() < 0.7:
        # mostly the lateral wall out (the usual off-axis error); leftwards the RV goes first
        sign = 1.0 if rng.random() < 0.7 else -1.0
        tilt = float(np.deg2rad(rng.uniform(-10.0, 10.0)))
        (ax, ay), angle = case.pose.apex_xy_cm, case.pose.angle_rad
        tilted = replace(case, pose=Pose((ax, ay), angle + tilt))
        outlines = _lv_outlines(tilted)  # moving the apex by dx moves every point by dx
        fan = case.sector.mask()
        for step in range(1, 200):
            dx = sign * step * _CUT_STEP_CM
            moved = [o + np.array([dx, 0.0]) for o in outlines]
            if _least_outside(moved, case.sector, fan) >= target:
                pose = Pose((ax + dx, ay), angle + tilt)
                return replace(case, pose=pose), "side_right" if sign > 0 else "side_left"
    else:
        outlines = _lv_outlines(case)
        half = case.sector.half_angle_rad
        depth = case.sector.depth_cm
        while depth > _MIN_DEPTH_CM:
            depth -= _DEPTH_STEP_CM
            sector = layout.sector(depth, half)
            if _least_outside(outlines, sector, sector.mask()) >= target:
                grid = PolarGrid(round(sector.height_px), layout.n_theta, depth, half)
                return replace(case, sector=sector, grid=grid), "too_shallow"
    raise RuntimeError("could not move the LV out of the fan")  # pragma: no cover


def _lv_cut_off(rng: np.random.Generator, layout: Layout, max_frames: int) -> NegativeLoop:
    case = sample_a4c_case(rng, layout, max_frames=max_frames)
    case, variant = _cut_off_case(rng, layout, case)
    loop = simulate_a4c(case, rng)
    fan = case.sector.mask()
    shares = [lv_outside_fraction(s.lv_endo, case.sector, fan) for s in loop.shapes_cm]
    extra = {
        "lv_outside_fan_fraction_min": min(shares),
        "lv_outside_fan_fraction_max": max(shares),
        "reference_ef_percent": loop.ef_percent,
        "reference_edv_ml": loop.edv_ml,
        "reference_esv_ml": loop.esv_ml,
    }
    return NegativeLoop(
        "lv_cut_off", variant, "A4C", loop.frames, True, case.sector, case.plan, extra
    )


_SIMULATORS = {
    "blank": _blank,
    "noise": _noise,
    "non_cardiac": _non_cardiac,
    "wrong_view": _wrong_view,
    "lv_cut_off": _lv_cut_off,
}


def simulate_negative(
    negative_class: str, rng: np.random.Generator, layout: Layout, max_frames: int
) -> NegativeLoop:
    """One negative loop of the class, in memory (the counterpart of ``simulate_a4c`` and
    ``simulate_plax``): grey frames with their fan and timing."""
    _check_class(negative_class)
    return _SIMULATORS[negative_class](rng, layout, max_frames)


def class_for(index: int) -> str:
    """Negative i is of class i mod 5, so any five consecutive negatives hold every class."""
    return NEGATIVE_CLASSES[index % len(NEGATIVE_CLASSES)]


def encoding_for(index: int) -> PixelEncoding:
    """Encodings cycle with period 4 against the classes' 5: twenty negatives write every class
    in every encoding."""
    return ENCODING_CYCLE[index % len(ENCODING_CYCLE)]


def _streams(seed: int, n: int) -> list[np.random.SeedSequence]:
    return np.random.SeedSequence([int(seed), NEGATIVE_STREAM_KEY]).spawn(int(n))


def _layout_and_frames(
    rng: np.random.Generator,
    enc: PixelEncoding,
    matrix: tuple[int, int] | None,
    max_frames: int | None,
) -> tuple[Layout, int]:
    plan = MATRIX_PLANS[enc]
    if matrix is None:
        matrix = plan.matrices[int(rng.integers(len(plan.matrices)))]
    return layout_for(*matrix), plan.max_frames if max_frames is None else int(max_frames)


def _content(
    index: int,
    content_ss: np.random.SeedSequence,
    matrix: tuple[int, int] | None,
    max_frames: int | None,
) -> NegativeLoop:
    rng = np.random.default_rng(content_ss)
    layout, frames = _layout_and_frames(rng, encoding_for(index), matrix, max_frames)
    return simulate_negative(class_for(index), rng, layout, frames)


def iter_negatives(
    n: int,
    seed: int,
    matrix: tuple[int, int] | None = None,
    max_frames: int | None = None,
) -> Iterator[NegativeLoop]:
    """The loops ``generate_negatives`` writes for the same arguments, without the files: for an
    evaluation that feeds frames to a model directly."""
    _check_sizes(n, seed, matrix, max_frames)
    for i, ss in enumerate(_streams(seed, n)):
        _, content_ss, _ = ss.spawn(3)
        yield _content(i, content_ss, matrix, max_frames)


def _truth(loop: NegativeLoop, info: SeriesInfo, enc: PixelEncoding, seed: int, index: int):
    plan, sector = loop.plan, loop.sector
    return {
        "negative_class": loop.negative_class,
        "negative_variant": loop.variant,
        "ef_publishable": False,
        "view": loop.view,
        "ef_percent": None,
        "edv_ml": None,
        "esv_ml": None,
        "heart_rate_bpm": float(plan.timing.heart_rate_bpm),
        "ed_frames": None,
        "es_frames": None,
        "beats": None,
        "frame_time_ms": plan.frame_time_ms,
        "frame_rate_hz": plan.frame_rate_hz,
        "masks_file": None,
        **loop.truth,
        "depth_cm": sector.depth_cm,
        "n_frames": plan.n_frames,
        "rows": sector.rows,
        "cols": sector.cols,
        "spacing_cm": [sector.spacing_cm, sector.spacing_cm],
        "transfer_syntax_uid": str(enc.transfer_syntax_uid),
        "photometric_interpretation": enc.photometric,
        "series_description": info.series_description,
        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.3.1",
        "sop_instance_uid": info.sop_uid,
        "series_instance_uid": info.series_uid,
        "study_instance_uid": info.identity.study_instance_uid,
        "patient_id": info.identity.patient_id,
        "seed": seed,
        "study_index": index,
    }


def write_negative(
    outdir: Path,
    seed: int,
    index: int,
    ss: np.random.SeedSequence,
    matrix: tuple[int, int] | None = None,
    max_frames: int | None = None,
) -> Path:
    """Writes negative ``index`` as ``negative_NNNN_CLASS.dcm`` with its truth JSON beside it.

    Its series description is drawn from the A4C ones (or left out), as a mislabelled or
    unlabelled export would carry: the node has to judge the pixels, not the label."""
    identity_ss, content_ss, misc_ss = ss.spawn(3)
    enc = encoding_for(index)
    loop = _content(index, content_ss, matrix, max_frames)
    misc = np.random.default_rng(misc_ss)
    identity = replace(
        sample_identity(np.random.default_rng(identity_ss), seed, index),
        study_instance_uid=phantom_uid(seed, "negative", index, "study"),
    )
    plan, sector = loop.plan, loop.sector
    info = SeriesInfo(
        identity=identity,
        series_uid=phantom_uid(seed, "negative", index, "series"),
        sop_uid=phantom_uid(seed, "negative", index, "sop"),
        series_number=1,
        series_description=A4C_DESCRIPTIONS[int(misc.integers(len(A4C_DESCRIPTIONS)))],
        seconds_after_study=60 + int(misc.integers(0, 50)),
        regions=(_tissue_region(sector),),
        frame_time_ms=plan.frame_time_ms,
        heart_rate_bpm=int(plan.timing.heart_rate_bpm),
        depth_cm=sector.depth_cm,
    )
    if loop.annotated:
        rgb = _annotated(loop.frames, sector, identity, plan.timing, plan.frame_time_ms, True)
    else:
        rgb = np.repeat(loop.frames[..., None], 3, axis=-1)
    name = f"negative_{index:04d}_{loop.negative_class}"
    path = write_ultrasound(Path(outdir) / f"{name}.dcm", _encode_frames(rgb, enc), info, enc)
    save_json(Path(outdir) / f"{name}.json", _truth(loop, info, enc, seed, index))
    return path


def _is_int(x: object) -> bool:
    return not isinstance(x, bool) and isinstance(x, int | np.integer)


def _check_sizes(n: int, seed: int, matrix: tuple[int, int] | None, max_frames: int | None) -> None:
    if not _is_int(n) or n < 1:
        raise ValueError(f"n must be a positive integer number of loops, got {n!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if matrix is not None and (len(matrix) != 2 or min(matrix) < 64):
        raise ValueError(f"matrix must be (rows, cols), each at least 64 pixels, got {matrix!r}")
    if max_frames is not None and (not _is_int(max_frames) or max_frames < MIN_FRAMES):
        raise ValueError(f"max_frames must be an integer >= {MIN_FRAMES}, got {max_frames!r}")


def generate_negatives(
    outdir: Path,
    n: int,
    seed: int,
    matrix: tuple[int, int] | None = None,
    max_frames: int | None = None,
) -> list[Path]:
    """Writes n negative loops cycling through ``NEGATIVE_CLASSES``; returns the .dcm paths.
    Deterministic for a given seed. matrix and max_frames shrink the loops (tests); by default
    they are drawn per encoding as for the normal phantoms."""
    outdir = Path(outdir)
    _check_sizes(n, seed, matrix, max_frames)
    if outdir.exists() and not outdir.is_dir():
        raise ValueError(f"output path {outdir} exists and is not a directory")
    outdir.mkdir(parents=True, exist_ok=True)
    return [
        write_negative(outdir, int(seed), i, ss, matrix, max_frames)
        for i, ss in enumerate(_streams(seed, n))
    ]


__all__ = [
    "NEGATIVE_CLASSES",
    "NegativeLoop",
    "class_for",
    "encoding_for",
    "generate_negatives",
    "iter_negatives",
    "lv_outside_fraction",
    "simulate_negative",
    "write_negative",
]
