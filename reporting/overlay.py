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
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

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
# loaded small machine), constant quality 10 capped at 8 Mbit/s (crf needs a cap in VP8)
VP8_OPTIONS = {"deadline": "realtime", "cpu-used": "16", "threads": "1", "crf": "10", "b": "8M"}
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
    ED / ES frames (0-based) labelled; the demo banner on every frame when ``demo_models``."""
    frames = np.asarray(frames_rgb)
    masks = np.asarray(masks)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (frames, rows, cols, 3) uint8, got {frames.shape}")
    if masks.shape != frames.shape[:3]:
        raise ValueError(f"masks {masks.shape} do not match the frames {frames.shape[:3]}")
    out = frames.copy()
    cols = frames.shape[2]
    thickness = contour_thickness_px(cols)
    ed, es = set(ed_frames), set(es_frames)
    for i in range(frames.shape[0]):
        frame = out[i]
        draw_contour(frame, masks[i], CONTOUR_RGB, thickness)
        if i in ed:
            _corner_label(frame, "ED", ED_RGB)
        if i in es:
            _corner_label(frame, "ES", ES_RGB)
        if demo_models:
            burn_in_banner(frame, DEMO_LABEL_ASCII)
    return out


def draw_contour(
    frame_rgb: np.ndarray, mask: np.ndarray, rgb: tuple[int, int, int], px: int
) -> None:
    """Draws the outer outline(s) of ``mask`` onto the frame, in place."""
    contours, _ = cv2.findContours(
        np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
    )
    if contours:
        cv2.drawContours(frame_rgb, contours, -1, rgb, px, lineType=cv2.LINE_AA)


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
    path = Path(out_path)
    if path.suffix.lower() != ".webm":
        raise ValueError(f"the overlay video is WebM: name it *.webm, not {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fps = 1000.0 / (frame_time_ms if frame_time_ms and frame_time_ms > 0 else DEFAULT_FRAME_TIME_MS)
    rate = Fraction(fps).limit_denominator(1001)
    rows, cols = frames.shape[1:3]
    # VP8 wants even dimensions; pad by one black row/column rather than rescale
    even_rows, even_cols = rows + rows % 2, cols + cols % 2
    try:
        with av.open(str(path), "w", format="webm") as container:
            stream = container.add_stream("libvpx", rate=rate, options=dict(VP8_OPTIONS))
            stream.width, stream.height, stream.pix_fmt = even_cols, even_rows, "yuv420p"
            canvas = np.zeros((even_rows, even_cols, 3), np.uint8)
            for index, frame in enumerate(frames):
                canvas[:rows, :cols] = frame
                picture = av.VideoFrame.from_ndarray(canvas, format="rgb24")
                picture.pts, picture.time_base = index, 1 / rate
                container.mux(stream.encode(picture))
            container.mux(stream.encode(None))  # flush the encoder
    except (av.FFmpegError, ValueError) as exc:  # no encoder, or it refused the frames
        raise RenderingError(f"the VP8/WebM encoder failed: {exc}") from exc
    check_webm(path)
    return path


def check_webm(path: str | Path) -> None:
    """Raises ``RenderingError`` unless the file is an EBML (Matroska) file of doc type webm."""
    head = Path(path).read_bytes()[:64] if Path(path).is_file() else b""
    if not head.startswith(EBML_MAGIC) or b"webm" not in head:
        raise RenderingError(f"{path} is not a WebM file (encoder wrote {len(head)} header bytes)")
