"""The loop with the LV contour drawn on it: frames for the review page's video, the PACS
secondary capture and the PDF's key frames.

The contour is the outline of the very mask that was measured (and written to the SEG), so
what a reviewer sees is what the numbers rest on. End-diastole and end-systole frames of the
measured beats are marked, and the demo label is burned into every frame when the networks are
the demo ones (ASCII: OpenCV's Hershey fonts have no em dash).

The browser video is WebM with VP8: royalty-free and played by Chromium's ``<video>`` (MPEG-4
Part 2 plays in no browser, and no H.264 encoder is installed). It is encoded by libvpx through
PyAV, which lets the encoder be configured: OpenCV's ``VideoWriter`` gives libvpx no options, and
its defaults ("good" deadline, a bit rate of about 24 Mbit/s, automatic encoder threads that spin
against each other on a busy 2-core machine) took 5 to 16 s for one 48-frame loop. Here libvpx
runs in "realtime" mode on one thread at constant quality (``VP8_OPTIONS``): under 0.2 s of CPU
for the same loop, a third smaller, and slightly closer to the rendered frames (PSNR 35.4 dB
against 35.1 dB). ``write_overlay_video`` checks the file starts with the EBML magic and names
the ``webm`` doc type, so a silently empty or foreign file never reaches the page.

Writing a loop is streamed (``render_overlay_frame`` and ``OverlayVideo``): a frame is rendered
into a reused buffer, converted and encoded, and a later frame goes into the same buffer, so no
copy of the whole loop is made (for a 139-frame 800 x 600 loop that copy was 200 MB of fresh
pages, 0.05 to 0.5 s of CPU depending on the machine's load). The conversion to the encoder's
YUV 4:2:0 (BT.601, limited range, what FFmpeg's converter produced before) is OpenCV's: luma
by ``cvtColor``, chroma from the 2 x 2 mean of each block (OpenCV's own I420 conversion takes
one pixel of four, which frays the contour's colour); under 1 ms a frame where FFmpeg's
converter took 2 to 4 ms, and no further from the rendered frames (converted and back, PSNR
37.5 dB against FFmpeg's 37.4 dB on a phantom loop).
"""

from __future__ import annotations

import contextlib
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import cv2
import numpy as np

from reporting.errors import ReportingError
from reporting.types import DEMO_LABEL_ASCII

CONTOUR_RGB = (255, 214, 0)  # the SEG's recommended display colour too
ED_RGB = (80, 200, 255)
ES_RGB = (255, 110, 110)
TEXT_RGB = (255, 255, 255)
BANNER_RGB = (150, 0, 0)
BANNER_WIDTH_FRACTION = 0.5
WEBM_MEDIA_TYPE = "video/webm"
EBML_MAGIC = b"\x1a\x45\xdf\xa3"
DEFAULT_FRAME_TIME_MS = 1000.0 / 30.0  # when the header gives no timing
# libvpx (FFmpeg's option names): realtime mode at its fastest speed (16: PSNR 35.4 dB against
# the rendered frames, as at 8, in half the time), one thread (automatic threading spins on a
# loaded small machine), constant quality 10 capped at 8 Mbit/s (crf needs a cap in VP8);
# static-thresh 1 skips the search for blocks that did not change (the black outside the fan):
# 14 % less encoder CPU on a 139-frame 800 x 600 loop, same PSNR to 0.01 dB, size within 0.2 %
VP8_OPTIONS = {
    "deadline": "realtime",
    "cpu-used": "16",
    "threads": "1",
    "crf": "10",
    "b": "8M",
    "static-thresh": "1",
}
_FONT = cv2.FONT_HERSHEY_SIMPLEX


class RenderingError(ReportingError, RuntimeError):
    """The video could not be encoded (no encoder, or it wrote nothing usable)."""


def contour_thickness_px(cols: int) -> int:
    return max(1, round(cols / 320))


def render_overlay_frames(
    frames_rgb: np.ndarray,
    masks: np.ndarray,
    *,
    ed_frames: tuple[int, ...] = (),
    es_frames: tuple[int, ...] = (),
    demo_models: bool = False,
) -> np.ndarray:
    """(frames, rows, cols, 3) uint8 RGB with the LV outline of each frame's mask drawn on it;
    ED / ES frames (0-based) labelled; the demo banner on every frame when ``demo_models``.
    A copy of the whole loop: ``render_overlay_frame`` draws the same frames one at a time."""
    frames, masks = _checked(frames_rgb, masks)
    out = frames.copy()
    ed, es = set(ed_frames), set(es_frames)
    thickness = contour_thickness_px(frames.shape[2])
    for i in range(frames.shape[0]):
        _draw_overlay(out[i], masks[i], i in ed, i in es, demo_models, thickness)
    return out


def render_overlay_frame(
    out: np.ndarray,
    frame_rgb: np.ndarray,
    mask: np.ndarray,
    *,
    ed: bool = False,
    es: bool = False,
    demo_models: bool = False,
) -> None:
    """One frame of ``render_overlay_frames``, pixel for pixel, drawn into ``out`` (rows, cols,
    3 uint8, which may be reused from frame to frame): the frame, its mask's outline, the ED /
    ES label when ``ed`` / ``es``, the demo banner when ``demo_models``."""
    if out.shape != frame_rgb.shape or mask.shape != frame_rgb.shape[:2]:
        raise ValueError(f"frame {frame_rgb.shape}, mask {mask.shape}, out {out.shape} differ")
    np.copyto(out, frame_rgb)
    _draw_overlay(out, mask, ed, es, demo_models, contour_thickness_px(out.shape[1]))


def _checked(frames_rgb: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    frames = np.asarray(frames_rgb)
    masks = np.asarray(masks)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (frames, rows, cols, 3) uint8, got {frames.shape}")
    if masks.shape != frames.shape[:3]:
        raise ValueError(f"masks {masks.shape} do not match the frames {frames.shape[:3]}")
    return frames, masks


def _draw_overlay(
    frame: np.ndarray, mask: np.ndarray, ed: bool, es: bool, demo: bool, thickness: int
) -> None:
    """One frame's overlay, in place: contour, ED / ES label, demo banner."""
    draw_contour(frame, mask, CONTOUR_RGB, thickness)
    if ed:
        _corner_label(frame, "ED", ED_RGB)
    if es:
        _corner_label(frame, "ES", ES_RGB)
    if demo:
        burn_in_banner(frame, DEMO_LABEL_ASCII)


def draw_contour(
    frame_rgb: np.ndarray, mask: np.ndarray, rgb: tuple[int, int, int], px: int
) -> None:
    """Draws the outer outline(s) of ``mask`` onto the frame, in place.

    The outlines are searched in the mask's bounding box with a one-pixel margin (clipped at
    the frame's edge) and moved back by the box's offset: the same outlines, point for point,
    as a search of the whole frame, in about a fifth of the time."""
    box = _bounding_box(mask)
    if box is None:
        return
    (r0, r1), (c0, c1) = box
    crop = np.ascontiguousarray(mask[r0:r1, c0:c1], dtype=np.uint8)
    contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE, offset=(c0, r0))
    if contours:
        cv2.drawContours(frame_rgb, contours, -1, rgb, px, lineType=cv2.LINE_AA)


def _bounding_box(mask: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """((first row, end row), (first col, end col)) of the non-zero pixels grown by one pixel
    on each side within the mask; None for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    r0, r1 = max(int(rows[0]) - 1, 0), min(int(rows[-1]) + 2, mask.shape[0])
    cols = np.flatnonzero(mask[r0:r1].any(axis=0))
    c0, c1 = max(int(cols[0]) - 1, 0), min(int(cols[-1]) + 2, mask.shape[1])
    return (r0, r1), (c0, c1)


def burn_in_banner(frame_rgb: np.ndarray, text: str) -> None:
    """The label in white on a dark red box at the top centre of the frame, in place.

    The box takes the middle of the top edge only (at most ``BANNER_WIDTH_FRACTION`` of the
    width, the text split into two lines at " - "), so the scanner's own burned-in patient and
    acquisition text in the top corners stays readable."""
    rows, cols = frame_rgb.shape[:2]
    lines = [part.strip() for part in text.split(" - ", 1)]
    max_width = int(cols * BANNER_WIDTH_FRACTION)
    scale, thick = min(
        _fit_text(line, max_width, max_height_px=max(10, rows // 30)) for line in lines
    )
    sizes = [cv2.getTextSize(line, _FONT, scale, thick) for line in lines]
    line_h = max(h + base for (_, h), base in sizes)
    pad = max(2, line_h // 4)
    box_w = max(w for (w, _), _ in sizes) + 2 * pad
    x0 = (cols - box_w) // 2
    cv2.rectangle(
        frame_rgb, (x0, 0), (x0 + box_w, len(lines) * (line_h + pad) + pad), BANNER_RGB, -1
    )
    for i, (line, ((w, h), _)) in enumerate(zip(lines, sizes, strict=True)):
        org = ((cols - w) // 2, pad + i * (line_h + pad) + h)
        cv2.putText(frame_rgb, line, org, _FONT, scale, TEXT_RGB, thick, cv2.LINE_AA)


def _corner_label(frame: np.ndarray, text: str, rgb: tuple[int, int, int]) -> None:
    """Outlined text in the bottom-left corner, in place."""
    rows, cols = frame.shape[:2]
    scale, thick = _fit_text(text, cols // 8, max_height_px=max(14, rows // 18))
    _, base = cv2.getTextSize(text, _FONT, scale, thick)
    margin = max(4, rows // 60)
    org = (margin, rows - margin - base)
    cv2.putText(frame, text, org, _FONT, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.putText(frame, text, org, _FONT, scale, rgb, thick, cv2.LINE_AA)


def _fit_text(text: str, max_width_px: int, max_height_px: int) -> tuple[float, int]:
    """The largest Hershey scale (and stroke) whose text fits both limits."""
    (w, h), _ = cv2.getTextSize(text, _FONT, 1.0, 1)
    scale = max(0.3, min(max_width_px / max(w, 1), max_height_px / max(h, 1)))
    return scale, max(1, round(scale * 1.5))


def write_overlay_video(
    frames_rgb: np.ndarray, out_path: str | Path, frame_time_ms: float | None
) -> Path:
    """Encodes rendered frames as WebM (VP8) at the loop's own frame rate; returns the path.
    Raises ``RenderingError`` when the encoder is missing or the output is not WebM."""
    frames = np.asarray(frames_rgb)
    if frames.ndim != 4 or frames.shape[0] < 1 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (frames, rows, cols, 3) uint8, got {frames.shape}")
    with OverlayVideo(out_path, frame_time_ms, frames.shape[1], frames.shape[2]) as video:
        for frame in frames:
            video.write(frame)
    return video.path


class OverlayVideo:
    """A WebM (VP8) file written one RGB frame at a time: ``with OverlayVideo(...) as video:
    video.write(frame)``. Leaving the block flushes the encoder and checks the file
    (``check_webm``); frames of odd size are padded by one black row / column (VP8 wants even
    sizes), not rescaled. Raises ``RenderingError`` when the encoder is missing or fails."""

    def __init__(
        self, out_path: str | Path, frame_time_ms: float | None, rows: int, cols: int
    ) -> None:
        path = Path(out_path)
        if path.suffix.lower() != ".webm":
            raise ValueError(f"the overlay video is WebM: name it *.webm, not {path.name}")
        if rows < 1 or cols < 1:
            raise ValueError(f"a video frame needs rows and columns, got {rows} x {cols}")
        self.path = path
        self.rows, self.cols = rows, cols
        step_ms = frame_time_ms if frame_time_ms and frame_time_ms > 0 else DEFAULT_FRAME_TIME_MS
        self._rate = Fraction(1000.0 / step_ms).limit_denominator(1001)
        self._canvas = np.zeros((rows + rows % 2, cols + cols % 2, 3), np.uint8)
        self._yuv = Yuv420Converter(*self._canvas.shape[:2])
        self._frames = 0
        self._container: av.container.OutputContainer | None = None
        self._stream: av.VideoStream | None = None

    def __enter__(self) -> OverlayVideo:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._container = av.open(str(self.path), "w", format="webm")
            stream = self._container.add_stream(
                "libvpx", rate=self._rate, options=dict(VP8_OPTIONS)
            )
            stream.width, stream.height = self._canvas.shape[1], self._canvas.shape[0]
            stream.pix_fmt = "yuv420p"
            self._stream = stream
        except (av.FFmpegError, ValueError) as exc:  # no encoder
            self._abandon()
            raise RenderingError(f"the VP8/WebM encoder failed: {exc}") from exc
        return self

    def write(self, frame_rgb: np.ndarray) -> None:
        """Encodes one (rows, cols, 3) uint8 RGB frame; the frame is not kept."""
        if self._container is None or self._stream is None:
            raise RuntimeError("OverlayVideo.write outside its with block")
        if frame_rgb.shape != (self.rows, self.cols, 3) or frame_rgb.dtype != np.uint8:
            raise ValueError(
                f"frame {frame_rgb.shape} {frame_rgb.dtype}: want ({self.rows}, {self.cols}, 3)"
                " uint8"
            )
        padded = self._canvas.shape[:2] != frame_rgb.shape[:2]
        if padded:
            self._canvas[: self.rows, : self.cols] = frame_rgb
        rgb = self._canvas if padded else np.ascontiguousarray(frame_rgb)
        picture = av.VideoFrame.from_ndarray(self._yuv.convert(rgb), format="yuv420p")
        picture.pts, picture.time_base = self._frames, 1 / self._rate
        try:
            self._container.mux(self._stream.encode(picture))
        except (av.FFmpegError, ValueError) as exc:  # the encoder refused the frame
            self._abandon()
            raise RenderingError(f"the VP8/WebM encoder failed: {exc}") from exc
        self._frames += 1

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self._abandon()
            return
        if self._frames == 0:
            self._abandon()
            raise ValueError("the overlay video needs at least one frame")
        container, stream = self._container, self._stream
        assert container is not None and stream is not None
        try:
            container.mux(stream.encode(None))  # flush the encoder
            container.close()
        except (av.FFmpegError, ValueError) as exc:
            self._abandon()
            raise RenderingError(f"the VP8/WebM encoder failed: {exc}") from exc
        finally:
            self._container = self._stream = None
        check_webm(self.path)

    def _abandon(self) -> None:
        """Closes the container after an error; its own error would hide the first one."""
        container, self._container, self._stream = self._container, None, None
        if container is not None:
            with contextlib.suppress(av.FFmpegError, ValueError):
                container.close()


class Yuv420Converter:
    """RGB to planar YUV 4:2:0 as the encoder takes it (BT.601, limited range), into one
    reused buffer: luma from OpenCV's I420 conversion; chroma from the 2 x 2 mean of each block,
    converted by OpenCV's full-range YCrCb and a table to the limited range (within one level
    of the exact value, on 0.4 % of the samples of a phantom loop)."""

    # full-range chroma (JPEG's) to limited range (video's): 128 + (c - 128) * 224 / 255
    _LIMITED_CHROMA = np.clip(np.round(128 + (np.arange(256) - 128) * 224 / 255), 0, 255).astype(
        np.uint8
    )

    def __init__(self, rows: int, cols: int) -> None:
        if rows % 2 or cols % 2:
            raise ValueError(f"4:2:0 wants even sizes, got {rows} x {cols}")
        self.rows, self.cols = rows, cols
        self._out = np.empty((rows * 3 // 2, cols), np.uint8)
        self._half = np.empty((rows // 2, cols // 2, 3), np.uint8)

    def convert(self, rgb: np.ndarray) -> np.ndarray:
        """(rows * 3 / 2, cols) uint8: the Y plane, then Cb and Cr; valid until the next call."""
        rows, cols = self.rows, self.cols
        cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420, dst=self._out)  # its Y; chroma replaced
        cv2.resize(rgb, (cols // 2, rows // 2), dst=self._half, interpolation=cv2.INTER_AREA)
        ycrcb = cv2.LUT(cv2.cvtColor(self._half, cv2.COLOR_RGB2YCrCb), self._LIMITED_CHROMA)
        planes = self._out[rows:].reshape(-1)  # Cb then Cr, each (rows / 2) x (cols / 2)
        size = (rows // 2) * (cols // 2)
        planes[:size] = ycrcb[..., 2].reshape(-1)
        planes[size:] = ycrcb[..., 1].reshape(-1)
        return self._out


def check_webm(path: str | Path) -> None:
    """Raises ``RenderingError`` unless the file is an EBML (Matroska) file of doc type webm."""
    file = Path(path)
    head = b""
    if file.is_file():
        with file.open("rb") as stream:
            head = stream.read(64)
    if not head.startswith(EBML_MAGIC) or b"webm" not in head:
        raise RenderingError(f"{path} is not a WebM file (encoder wrote {len(head)} header bytes)")
