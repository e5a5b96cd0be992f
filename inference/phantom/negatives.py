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
a UID of ``generate_phantoms``, and the first k negatives do not depend on n. The loops'
content is simulated in ``negative_loops``; this module draws, writes and names them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from .cases import Layout
from .dicom_writer import ENCODING_CYCLE, PixelEncoding, SeriesInfo, write_ultrasound
from .identity import phantom_uid, sample_identity
from .negative_loops import NEGATIVE_CLASSES, NegativeLoop, lv_outside_fraction, simulate_negative
from .study import (
    A4C_DESCRIPTIONS,
    MATRIX_PLANS,
    _annotated,
    _encode_frames,
    _tissue_region,
    layout_for,
)
from .truthio import save_json

NEGATIVE_STREAM_KEY = 0x4E4547  # "NEG": keeps negatives' random streams apart from studies'
MIN_FRAMES = 64  # two beats at the slowest heart rate and frame rate fit


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
