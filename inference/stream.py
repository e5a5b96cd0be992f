"""Where the analysis gets its frames: decoded on a background thread while the calling thread
preprocesses and segments the ones already there, or from a loop decoded before.

Decoding a compressed loop is a large share of one study's time on a small CPU, and nothing
but the fan search needs every frame before work can start. The fan search looks at an evenly
spaced sample of at most ``MAX_STAT_FRAMES`` frames (``preprocess._active_blob``), so those are
decoded first; the fan found on exactly those frames is the fan ``preprocess_cine`` finds on
the whole loop. The remaining frames follow in order, and the segment stage
(``inference.analyze``) shapes and segments each batch as soon as its last frame lands, so the
overlapped result equals decoding first (the tests check it on every phantom encoding).

The decoding thread is a plain worker with one job: it stops at the next frame when the caller
fails or is interrupted, it is always joined when its ``with`` block ends (``analyse`` enters
it), and its ``DecodeError`` is raised again on the calling thread, so callers see one error
type wherever the corrupt frame is.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np
from pydicom.dataset import Dataset

from inference.decode import FrameReader
from inference.preprocess import MAX_STAT_FRAMES
from inference.types import Cine

DECODE_THREAD_NAME = "cine-decode"

LoopSource = str | Path | BinaryIO | Dataset | Cine


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


class FrameSource:
    """The frames of one loop as the analysis needs them: ``fan_sample`` (what the fan is fitted
    on), ``wait_for`` (block until given frames are there), ``frames``, then ``cine``. This
    base serves a loop decoded before (everything is there at once); ``BackgroundFrames``
    decodes while the caller works. ``busy_ms`` / ``wait_ms``: decoding time spent on the
    decoding thread, and the part of it the caller waited for."""

    streams = False  # True: frames arrive while the caller works (batch the segmentation)

    def __init__(self, cine: Cine) -> None:
        self._cine = cine
        self.frames = cine.frames
        self.busy_ms = 0.0
        self.wait_ms = 0.0

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    def fan_sample(self) -> Cine:
        """The frames the fan is fitted on (the whole loop when it is decoded already, which
        is exactly ``preprocess_cine``'s own choice)."""
        return self._cine

    def wait_for(self, indices: np.ndarray) -> None:
        """Every frame of a decoded loop is there."""

    def cine(self) -> Cine:
        return self._cine

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Nothing runs for a decoded loop."""


def open_frames(source: LoopSource) -> FrameSource:
    """A ``Cine`` as it is; anything else (path, file object, dataset) read and decoded on a
    background thread once the returned source's ``with`` block starts. Raises ``DecodeError``
    for an unreadable header."""
    if isinstance(source, Cine):
        return FrameSource(source)
    return BackgroundFrames(FrameReader(source), decode_order)


class BackgroundFrames(FrameSource):
    """Decodes the frames of ``order(n_frames)`` into ``frames`` on one thread. Leaving the
    ``with`` block (or ``close``) stops the thread at its next frame and joins it, whatever
    happened."""

    streams = True

    def __init__(
        self, reader: FrameReader, order: Callable[[int], Sequence[int]] = decode_order
    ) -> None:
        self.reader = reader
        n = reader.n_frames
        self.order = list(order(n))
        self.frames = np.empty((n, reader.rows, reader.cols, 3), np.uint8)
        self.busy_ms = 0.0
        self.wait_ms = 0.0
        self._ready = np.zeros(n, bool)
        self._error: BaseException | None = None
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=DECODE_THREAD_NAME, daemon=True)

    def __enter__(self) -> BackgroundFrames:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def fan_sample(self) -> Cine:
        sample = fan_sample_indices(self.n_frames)
        self.wait_for(sample)
        return dataclasses.replace(self.reader.header, frames=self.frames[sample])

    def wait_for(self, indices: np.ndarray) -> None:
        """Blocks until every frame in ``indices`` is decoded (the wait goes to ``wait_ms``).
        Raises the decoding thread's error if it failed."""
        started = time.perf_counter()
        try:
            with self._changed:
                self._changed.wait_for(
                    lambda: self._error is not None or self._ready[indices].all()
                )
                if self._error is not None:
                    raise self._error
        finally:
            self.wait_ms += (time.perf_counter() - started) * 1000.0

    def cine(self) -> Cine:
        self.wait_for(np.arange(self.n_frames))
        return self.reader.cine(self.frames)

    def _run(self) -> None:
        try:
            for index in self.order:
                if self._stop.is_set():
                    return
                started = time.perf_counter()
                self.frames[index] = self.reader.decode(index)
                self.busy_ms += (time.perf_counter() - started) * 1000.0
                with self._changed:
                    self._ready[index] = True
                    self._changed.notify_all()
        except BaseException as exc:  # handed to the waiting thread, which raises it
            with self._changed:
                self._error = exc
                self._changed.notify_all()
