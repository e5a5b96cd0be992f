"""Decoding one loop against dcmtk's ``dcmdjpeg``, side by side, for ``echo-agent bench
inference``.

The yardstick (issue #17): our decoding of every frame to RGB uint8, the form analysis needs,
must take at most ``DECODE_TARGET_RATIO`` times what dcmtk's reference decoder takes on the same
file. dcmdjpeg runs as the subprocess it is, start-up included, decoding all frames and writing
the decompressed dataset to ``/dev/null`` (so no disk write is counted against it). Ours is
timed twice: the way a job decodes (``FrameReader``, one frame at a time on the decoding thread
that runs beside the analysis) and ``read_cine`` (every frame at once, on a few threads). Each
figure is the best of ``repeats``, taken in turns so all see the same machine state.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from echo_agent.bench.dcmtk import find_dcmtk_tool
from inference.decode import FrameReader, read_cine

DECODE_TARGET_RATIO = 1.2
DCMDJPEG = "dcmtk dcmdjpeg (subprocess, to /dev/null)"
JOB_PATH = "echo-agent FrameReader (the job's decoding thread)"
READ_CINE = "echo-agent read_cine (all frames, threaded)"
DECODE_TIMEOUT_S = 300


@dataclass(frozen=True)
class DecodeTiming:
    """One decoder's best time on the loop; ``ratio`` is against dcmdjpeg (None for it)."""

    decoder: str
    n_frames: int
    best_s: float
    ratio: float | None

    @property
    def passed(self) -> bool | None:
        return None if self.ratio is None else self.ratio <= DECODE_TARGET_RATIO


def decode_with_reader(path: Path) -> np.ndarray:
    """Every frame as a job decodes it: the header once, then each frame on its own."""
    reader = FrameReader(path)
    frames = np.empty((reader.n_frames, reader.rows, reader.cols, 3), np.uint8)
    for index in range(reader.n_frames):
        frames[index] = reader.decode(index)
    return frames


def decode_with_dcmdjpeg(path: Path) -> None:
    """dcmtk's full decode of ``path`` (every frame; YCbCr converted to RGB, its default)."""
    done = subprocess.run(
        [find_dcmtk_tool("dcmdjpeg"), str(path), "/dev/null"],
        capture_output=True,
        text=True,
        timeout=DECODE_TIMEOUT_S,
    )
    if done.returncode != 0:
        raise RuntimeError(f"dcmdjpeg failed on {path.name}: {done.stderr.strip()[-500:]}")


def run_decode_bench(path: Path, repeats: int = 3) -> list[DecodeTiming]:
    """dcmdjpeg, the job's path and ``read_cine`` on ``path``, best of ``repeats`` each."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    n_frames = read_cine(path).n_frames  # also a warm-up of our decoder
    contenders: dict[str, Callable[[Path], object]] = {
        DCMDJPEG: decode_with_dcmdjpeg,
        JOB_PATH: decode_with_reader,
        READ_CINE: read_cine,
    }
    best = dict.fromkeys(contenders, float("inf"))
    for _ in range(repeats):
        for name, run in contenders.items():
            started = time.perf_counter()
            run(path)
            best[name] = min(best[name], time.perf_counter() - started)
    reference = best[DCMDJPEG]
    return [
        DecodeTiming(name, n_frames, seconds, None if name == DCMDJPEG else seconds / reference)
        for name, seconds in best.items()
    ]


def format_decode_table(timings: Sequence[DecodeTiming]) -> str:
    """Markdown: each decoder's best time, its ratio to dcmdjpeg and the target's verdict."""
    header = "| decoder | frames | best | vs dcmdjpeg | target | result |"
    rule = "|---|---:|---:|---:|---:|---|"
    rows = []
    for t in timings:
        ratio = "1.00x (reference)" if t.ratio is None else f"{t.ratio:.2f}x"
        verdict = {None: "", True: "pass", False: "FAIL"}[t.passed]
        target = "" if t.ratio is None else f"<= {DECODE_TARGET_RATIO:.1f}x"
        rows.append(
            f"| {t.decoder} | {t.n_frames} | {t.best_s:.2f} s | {ratio} | {target} | {verdict} |"
        )
    return "\n".join([header, rule, *rows])
