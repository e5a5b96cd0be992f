"""Burned-in annotations outside the fan, as scanners write them: patient and machine text,
a depth scale, the orientation marker and the ECG with a cursor at the displayed frame.

Real exports carry these pixels, so the decoding/preprocessing code must cope with them; they
are kept strictly outside the fan so the LV truth is never covered.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .geometry import Sector

_FONT = cv2.FONT_HERSHEY_SIMPLEX
TEXT_RGB = (225, 225, 225)
ECG_RGB = (40, 220, 60)
CURSOR_RGB = (250, 230, 60)
MARKER_RGB = (90, 170, 255)


@dataclass(frozen=True)
class Overlay:
    image: np.ndarray  # (rows, cols, 3) uint8, exactly zero inside the fan
    cursor_cols: np.ndarray  # (n_frames,) ECG cursor column per frame
    ecg_rows: tuple[int, int]  # top and bottom of the ECG strip


def _text_block(img: np.ndarray, lines: list[str], x: int, y0: int, scale: float, right: bool):
    step = round(float(26 * scale / 0.5 * 0.75))
    for i, line in enumerate(lines):
        (w, _h), _ = cv2.getTextSize(line, _FONT, scale, 1)
        xx = x - w if right else x
        cv2.putText(img, line, (xx, y0 + i * step), _FONT, scale, TEXT_RGB, 1, cv2.LINE_AA)


def build_overlay(
    sector: Sector,
    left_lines: list[str],
    right_lines: list[str],
    ecg_mv: np.ndarray,
    n_frames: int,
) -> Overlay:
    """ecg_mv: the ECG sampled at n_samples >= n_frames evenly spaced instants of the loop."""
    rows, cols = sector.rows, sector.cols
    img = np.zeros((rows, cols, 3), np.uint8)
    scale = 0.42 * cols / 800.0
    _text_block(img, left_lines, 8, int(18 * cols / 800.0), scale, right=False)
    _text_block(img, right_lines, cols - 8, int(18 * cols / 800.0), scale, right=True)

    # depth scale just outside the fan's right edge: a tick per cm, a number every 5 cm
    ang = sector.half_angle_rad + np.deg2rad(1.5)
    d = np.array([np.sin(ang), np.cos(ang)])
    out = np.array([np.cos(ang), -np.sin(ang)])
    for depth in range(1, int(sector.depth_cm) + 1):
        p = np.array([sector.apex_col, sector.apex_row]) + d * depth / sector.spacing_cm
        q = p + out * (8 if depth % 5 == 0 else 4)
        cv2.line(img, tuple(int(v) for v in p), tuple(int(v) for v in q), TEXT_RGB, 1)
        if depth % 5 == 0:
            lab = p + out * 12 + np.array([0, 4])
            cv2.putText(
                img,
                str(depth),
                tuple(int(v) for v in lab),
                _FONT,
                scale * 0.85,
                TEXT_RGB,
                1,
                cv2.LINE_AA,
            )

    # orientation marker beside the apex, on the viewer's right as cardiology displays it
    mx, my = int(sector.apex_col + 0.06 * cols), max(6, int(sector.apex_row) - 10)
    cv2.circle(img, (mx, my), max(3, int(4 * cols / 800)), MARKER_RGB, -1, cv2.LINE_AA)

    # ECG strip under the fan
    fan_bottom = int(np.ceil(sector.apex_row + sector.height_px))
    top = min(rows - 24, fan_bottom + 8)
    bottom = rows - 4
    x0, x1 = int(0.06 * cols), int(0.94 * cols)
    v = np.asarray(ecg_mv, dtype=np.float64)
    xs = np.linspace(x0, x1, len(v))
    amp_px = 0.55 * (bottom - top)
    base = bottom - 0.3 * (bottom - top)
    ys = base - v * amp_px
    pts = np.round(np.stack([xs, ys], 1) * 16).astype(np.int32)
    cv2.polylines(img, [pts], False, ECG_RGB, 1, cv2.LINE_AA, 4)
    img[sector.mask()] = 0
    cursor = np.round(np.linspace(x0, x1, n_frames)).astype(int)
    return Overlay(image=img, cursor_cols=cursor, ecg_rows=(top, bottom))


def compose(frame_grey: np.ndarray, overlay: Overlay, index: int) -> np.ndarray:
    """RGB frame: the fan (zero outside) merged with the annotations (zero inside)."""
    out = cv2.max(overlay.image, cv2.cvtColor(frame_grey, cv2.COLOR_GRAY2RGB))
    x = int(overlay.cursor_cols[index])
    top, bottom = overlay.ecg_rows
    out[top:bottom, max(0, x - 1) : x + 1] = CURSOR_RGB
    return out


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """Luma of an annotated frame, for MONOCHROME2 exports."""
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
