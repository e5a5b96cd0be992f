"""The overlay branch of a loop's objects: every frame rendered once (``overlay``), encoded into
the WebM video on the calling thread and into the secondary capture's JPEG frames on a thread of
its own, frame by frame.

Why streamed and split this way: the whole rendered loop (200 MB for 139 frames of 800 x 600)
is never made, only ``BUFFERS`` frame buffers that go round; and the three costs (drawing and
VP8 in OpenCV / libvpx, JPEG in libjpeg through a file, see ``secondary_capture``) all run
without the GIL, so the video, the JPEG frames and the DICOM datasets built meanwhile by
``outputs`` use whatever cores are free instead of queueing for one.
"""

from __future__ import annotations

import queue
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reporting.overlay import OverlayVideo, render_overlay_frame
from reporting.secondary_capture import JpegFrames, JpegSpool

# frames in flight between the renderer and the JPEG thread (each rows x cols x 3 bytes)
BUFFERS = 3


@dataclass(frozen=True)
class OverlayOutput:
    """What the branch made: the video's path, the SC's JPEG frames, and seconds: ``video_s``
    the rendering and the video (with any wait for a free buffer), ``jpeg_s`` the JPEG thread's
    work. The two overlap in time."""

    video_path: Path
    jpeg: JpegFrames
    video_s: float
    jpeg_s: float


def render_video_and_jpeg(
    frames_rgb: np.ndarray,
    masks: np.ndarray,
    video_path: str | Path,
    frame_time_ms: float | None,
    *,
    ed_frames: tuple[int, ...] = (),
    es_frames: tuple[int, ...] = (),
    demo_models: bool = False,
) -> OverlayOutput:
    """Renders each frame of ``frames_rgb`` (n, rows, cols, 3 uint8) with its mask (n, rows,
    cols) as ``overlay.render_overlay_frames`` does, writes the WebM to ``video_path`` and
    returns it with the frames JPEG-encoded for the SC."""
    frames, masks = np.asarray(frames_rgb), np.asarray(masks)
    if frames.ndim != 4 or frames.shape[0] < 1 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (frames, rows, cols, 3) uint8, got {frames.shape}")
    if masks.shape != frames.shape[:3]:
        raise ValueError(f"masks {masks.shape} do not match the frames {frames.shape[:3]}")
    rows, cols = frames.shape[1:3]
    free: queue.SimpleQueue[np.ndarray] = queue.SimpleQueue()
    for _ in range(BUFFERS):
        free.put(np.empty((rows, cols, 3), np.uint8))
    ed, es = set(ed_frames), set(es_frames)
    jpeg = _JpegWorker(free)
    started = time.perf_counter()
    # leaving the pool waits for every JPEG task (an error included) before the spool closes
    with JpegSpool() as spool, ThreadPoolExecutor(1, thread_name_prefix="sc-jpeg") as pool:
        pending: list[Future[None]] = []
        with OverlayVideo(video_path, frame_time_ms, rows, cols) as video:
            for i in range(frames.shape[0]):
                buffer = free.get()  # waits while the JPEG thread holds every buffer
                render_overlay_frame(
                    buffer, frames[i], masks[i], ed=i in ed, es=i in es, demo_models=demo_models
                )
                video.write(buffer)
                pending.append(pool.submit(jpeg.encode, spool, buffer))
        video_s = time.perf_counter() - started
        for future in pending:
            future.result()  # a JPEG error, if any, is raised here
        encoded = spool.frames()
    return OverlayOutput(Path(video_path), encoded, video_s, jpeg.busy_s)


class _JpegWorker:
    """Encodes on the pool's one thread (so in order) and hands each buffer back."""

    def __init__(self, free: queue.SimpleQueue[np.ndarray]) -> None:
        self._free = free
        self.busy_s = 0.0

    def encode(self, spool: JpegSpool, buffer: np.ndarray) -> None:
        started = time.perf_counter()
        try:
            spool.add(buffer)
        finally:
            self._free.put(buffer)
            self.busy_s += time.perf_counter() - started
