"""Writing B-mode loops: DICOM (as a cart exports them) or the EchoNet-Dynamic layout, with
the same truth files as the classic phantom, in parallel processes with progress shown.

Loop i draws from its own child of SeedSequence(seed), so the output is the same whatever the
number of worker processes; the families allowed change which family each loop draws.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydicom.uid import RLELossless

from ...preprocess import PreprocessError
from ..cases import A4CLoop
from ..dicom_writer import (
    JPEG_YBR,
    RAW_MONO,
    RAW_RGB,
    RLE_RGB,
    PixelEncoding,
    write_ultrasound,
)
from ..echonet import (
    MIN_FRAMES,
    SquareResize,
    file_name_for,
    write_dataset_lists,
    write_video_entry,
)
from ..motion import ecg_mv
from ..overlay import to_grey
from ..study import StudyWriter, _a4c_truth, _burn_in_text, _landmarks_px
from ..truthio import save_json, save_npz
from .display import build_styled_overlay, compose_styled, tint_lut
from .families import FAMILIES, pick
from .heart import HeartPlan, sample_heart, truth_loop
from .network_view import jpeg_round_trip, network_view
from .scan import BModeScanner, ScanStyle, sample_scan_style

RLE_MONO = PixelEncoding(RLELossless, "MONOCHROME2")
ENCODINGS = {
    "jpeg_ybr": JPEG_YBR,
    "rle_rgb": RLE_RGB,
    "rle_mono": RLE_MONO,
    "raw_rgb": RAW_RGB,
    "raw_mono": RAW_MONO,
}
MAX_FRAMES = 160
RAW_BYTES_CAP = 80_000_000  # an uncompressed loop stays under ~80 MB
WORKERS_ENV = "ECHO_AGENT_PHANTOM_WORKERS"
ECHONET_RENDER_PX = 336  # 3 x 112: enough for the resize to 112 to average speckle


@dataclass(frozen=True)
class BModeLoop:
    loop: A4CLoop
    plan: HeartPlan
    style: ScanStyle
    artefacts: tuple[str, ...]


def frame_cap(style: ScanStyle) -> int:
    """Most frames a loop may have: compressed loops 160, uncompressed ones by size."""
    enc = ENCODINGS[style.encoding]
    rows, cols = style.matrix
    if enc.transfer_syntax_uid == JPEG_YBR.transfer_syntax_uid:
        return MAX_FRAMES
    cap = RAW_BYTES_CAP // (rows * cols * enc.samples_per_pixel)
    return int(np.clip(cap, 90, MAX_FRAMES))


def simulate_bmode(
    rng: np.random.Generator,
    families: tuple[str, ...],
    min_frames: int = 0,
    integer_fps: bool = False,
    max_side_px: int | None = None,
) -> BModeLoop:
    """One loop: family, style, heart, truth and grey fan frames. max_side_px renders the
    family's layout at a smaller matrix (same aspect and geometry) when the output is
    resized anyway (EchoNet's 112 px)."""
    fam = FAMILIES[str(pick(rng, families))]
    style = sample_scan_style(rng, fam)
    if max_side_px is not None and max(style.matrix) > max_side_px:
        k = max_side_px / max(style.matrix)
        style = replace(style, matrix=(round(style.matrix[0] * k), round(style.matrix[1] * k)))
    plan = sample_heart(rng, fam, style.matrix, frame_cap(style), min_frames, integer_fps)
    loop, hearts = truth_loop(plan)
    scanner = BModeScanner(plan, style, hearts[0], rng)
    for f, hf in enumerate(hearts):
        loop.frames[f] = scanner.frame(hf)
    return BModeLoop(loop, plan, style, scanner.artefacts.names)


def exported_rgb(
    b: BModeLoop, rng: np.random.Generator, text: tuple[list[str], list[str]]
) -> np.ndarray:
    """(n, rows, cols, 3) frames as the lab exports them: tint, text, ECG, markers, logo."""
    case, style, loop = b.plan.case, b.style, b.loop
    n = case.plan.n_frames
    t_end = (n - 1) * case.plan.frame_time_ms / 1000.0
    ecg = ecg_mv(np.linspace(0.0, t_end, max(400, 4 * n)), case.plan.timing)
    left, right = text
    overlay = build_styled_overlay(
        case.sector, rng, left, right, style.text_corners, style.ecg, ecg, n, style.logo
    )
    tint = tint_lut(style.tint)
    rgb = np.empty((*loop.frames.shape, 3), np.uint8)
    for i in range(n):
        compose_styled(loop.frames[i], tint, overlay, i, rgb[i])
    return rgb


def style_truth(b: BModeLoop) -> dict[str, Any]:
    rwma = b.plan.rwma
    return {
        **asdict(b.style),
        "matrix": list(b.style.matrix),
        "phenotype": b.plan.phenotype,
        "rwma": None if rwma is None else {"segment": rwma.segment, "severity": rwma.severity},
        "artefacts": list(b.artefacts),
    }


def _write_dicom(job: tuple[Path, int, int, np.random.SeedSequence, tuple[str, ...]]) -> Path:
    outdir, seed, index, ss, families = job
    w = StudyWriter(outdir, seed, index, ss)
    rng = w.rng["a4c"]
    b = simulate_bmode(rng, families)
    case = b.plan.case
    hr = int(case.plan.timing.heart_rate_bpm)
    text = _burn_in_text(w.identity, case.sector, case.plan.frame_rate_hz, hr)
    rgb = exported_rgb(b, rng, text)
    loop, sector = b.loop, case.sector
    enc = ENCODINGS[b.style.encoding]
    info = w._series("a4c", rng, sector, case.plan.frame_time_ms, hr)
    frames = rgb if enc.samples_per_pixel == 3 else to_grey(rgb.reshape(-1, *rgb.shape[2:]))
    frames = frames.reshape(rgb.shape[: 4 if enc.samples_per_pixel == 3 else 3])
    name = f"{w.stem}_a4c"
    path = write_ultrasound(
        outdir / f"{name}.dcm", frames, info, enc, jpeg_quality=b.style.jpeg_quality
    )
    masks_name = f"{name}_masks.npz"
    save_npz(
        outdir / masks_name, masks=loop.masks, volumes_ml=loop.volumes_ml, **_landmarks_px(loop)
    )
    truth = {
        **_a4c_truth(loop),
        "frame_time_ms": case.plan.frame_time_ms,
        "frame_rate_hz": case.plan.frame_rate_hz,
        **w._common_truth(info, enc, sector, case.plan.n_frames),
        "masks_file": masks_name,
        "style": style_truth(b),
    }
    save_json(outdir / f"{name}.json", truth)
    return path


def _write_echonet_video(job: tuple[Path, int, int, np.random.SeedSequence, tuple[str, ...]]):
    """One AVI at 112x112 of the styled export as the node's networks see it (its own fan
    finding, mask, crop and resize; the JPEG round trip for JPEG styles) and its
    FileList/VolumeTracings rows. A loop whose fan the node cannot find (none so far) falls
    back to the whole export squared, as before, so every index still writes one video."""
    videos, seed, i, ss, families = job
    rng = np.random.default_rng(ss)
    b = simulate_bmode(
        rng, families, min_frames=MIN_FRAMES, integer_fps=True, max_side_px=ECHONET_RENDER_PX
    )
    loop, case = b.loop, b.plan.case
    hr = round(case.plan.timing.heart_rate_bpm)
    text = (["Adult TTE", "A4C"], [f"HR {hr} bpm", f"Depth {case.sector.depth_cm:.0f} cm"])
    rgb = exported_rgb(b, rng, text)
    if b.style.encoding == "jpeg_ybr":
        rgb = jpeg_round_trip(rgb, b.style.jpeg_quality)
    try:
        small, grid = network_view(rgb, case.plan.frame_time_ms)
    except PreprocessError:
        sq = SquareResize.for_shape(case.sector.rows, case.sector.cols)
        small, grid = np.stack([sq.image(to_grey(f)) for f in rgb]), sq
    return write_video_entry(
        videos, file_name_for(seed, i), i, loop, small, grid, case.plan.frame_rate_hz, rng
    )


def worker_count(n: int) -> int:
    """ECHO_AGENT_PHANTOM_WORKERS overrides (1: stay in this process); otherwise one process
    per CPU (at most 8) once there are a few loops to share."""
    env = os.environ.get(WORKERS_ENV, "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError as exc:
            raise ValueError(f"{WORKERS_ENV} must be an integer, got {env!r}") from exc
    if n < 4:
        return 1
    return max(1, min(len(os.sched_getaffinity(0)), 8))


def _single_threaded() -> None:
    """One process per core already: OpenCV's own threads would only contend."""
    cv2.setNumThreads(1)


def _run(fn, jobs: list, progress: bool) -> list:
    """Runs jobs (in order of results) with a progress line per loop on stderr."""
    started = time.perf_counter()
    results: list = [None] * len(jobs)

    def report(done: int) -> None:
        if progress:
            el = time.perf_counter() - started
            eta = el / done * (len(jobs) - done)
            print(
                f"phantom bmode: {done}/{len(jobs)} loops, {el:.0f} s, eta {eta:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    workers = worker_count(len(jobs))
    if workers <= 1:
        for k, job in enumerate(jobs):
            results[k] = fn(job)
            report(k + 1)
        return results
    ctx = multiprocessing.get_context("spawn")  # the caller may hold threads fork would copy
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_single_threaded
    ) as pool:
        for k, res in enumerate(pool.map(fn, jobs, chunksize=1)):
            results[k] = res
            report(k + 1)
    return results


def write_bmode(
    outdir: Path,
    n: int,
    seed: int,
    fmt: str,
    families: tuple[str, ...],
    progress: bool = True,
) -> list[Path]:
    """Writes n loops; returns the .dcm paths, or [FileList.csv] for echonet."""
    streams = np.random.SeedSequence(int(seed)).spawn(int(n))
    if fmt == "dicom":
        jobs = [(outdir, int(seed), i, streams[i], families) for i in range(n)]
        return _run(_write_dicom, jobs, progress)
    videos = outdir / "Videos"
    videos.mkdir(parents=True, exist_ok=True)
    jobs = [(videos, int(seed), i, streams[i], families) for i in range(n)]
    results = _run(_write_echonet_video, jobs, progress)
    return [write_dataset_lists(outdir, results)]
