"""Reading the EchoNet-Dynamic layout: FileList.csv, VolumeTracings.csv and Videos/*.avi.

The reader follows the published dataset's own conventions, so code trained here on phantoms
runs unchanged on the real files:

* FileList.csv names videos without the ``.avi`` extension, VolumeTracings.csv with it; both
  spellings are matched on the stem.
* Split is upper case in the real file (``TRAIN``/``VAL``/``TEST``); it is compared
  case-insensitively.
* Each traced frame has one long-axis row (apex -> mitral annulus midpoint) and then the chord
  rows; the LV polygon is ``X1[1:]`` followed by ``X2[1:]`` reversed (same for Y).
* The first traced frame of a video (in file order) is the end-systolic trace and the last the
  end-diastolic one, as EchoNet-Dynamic's loader reads them (it does not sort by frame number).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from inference.beats import (
    CLIP_LENGTH_FRAMES,
    CLIP_PERIOD_FRAMES,
    clip_frame_indices,
    clip_period_for,
)
from inference.errors import InferenceError

SPLITS = ("TRAIN", "VAL", "TEST")
GRID_SIZE_PX = 112
MEAN_STD_MAX_VIDEOS = 128  # EchoNet-Dynamic's get_mean_and_std samples this many videos
_POLY_SHIFT_BITS = 4  # cv2.fillPoly sub-pixel precision: 1/16 pixel


class EchoNetDataError(InferenceError, ValueError):
    """A data folder does not follow the EchoNet-Dynamic layout (named file and row)."""


@dataclass(frozen=True)
class VideoRecord:
    """One FileList.csv row whose video file exists."""

    name: str  # without extension
    path: Path
    ef_percent: float
    esv_ml: float
    edv_ml: float
    n_frames: int
    fps: float
    split: str  # upper case

    @property
    def clip_period_frames(self) -> int:
        """The EF clip period the node uses for this frame rate (``beats.clip_period_for``)."""
        return clip_period_for(1000.0 / self.fps if self.fps > 0 else None)


@dataclass(frozen=True)
class Trace:
    """One traced frame: the long axis and the chord end points, 112-grid pixel centres."""

    frame: int
    x1: np.ndarray
    y1: np.ndarray
    x2: np.ndarray
    y2: np.ndarray

    def polygon_xy(self) -> np.ndarray:
        """(points, 2) closed LV outline: one side of the chords, then the other reversed."""
        xs = np.concatenate([self.x1[1:], self.x2[1:][::-1]])
        ys = np.concatenate([self.y1[1:], self.y2[1:][::-1]])
        return np.stack([xs, ys], axis=1)

    def mask(self, shape: tuple[int, int] = (GRID_SIZE_PX, GRID_SIZE_PX)) -> np.ndarray:
        """Filled LV polygon as a bool (rows, cols) mask."""
        scale = 1 << _POLY_SHIFT_BITS
        pts = np.rint(self.polygon_xy() * scale).astype(np.int32)
        out = np.zeros(shape, np.uint8)
        cv2.fillPoly(out, [pts], 1, lineType=cv2.LINE_8, shift=_POLY_SHIFT_BITS)
        return out.astype(bool)


@dataclass(frozen=True)
class TracedVideo:
    """A video with its end-systolic (first) and end-diastolic (last) trace."""

    record: VideoRecord
    es: Trace
    ed: Trace


@dataclass(frozen=True)
class SegSample:
    """A traced frame and its LV mask, ready for the segmentation network."""

    name: str
    phase: str  # "ES" or "ED"
    frame_index: int
    image: np.ndarray  # (H, W, 3) uint8 RGB
    mask: np.ndarray  # (H, W) bool


def _stem(file_name: str) -> str:
    name = file_name.strip()
    return name[:-4] if name.lower().endswith(".avi") else name


def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    if not path.is_file():
        raise EchoNetDataError(f"{path} not found (expected the EchoNet-Dynamic layout)")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            raise EchoNetDataError(f"{path}: missing columns {', '.join(missing)}")
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]


def read_filelist(root: Path, splits: Iterable[str] | None = None) -> list[VideoRecord]:
    """FileList.csv rows whose video exists, in file order, optionally only some splits."""
    root = Path(root)
    wanted = None if splits is None else {s.upper() for s in splits}
    if wanted is not None and not wanted <= set(SPLITS):
        raise ValueError(f"unknown split(s) {sorted(wanted - set(SPLITS))}; use {SPLITS}")
    rows = _read_csv(
        root / "FileList.csv", ("FileName", "EF", "ESV", "EDV", "FPS", "NumberOfFrames", "Split")
    )
    records: list[VideoRecord] = []
    for line, row in enumerate(rows, start=2):
        split = row["Split"].upper()
        if wanted is not None and split not in wanted:
            continue
        name = _stem(row["FileName"])
        path = root / "Videos" / f"{name}.avi"
        if not path.is_file():
            continue  # the real FileList names a few videos that are not shipped
        try:
            records.append(
                VideoRecord(
                    name=name,
                    path=path,
                    ef_percent=float(row["EF"]),
                    esv_ml=float(row["ESV"]),
                    edv_ml=float(row["EDV"]),
                    n_frames=int(float(row["NumberOfFrames"])),
                    fps=float(row["FPS"]),
                    split=split,
                )
            )
        except ValueError as exc:
            raise EchoNetDataError(f"FileList.csv line {line}: {exc}") from exc
    return records


def read_tracings(root: Path) -> dict[str, list[Trace]]:
    """Traces per video stem, each video's frames in file order (ES first, ED last)."""
    rows = _read_csv(
        Path(root) / "VolumeTracings.csv", ("FileName", "X1", "Y1", "X2", "Y2", "Frame")
    )
    points: dict[str, dict[int, list[tuple[float, float, float, float]]]] = {}
    for line, row in enumerate(rows, start=2):
        try:
            frame = int(float(row["Frame"]))
            xy = (float(row["X1"]), float(row["Y1"]), float(row["X2"]), float(row["Y2"]))
        except ValueError as exc:
            raise EchoNetDataError(f"VolumeTracings.csv line {line}: {exc}") from exc
        points.setdefault(_stem(row["FileName"]), {}).setdefault(frame, []).append(xy)
    traces: dict[str, list[Trace]] = {}
    for name, frames in points.items():
        out = []
        for frame, rows_xy in frames.items():  # dicts keep first-appearance order
            a = np.asarray(rows_xy, np.float64)
            if len(a) < 3:
                raise EchoNetDataError(f"{name} frame {frame}: {len(a)} rows, need axis + chords")
            out.append(Trace(frame, a[:, 0], a[:, 1], a[:, 2], a[:, 3]))
        traces[name] = out
    return traces


def read_filelists(roots: Sequence[Path], splits: Iterable[str] | None = None) -> list[VideoRecord]:
    """``read_filelist`` over several folders, concatenated in the order given: training on
    the union of data sets (for example B-mode and classic phantoms) without copying videos."""
    wanted = None if splits is None else list(splits)
    return [rec for root in roots for rec in read_filelist(root, wanted)]


def traced_videos_in(
    roots: Sequence[Path], splits: Iterable[str] | None = None
) -> list[TracedVideo]:
    """``traced_videos`` over several folders, concatenated in the order given."""
    wanted = None if splits is None else list(splits)
    return [v for root in roots for v in traced_videos(root, wanted)]


def traced_videos(root: Path, splits: Iterable[str] | None = None) -> list[TracedVideo]:
    """Videos that have at least two traced frames (ES and ED)."""
    traces = read_tracings(root)
    out = []
    for rec in read_filelist(root, splits):
        t = traces.get(rec.name, [])
        if len(t) >= 2:
            out.append(TracedVideo(rec, es=t[0], ed=t[-1]))
    return out


def load_video(path: Path, max_frames: int | None = None) -> np.ndarray:
    """(frames, H, W, 3) uint8 RGB; reading stops after ``max_frames`` when given."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise EchoNetDataError(f"cannot open video {path}")
    frames = []
    try:
        while max_frames is None or len(frames) < max_frames:
            ok, bgr = capture.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally:
        capture.release()
    if not frames:
        raise EchoNetDataError(f"video {path} has no readable frames")
    return np.stack(frames)


def seg_samples(videos: Sequence[TracedVideo]) -> list[SegSample]:
    """The ES and ED frame of every traced video with its polygon mask."""
    out: list[SegSample] = []
    for v in videos:
        last = max(v.es.frame, v.ed.frame)
        frames = load_video(v.record.path, max_frames=last + 1)
        for phase, trace in (("ES", v.es), ("ED", v.ed)):
            if trace.frame >= len(frames):
                raise EchoNetDataError(
                    f"{v.record.name}: traced frame {trace.frame} beyond its {len(frames)} frames"
                )
            image = frames[trace.frame]
            out.append(
                SegSample(v.record.name, phase, trace.frame, image, trace.mask(image.shape[:2]))
            )
    return out


def clip_starts(
    n_frames: int, length: int = CLIP_LENGTH_FRAMES, period: int = CLIP_PERIOD_FRAMES
) -> np.ndarray:
    """Every start whose clip fits inside the video (start 0 alone when the video is shorter,
    the clip then padded, as EchoNet-Dynamic pads short videos)."""
    span = (length - 1) * period + 1
    return np.arange(max(1, n_frames - span + 1), dtype=np.int64)


def take_clip(
    video: np.ndarray,
    start: int,
    length: int = CLIP_LENGTH_FRAMES,
    period: int = CLIP_PERIOD_FRAMES,
) -> tuple[np.ndarray, np.ndarray]:
    """(length, H, W, C) frames of one clip and a bool mask of the samples that are real
    (False marks padding past the end, left as zeros for the caller to fill)."""
    idx = clip_frame_indices(int(start), len(video), length, period)
    valid = idx >= 0
    out = np.zeros((length, *video.shape[1:]), video.dtype)
    out[valid] = video[idx[valid]]
    return out, valid


def compact_video(video: np.ndarray) -> np.ndarray:
    """Keep one channel when all three are equal (echo is grey): a third of the memory when
    every training video is held in RAM."""
    if (
        video.shape[-1] == 3
        and np.array_equal(video[..., 0], video[..., 1])
        and np.array_equal(video[..., 0], video[..., 2])
    ):
        return video[..., :1].copy()
    return video


def iter_videos(records: Sequence[VideoRecord]) -> Iterator[np.ndarray]:
    for rec in records:
        yield load_video(rec.path)


def mean_std_subset(
    records: Sequence[VideoRecord], max_videos: int = MEAN_STD_MAX_VIDEOS
) -> list[VideoRecord]:
    """Evenly spaced videos for the normalisation statistics: deterministic, so the segmentation
    and EF weights trained on one folder carry the same mean/std."""
    if not records:
        raise EchoNetDataError("no videos to compute the normalisation from")
    if len(records) <= max_videos:
        return list(records)
    picks = np.linspace(0, len(records) - 1, max_videos).round().astype(int)
    return [records[i] for i in picks]
