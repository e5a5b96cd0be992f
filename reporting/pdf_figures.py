"""The report PDF's figures: the ED and ES key frames with the LV contour drawn, and the LV
area curve over the loop with the beats shaded and ED/ES marked. Kept apart from ``pdf``,
which lays out the page, because these draw pixels and vector graphics from the
measurements and know nothing of the report's text.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImage
from reportlab.graphics.shapes import Drawing, Line, Polygon, PolyLine, Rect, String
from reportlab.lib import colors
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.platypus import Image, Paragraph, Table, TableStyle

from inference.types import Measurements
from reporting.overlay import CONTOUR_RGB, contour_thickness_px, draw_contour

Styles = dict[str, ParagraphStyle]
_ED_COLOR = colors.Color(0.2, 0.5, 0.9)
_ES_COLOR = colors.Color(0.85, 0.2, 0.2)
_CURVE_COLOR = colors.Color(*(c / 255 for c in CONTOUR_RGB))


@dataclass(frozen=True)
class KeyFrame:
    label: str  # "End-diastole" / "End-systole"
    frame_index: int  # 0-based
    image_rgb: np.ndarray


def key_frames(
    frames_rgb: np.ndarray, masks: np.ndarray, measurements: Measurements
) -> list[KeyFrame]:
    """ED and ES of the first beat with both volumes (else the first beat), contour drawn."""
    beats = [b for b in measurements.beats if b.edv_ml is not None and b.esv_ml is not None]
    beats = beats or list(measurements.beats)
    if not beats:
        return []
    beat = beats[0]
    out = []
    for label, index in (("End-diastole", beat.ed_frame), ("End-systole", beat.es_frame)):
        image = np.array(frames_rgb[index], copy=True)
        draw_contour(image, masks[index], CONTOUR_RGB, contour_thickness_px(image.shape[1]))
        out.append(KeyFrame(label, int(index), image))
    return out


def key_frame_table(frames: list[KeyFrame], styles: Styles) -> Table:
    width = 70 * mm
    cells, captions = [], []
    for frame in frames:
        rows, cols = frame.image_rgb.shape[:2]
        buffer = io.BytesIO()
        PILImage.fromarray(frame.image_rgb).save(buffer, format="JPEG", quality=88)
        buffer.seek(0)
        cells.append(Image(buffer, width=width, height=width * rows / cols))
        captions.append(Paragraph(f"{frame.label}: frame {frame.frame_index + 1}", styles["small"]))
    table = Table([cells, captions], colWidths=[width + 3 * mm] * len(frames))
    table.setStyle(TableStyle([("ALIGN", (0, 0), (-1, -1), "CENTER")]))
    return table


def area_curve(m: Measurements, width: float = 178 * mm, height: float = 40 * mm) -> Drawing:
    """The per-frame LV area (cm² with spacing, else pixels) against time (or frame), beats
    shaded, ED marked with a down triangle and ES with an up triangle."""
    drawing = Drawing(width, height)
    area = np.asarray(m.lv_area_cm2 if m.lv_area_cm2 is not None else m.lv_area_px, float)
    n = len(area)
    if n < 2 or not np.isfinite(area).all() or area.max() <= 0:
        drawing.add(String(4, height / 2, "No LV area curve.", fontSize=9))
        return drawing
    left, bottom, right, top = 34.0, 18.0, width - 6.0, height - 6.0
    span = float(area.max() - area.min()) or float(area.max())
    lo, hi = max(0.0, float(area.min()) - 0.15 * span), float(area.max()) + 0.15 * span

    def x(i: float) -> float:
        return left + (right - left) * i / (n - 1)

    def y(v: float) -> float:
        return bottom + (top - bottom) * (v - lo) / (hi - lo)

    for beat in m.beats:
        end = beat.next_ed_frame if beat.next_ed_frame is not None else beat.es_frame
        drawing.add(
            Rect(x(beat.ed_frame), bottom, x(end) - x(beat.ed_frame), top - bottom,
                 fillColor=colors.Color(0.93, 0.95, 1.0), strokeColor=None)
        )  # fmt: skip
    drawing.add(Line(left, bottom, right, bottom, strokeColor=colors.black, strokeWidth=0.6))
    drawing.add(Line(left, bottom, left, top, strokeColor=colors.black, strokeWidth=0.6))
    unit = "cm²" if m.lv_area_cm2 is not None else "px"
    for value in (lo, (lo + hi) / 2, hi):
        drawing.add(String(2, y(value) - 3, f"{value:.0f}", fontSize=7))
    drawing.add(String(left + 4, top - 4, f"LV area ({unit})", fontSize=7))
    seconds = m.frame_time_ms is not None
    for k in range(5):
        i = (n - 1) * k / 4
        text = f"{i * m.frame_time_ms / 1000:.1f} s" if seconds else f"{int(i) + 1}"
        drawing.add(String(x(i) - 8, bottom - 10, text, fontSize=7))
    points = []
    for i, value in enumerate(area):
        points += [x(i), y(float(value))]
    drawing.add(PolyLine(points, strokeColor=_CURVE_COLOR.clone(alpha=1), strokeWidth=1.2))
    for frames, color, down in ((m.ed_frames, _ED_COLOR, True), (m.es_frames, _ES_COLOR, False)):
        for f in frames:
            px, py = x(f), y(float(area[f]))
            s = 3.5
            tip = py - s if down else py + s
            base = py + s if down else py - s
            drawing.add(
                Polygon([px - s, base, px + s, base, px, tip], fillColor=color, strokeColor=color)
            )
    return drawing


def curve_legend(m: Measurements) -> str:
    return (
        "Shaded: beats (end-diastole to the next end-diastole). "
        f"<font color='#{_hex(_ED_COLOR)}'>&#9660;</font> end-diastole, "
        f"<font color='#{_hex(_ES_COLOR)}'>&#9650;</font> end-systole "
        f"({len(m.beats)} beat{'s' if len(m.beats) != 1 else ''} measured)."
    )


def _hex(color: colors.Color) -> str:
    return "".join(f"{round(c * 255):02x}" for c in (color.red, color.green, color.blue))
