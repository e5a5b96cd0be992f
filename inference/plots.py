"""Small plots drawn with OpenCV, so the node needs no plotting library: Bland-Altman."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from inference.evaluation import agreement

WIDTH_PX, HEIGHT_PX, MARGIN_PX = 900, 560, 70
COLOURS_BGR = ((180, 90, 20), (40, 130, 230), (60, 160, 60))


def bland_altman_png(
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    path: Path,
    title: str = "Bland-Altman: EF measured - true (%)",
) -> Path:
    """One panel, one colour per (label, measured, true) series: difference against mean, with
    each series' bias and 95 % limits of agreement."""
    canvas = np.full((HEIGHT_PX, WIDTH_PX, 3), 255, np.uint8)
    points = []
    for label, measured, true in series:
        pairs = [(m, t) for m, t in zip(measured, true, strict=True) if m is not None]
        if pairs:
            m = np.array([p[0] for p in pairs], float)
            t = np.array([p[1] for p in pairs], float)
            points.append((label, (m + t) / 2, m - t, agreement(m, t)))
    if not points:
        raise ValueError("nothing to plot")
    xs = np.concatenate([p[1] for p in points])
    ys = np.concatenate(
        [p[2] for p in points] + [np.array(p[3].limits_of_agreement) for p in points]
    )
    x_lo, x_hi = float(xs.min()) - 2, float(xs.max()) + 2
    y_span = max(5.0, float(np.abs(ys).max()) * 1.15)

    def to_px(x: float, y: float) -> tuple[int, int]:
        px = MARGIN_PX + (x - x_lo) / (x_hi - x_lo) * (WIDTH_PX - 2 * MARGIN_PX)
        py = HEIGHT_PX / 2 - y / y_span * (HEIGHT_PX / 2 - MARGIN_PX)
        return round(px), round(py)

    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.rectangle(
        canvas, (MARGIN_PX, MARGIN_PX), (WIDTH_PX - MARGIN_PX, HEIGHT_PX - MARGIN_PX), (0, 0, 0), 1
    )
    cv2.line(canvas, to_px(x_lo, 0), to_px(x_hi, 0), (150, 150, 150), 1)
    for tick in np.linspace(x_lo, x_hi, 6):
        x, y = to_px(float(tick), -y_span)
        cv2.putText(canvas, f"{tick:.0f}", (x - 10, y + 20), font, 0.45, (0, 0, 0), 1)
    for tick in np.linspace(-y_span, y_span, 5):
        x, y = to_px(x_lo, float(tick))
        cv2.putText(canvas, f"{tick:+.1f}", (x - 62, y + 4), font, 0.45, (0, 0, 0), 1)
    for k, (label, mx, dy, stats) in enumerate(points):
        colour = COLOURS_BGR[k % len(COLOURS_BGR)]
        for x, y in zip(mx, dy, strict=True):
            cv2.circle(canvas, to_px(float(x), float(y)), 4, colour, -1, cv2.LINE_AA)
        for level, style in ((stats.bias, 2), *((v, 1) for v in stats.limits_of_agreement)):
            cv2.line(canvas, to_px(x_lo, level), to_px(x_hi, level), colour, style, cv2.LINE_AA)
        low, high = stats.limits_of_agreement
        legend = f"{label}: bias {stats.bias:+.2f}, LoA {low:+.2f} to {high:+.2f}, n={stats.n}"
        cv2.putText(
            canvas, legend, (MARGIN_PX, 22 + 18 * (k + 1)), font, 0.5, colour, 1, cv2.LINE_AA
        )
    cv2.putText(canvas, title, (MARGIN_PX, 20), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(
        canvas,
        "mean of measured and true EF (%)",
        (WIDTH_PX // 2 - 140, HEIGHT_PX - 20),
        font,
        0.5,
        (0, 0, 0),
        1,
        cv2.LINE_AA,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), canvas):
        raise OSError(f"cannot write {path}")
    return path
