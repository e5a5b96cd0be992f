"""Decoding overlapped with analysis: frames are decoded on a background thread while the
calling thread preprocesses and segments the ones already decoded.

Decoding a compressed loop is a large share of one study's time on a small CPU, and nothing
but the fan search needs every frame before work can start. The fan search looks at an evenly
spaced sample of at most ``MAX_STAT_FRAMES`` frames (``preprocess._active_blob``), so those are
decoded first; the fan found on exactly those frames is the fan ``preprocess_cine`` finds on
the whole loop. The remaining frames follow in order, and each batch of frames (aligned to the
segmenter's own batches) is masked, cropped, resized and segmented as soon as its last frame
lands. EF and the measurements need every frame and run once decoding is over, through the same
``finish_analysis`` as the sequential path, so the overlapped result equals ``read_cine`` +
``run_analysis`` (the tests check it on every phantom encoding).

The decoding thread is a plain worker with one job: it stops at the next frame when the caller
fails or is interrupted, it is always joined before ``analyze_stream`` returns or raises, and
its ``DecodeError`` is raised again on the calling thread, so callers see one error type
wherever the corrupt frame is.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np
from pydicom.dataset import Dataset

from inference.analyze import (
    DEFAULT_CLIP_BATCH,
    DEFAULT_FRAME_BATCH,
    EFModel,
    LoopAnalysis,
    Segmenter,
    finish_analysis,
)
from inference.decode import FrameReader
from inference.gate import GateSettings
from inference.preprocess import (
    MAX_STAT_FRAMES,
    PreprocessParams,
    SectorShaper,
)
from inference.types import Cine


@dataclass(frozen=True)
class StreamedLoop:
    """The decoded loop and its analysis, as ``read_cine`` + ``run_analysis`` would give."""

    cine: Cine
    analysis: LoopAnalysis


def fan_sample_indices(n_frames: int) -> np.ndarray:
    """The frames the fan search looks at: the same evenly spaced choice as
    ``preprocess._active_blob``; on a loop of these frames alone it picks all of them."""
    count = min(n_frames, MAX_STAT_FRAMES)
    return np.unique(np.linspace(0, n_frames - 1, count).round().astype(int))


def decode_order(n_frames: int) -> list[int]:
    """The fan-search sample first (analysis cannot start without it), then the rest in order."""
    sample = fan_sample_indices(n_frames)
    rest = np.setdiff1d(np.arange(n_frames), sample, assume_unique=True)
    return [int(i) for i in (*sample, *rest)]


def analyze_stream(
    source: str | Path | BinaryIO | Dataset,
    segmenter: Segmenter,
    ef_model: EFModel | None,
    preprocess_params: PreprocessParams,
    *,
    clip_batch: int = DEFAULT_CLIP_BATCH,
    all_clip_stride: int = 1,
    frame_batch: int | None = None,
    timings_s: dict[str, float] | None = None,
    gate: GateSettings | None = None,
) -> StreamedLoop:
    """Decodes ``source`` on a background thread and analyses it as the frames arrive.

    ``frame_batch`` (default: the segmenter's ``batch_size``, else ``DEFAULT_FRAME_BATCH``)
    is how many frames go to the segmenter at once; keeping it equal to the segmenter's own
    batch gives the same batches, hence the same numbers, as ``run_analysis``.

    ``timings_s`` receives ``decode_s`` (the decoding thread's wall time), ``decode_wait_s``
    (how long this thread waited for frames: the part of decoding that was not hidden) and the
    stages ``run_analysis`` reports. Raises ``DecodeError`` for unreadable or corrupt pixel
    data (whichever frame it is in) and ``PreprocessError`` when the loop has no fan.
    """
    batch = int(frame_batch or getattr(segmenter, "batch_size", DEFAULT_FRAME_BATCH))
    if batch < 1:
        raise ValueError(f"frame_batch must be >= 1, got {batch}")
    sink: dict[str, float] = {} if timings_s is None else timings_s
    started = time.perf_counter()
    reader = FrameReader(source)
    n = reader.n_frames
    sink["decode_s"] = sink.get("decode_s", 0.0) + time.perf_counter() - started
    size = preprocess_params.size_px
    network_input = np.empty((n, 3, size, size), np.float32)
    probability = np.empty((n, size, size), np.float32)
    with _BackgroundDecoder(reader, decode_order(n)) as decoder:
        sample = fan_sample_indices(n)
        decoder.wait_for(sample, sink)
        with _stage(sink, "preprocess_s"):
            shaper = SectorShaper.fit(
                dataclasses.replace(reader.header, frames=decoder.frames[sample]),
                preprocess_params,
            )
        for start in range(0, n, batch):
            chunk = slice(start, min(n, start + batch))
            decoder.wait_for(np.arange(chunk.start, chunk.stop), sink)
            with _stage(sink, "preprocess_s"):
                network_input[chunk] = shaper.network_input(decoder.frames[chunk])
            with _stage(sink, "segmentation_s"):
                out = np.asarray(segmenter.segment(network_input[chunk]), dtype=np.float32)
                if out.shape != (chunk.stop - chunk.start, size, size):
                    raise ValueError(f"the segmenter returned shape {out.shape} for one batch")
                probability[chunk] = out
    sink["decode_s"] += decoder.busy_s
    cine = reader.cine(decoder.frames)
    pre = shaper.preprocessed(network_input)
    analysis = finish_analysis(
        cine,
        pre,
        probability,
        ef_model,
        clip_batch=clip_batch,
        all_clip_stride=all_clip_stride,
        timings_s=sink,
        gate=gate,
    )
    return StreamedLoop(cine=cine, analysis=analysis)


class _stage:  # noqa: N801 - used like a function: ``with _stage(sink, "x_s"):``
    """Adds the wall time of a ``with`` block to ``sink[name]``."""

    def __init__(self, sink: dict[str, float], name: str) -> None:
        self.sink, self.name = sink, name

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *_exc: object) -> None:
        elapsed = time.perf_counter() - self.started
        self.sink[self.name] = self.sink.get(self.name, 0.0) + elapsed


class _BackgroundDecoder:
    """Decodes the frames of ``order`` into ``frames`` on one thread; ``wait_for`` blocks
    until given frames are there (or raises the decoding error). Leaving the ``with`` block
    stops the thread at its next frame and joins it, whatever happened."""

    def __init__(self, reader: FrameReader, order: Sequence[int]) -> None:
        self.reader = reader
        self.order = list(order)
        self.frames = np.empty((reader.n_frames, reader.rows, reader.cols, 3), np.uint8)
        self.busy_s = 0.0
        self._ready = np.zeros(reader.n_frames, bool)
        self._error: BaseException | None = None
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cine-decode", daemon=True)

    def __enter__(self) -> _BackgroundDecoder:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def wait_for(self, indices: np.ndarray, sink: dict[str, float]) -> None:
        """Blocks until every frame in ``indices`` is decoded; the wait goes to
        ``sink["decode_wait_s"]``. Raises the decoding thread's error if it failed."""
        with _stage(sink, "decode_wait_s"), self._changed:
            self._changed.wait_for(lambda: self._error is not None or self._ready[indices].all())
            if self._error is not None:
                raise self._error

    def _run(self) -> None:
        try:
            for index in self.order:
                if self._stop.is_set():
                    return
                started = time.perf_counter()
                self.frames[index] = self.reader.decode(index)
                self.busy_s += time.perf_counter() - started
                with self._changed:
                    self._ready[index] = True
                    self._changed.notify_all()
        except BaseException as exc:  # handed to the waiting thread, which raises it
            with self._changed:
                self._error = exc
                self._changed.notify_all()
