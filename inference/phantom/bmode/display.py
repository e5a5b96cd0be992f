"""What a lab's export looks like around and on top of the echo: grey map, tint, burned-in
text, ECG trace, depth markers and a vendor logo, placed as the style says.

Everything drawn stays outside the fan (the truth is never covered), as on real exports where
the annotations sit in the black margin.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..geometry import Sector

_FONT = cv2.FONT_HERSHEY_SIMPLEX
TINTS = {  # RGB gain at full brightness; darker greys keep the same hue
    "none": (1.0, 1.0, 1.0),
    "sepia": (1.0, 0.86, 0.66),
    "warm": (1.0, 0.93, 0.82),
    "green": (0.82, 1.0, 0.86),
    "cool": (0.9, 0.96, 1.0),
    "blue": (0.72, 0.85, 1.0),
    "violet": (0.9, 0.8, 1.0),
}
TEXT_COLOURS = ((225, 225, 225), (240, 230, 120), (150, 220, 250), (200, 200, 200))
LOGOS = ("EchoLab", "SONOVIEW", "CardioScan", "PHANTOM")


def grey_lut(name: str) -> np.ndarray:
    """256-entry uint8 map from compressed level to displayed grey."""
    x = np.linspace(0.0, 1.0, 256)
    if name == "linear":
        y = x
    elif name == "gamma_soft":
        y = x**0.8
    elif name == "gamma_hard":
        y = x**1.4
    elif name == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-8.0 * (x - 0.5)))
        y = (s - s[0]) / (s[-1] - s[0])
    elif name == "log_knee":  # lifts the dark levels, flattens the bright ones
        y = np.log1p(6.0 * x) / np.log1p(6.0)
    elif name == "inverse_s":
        y = 0.5 + 0.5 * np.sign(2 * x - 1) * np.abs(2 * x - 1) ** 0.55
    else:
        raise ValueError(f"unknown grey map {name!r}")
    return np.round(255.0 * y).astype(np.uint8)


def tint_lut(name: str) -> np.ndarray:
    """(256, 3) uint8 grey -> RGB."""
    if name not in TINTS:
        raise ValueError(f"unknown tint {name!r}")
    g = np.arange(256, dtype=np.float64)[:, None]
    return np.round(g * np.array(TINTS[name])[None, :]).astype(np.uint8)


@dataclass(frozen=True)
class StyledOverlay:
    image: np.ndarray  # (rows, cols, 3) uint8, zero inside the fan
    cursor_cols: np.ndarray  # per frame; empty when there is no ECG
    ecg_rows: tuple[int, int]
    cursor_rgb: tuple[int, int, int]


def build_styled_overlay(
    sector: Sector,
    rng: np.random.Generator,
    text_left: list[str],
    text_right: list[str],
    corners: str,
    ecg_where: str,
    ecg_mv: np.ndarray,
    n_frames: int,
    logo: bool,
) -> StyledOverlay:
    rows, cols = sector.rows, sector.cols
    img = np.zeros((rows, cols, 3), np.uint8)
    colour = TEXT_COLOURS[int(rng.integers(len(TEXT_COLOURS)))]
    scale = float(rng.uniform(0.35, 0.5)) * cols / 800.0
    step = max(8, round(30 * scale))
    y0 = max(step, round(float(rng.uniform(0.02, 0.05)) * rows) + step // 2)
    blocks = {
        "left": [(text_left, False)],
        "right": [(text_right, True)],
        "both": [(text_left, False), (text_right, True)],
    }[corners]
    for lines, right in blocks:
        for i, line in enumerate(lines):
            (w, _), _ = cv2.getTextSize(line, _FONT, scale, 1)
            x = cols - 6 - w if right else 6
            cv2.putText(img, line, (x, y0 + i * step), _FONT, scale, colour, 1, cv2.LINE_AA)

    # depth markers: dots (or ticks) each cm along one fan edge, just outside it
    side = 1.0 if rng.random() < 0.5 else -1.0
    ang = side * (sector.half_angle_rad + np.deg2rad(2.0))
    direction = np.array([np.sin(ang), np.cos(ang)])
    dot = rng.random() < 0.5
    for depth in range(1, int(sector.depth_cm) + 1):
        p = np.array([sector.apex_col, sector.apex_row]) + direction * depth / sector.spacing_cm
        if not (0 <= p[0] < cols and 0 <= p[1] < rows):
            continue
        c = (int(p[0]), int(p[1]))
        if dot:
            cv2.circle(img, c, 2 if depth % 5 else 3, colour, -1, cv2.LINE_AA)
        else:
            cv2.line(img, c, (c[0] + int(side * (8 if depth % 5 == 0 else 4)), c[1]), colour, 1)

    if logo:
        name = LOGOS[int(rng.integers(len(LOGOS)))]
        ls = scale * 1.2
        (w, h), _ = cv2.getTextSize(name, _FONT, ls, 2)
        x = 6 if rng.random() < 0.5 else cols - w - 10
        y = rows - 8 if ecg_where != "bottom" else int(rows * 0.5)
        cv2.rectangle(img, (x - 3, y - h - 5), (x + w + 3, y + 4), colour, 1)
        cv2.putText(img, name, (x, y), _FONT, ls, colour, 2, cv2.LINE_AA)

    cursor = np.zeros(0, int)
    top = bottom = 0
    if ecg_where != "none":
        strip = max(16, round(0.08 * rows))
        top, bottom = (rows - strip - 3, rows - 3) if ecg_where == "bottom" else (3, 3 + strip)
        x0, x1 = int(0.06 * cols), int(0.94 * cols)
        v = np.asarray(ecg_mv, dtype=np.float64)
        xs = np.linspace(x0, x1, len(v))
        ys = bottom - 0.3 * (bottom - top) - v * 0.55 * (bottom - top)
        pts = np.round(np.stack([xs, ys], 1) * 16).astype(np.int32)
        ecg_rgb = (40, 220, 60) if rng.random() < 0.7 else (240, 240, 240)
        cv2.polylines(img, [pts], False, ecg_rgb, 1, cv2.LINE_AA, 4)
        cursor = np.round(np.linspace(x0, x1, max(n_frames, 2))).astype(int)
    img[sector.mask()] = 0
    cursor_rgb = (250, 230, 60) if rng.random() < 0.6 else (255, 255, 255)
    return StyledOverlay(img, cursor, (top, bottom), cursor_rgb)


def compose_styled(
    grey: np.ndarray, tint: np.ndarray, overlay: StyledOverlay, index: int, out: np.ndarray
) -> np.ndarray:
    """RGB frame into out: tinted fan (grey is zero outside it) merged with the annotations
    (zero inside it), cursor on the ECG where there is no fan."""
    tinted = cv2.LUT(cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB), tint.reshape(256, 1, 3))
    cv2.max(overlay.image, tinted, dst=out)
    if len(overlay.cursor_cols):
        x = int(overlay.cursor_cols[index])
        top, bottom = overlay.ecg_rows
        lo = max(0, x - 1)
        band = out[top:bottom, lo : x + 1]
        band[grey[top:bottom, lo : x + 1] == 0] = overlay.cursor_rgb
    return out
