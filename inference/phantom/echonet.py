"""EchoNet-Dynamic layout: Videos/*.avi at 112x112, FileList.csv and VolumeTracings.csv.

Training code written against the real dataset then runs unchanged on phantoms. Loops are
rendered at a small native size (only the fan, no annotations, as EchoNet's videos are) and
then padded to square and resized to 112, like EchoNet's preprocessing.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from ..disks import disk_chords
from .cases import A4CLoop, Layout, sample_a4c_case, simulate_a4c
from .loop_timing import Beat

SIZE_PX = 112
NATIVE_HEIGHT_PX = 144
MIN_FRAMES = 64  # two 32-frame clips at period 1 (the EF model samples 32 frames, period 2)
MAX_FRAMES = 220
PARALLEL_MIN_VIDEOS = 24
WORKERS_ENV = "ECHO_AGENT_PHANTOM_WORKERS"
FILELIST_HEADER = [
    "FileName",
    "EF",
    "ESV",
    "EDV",
    "FrameHeight",
    "FrameWidth",
    "FPS",
    "NumberOfFrames",
    "Split",
]
TRACINGS_HEADER = ["FileName", "X1", "Y1", "X2", "Y2", "Frame"]
NATIVE_LAYOUT = Layout(rows=None, cols=None, sector_height_px=NATIVE_HEIGHT_PX, n_theta=128)


class PointMap(Protocol):
    """Native (column, row) pixel-centre points -> the 112 grid (``SquareResize``, or the
    node's own sector transform for the B-mode style)."""

    def points(self, colrow: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class SquareResize:
    """Pad the fan image to a square (centred) and scale it to SIZE_PX."""

    pad_top: int
    pad_left: int
    side: int

    @classmethod
    def for_shape(cls, rows: int, cols: int) -> SquareResize:
        side = max(rows, cols)
        return cls(pad_top=(side - rows) // 2, pad_left=(side - cols) // 2, side=side)

    @property
    def scale(self) -> float:
        return SIZE_PX / self.side

    def image(self, img: np.ndarray) -> np.ndarray:
        sq = np.zeros((self.side, self.side), img.dtype)
        rows, cols = img.shape[:2]
        sq[self.pad_top : self.pad_top + rows, self.pad_left : self.pad_left + cols] = img
        return cv2.resize(sq, (SIZE_PX, SIZE_PX), interpolation=cv2.INTER_AREA)

    def points(self, colrow: np.ndarray) -> np.ndarray:
        """Native (col, row) pixel-centre coordinates -> 112-grid pixel-centre coordinates."""
        cr = np.asarray(colrow, dtype=np.float64)
        out = np.empty_like(cr)
        out[..., 0] = (cr[..., 0] + self.pad_left + 0.5) * self.scale - 0.5
        out[..., 1] = (cr[..., 1] + self.pad_top + 0.5) * self.scale - 0.5
        return out


def split_for(index: int) -> str:
    """75 / 12.5 / 12.5 % in every block of eight, so any n >= 8 has all three splits."""
    k = index % 8
    return "TRAIN" if k < 6 else ("VAL" if k == 6 else "TEST")


def file_name_for(seed: int, index: int) -> str:
    """EchoNet-like hexadecimal name ("0X..."), unique per (seed, index), without extension."""
    return f"0X{seed & 0xFFFFFFFF:08X}{index:08X}"


def tracing_rows(loop: A4CLoop, frame: int, sq: PointMap) -> list[tuple[float, ...]]:
    """EchoNet's trace for one frame: the long axis (apex -> mitral annulus midpoint), then the
    20 disk chords apex to base, X1/Y1 on the septal (viewer's left) side, all on the 112 grid."""
    s = loop.shapes_cm[frame]
    sector = loop.case.sector
    ch = disk_chords(s.lv_endo, s.lv_apex, s.mv_mid, 20)
    apex, mid = sq.points(sector.to_px(s.lv_apex)), sq.points(sector.to_px(s.mv_mid))
    a = sq.points(sector.to_px(ch.side_a))
    b = sq.points(sector.to_px(ch.side_b))
    rows = [(apex[0], apex[1], mid[0], mid[1], frame)]
    rows += [(a[i, 0], a[i, 1], b[i, 0], b[i, 1], frame) for i in range(len(a))]
    return rows


def _write_avi(path: Path, frames: np.ndarray, fps: float) -> None:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (SIZE_PX, SIZE_PX))
    if not w.isOpened():
        raise RuntimeError(f"OpenCV cannot write MJPG AVI to {path}")
    try:
        for f in frames:
            w.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR if f.ndim == 2 else cv2.COLOR_RGB2BGR))
    finally:
        w.release()


def _render_video(job: tuple[Path, int, int, np.random.SeedSequence]):
    """Simulates and writes one video; returns its FileList row and VolumeTracings rows."""
    videos, seed, i, stream = job
    rng = np.random.default_rng(stream)
    case = sample_a4c_case(
        rng, NATIVE_LAYOUT, max_frames=MAX_FRAMES, min_frames=MIN_FRAMES, integer_fps=True
    )
    loop = simulate_a4c(case, rng)
    sq = SquareResize.for_shape(case.sector.rows, case.sector.cols)
    small = np.stack([sq.image(f) for f in loop.frames])
    return write_video_entry(
        videos, file_name_for(seed, i), i, loop, small, sq, case.plan.frame_rate_hz, rng
    )


def write_video_entry(
    videos: Path,
    name: str,
    index: int,
    loop: A4CLoop,
    small: np.ndarray,
    sq: PointMap,
    frame_rate_hz: float,
    rng: np.random.Generator,
) -> tuple[list[object], list[list[object]]]:
    """Writes ``small`` (the 112x112 frames) as ``name``.avi and returns its FileList row and
    VolumeTracings rows for one beat drawn from ``loop`` (shared by every generator style, so
    the dataset layout is written one way)."""
    fps = round(float(frame_rate_hz))
    _write_avi(videos / f"{name}.avi", small, float(fps))
    beat: Beat = loop.beats[int(rng.integers(len(loop.beats)))]
    traces: list[list[object]] = []
    # EchoNet's loader takes the first traced frame as the small (ES) trace and the last as the
    # large (ED) one, so the ES rows come first
    for frame in (beat.es_frame, beat.ed_frame):
        for r in tracing_rows(loop, frame, sq):
            traces.append([f"{name}.avi", *(f"{v:.6f}" for v in r[:4]), int(r[4])])
    row = [
        name,
        repr(beat.ef_percent),
        repr(beat.esv_ml),
        repr(beat.edv_ml),
        SIZE_PX,
        SIZE_PX,
        fps,
        loop.frames.shape[0],
        split_for(index),
    ]
    return row, traces


def _worker_count(n: int) -> int:
    """Processes only pay off for big batches; each video is independent and seeded alone, so
    the output does not depend on how many run in parallel. ECHO_AGENT_PHANTOM_WORKERS
    overrides the count (1: stay in this process)."""
    env = os.environ.get(WORKERS_ENV, "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError as exc:
            raise ValueError(f"{WORKERS_ENV} must be an integer, got {env!r}") from exc
    if n < PARALLEL_MIN_VIDEOS:
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def write_echonet(outdir: Path, n: int, seed: int, streams: list[np.random.SeedSequence]) -> Path:
    outdir = Path(outdir)
    videos = outdir / "Videos"
    videos.mkdir(parents=True, exist_ok=True)
    jobs = [(videos, seed, i, streams[i]) for i in range(n)]
    workers = _worker_count(n)
    results = None
    if workers > 1:
        # spawn, not fork: the caller may hold threads (OpenCV, torch) that fork would copy
        # in a locked state
        try:
            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                results = list(pool.map(_render_video, jobs, chunksize=4))
        except BrokenProcessPool:  # e.g. a calling script without a __main__ guard
            results = None
    if results is None:
        results = [_render_video(j) for j in jobs]
    return write_dataset_lists(outdir, results)


def write_dataset_lists(
    outdir: Path, entries: list[tuple[list[object], list[list[object]]]]
) -> Path:
    """FileList.csv and VolumeTracings.csv for the (row, tracings) of each video written;
    returns the FileList path."""
    filelist = outdir / "FileList.csv"
    with filelist.open("w", newline="") as fh:
        wr = csv.writer(fh, lineterminator="\n")
        wr.writerow(FILELIST_HEADER)
        wr.writerows(row for row, _ in entries)
    with (outdir / "VolumeTracings.csv").open("w", newline="") as fh:
        wr = csv.writer(fh, lineterminator="\n")
        wr.writerow(TRACINGS_HEADER)
        for _, traces in entries:
            wr.writerows(traces)
    return filelist
