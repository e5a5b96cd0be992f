"""A picture of the simulator for the README: end-diastole and end-systole of one loop per
style family, as exported (tint and annotations included), truth outline on the ES frame.

Regenerate with `python -m inference.phantom.bmode.montage docs/phantom_bmode.png`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .export import exported_rgb, simulate_bmode
from .families import FAMILIES

TILE_W = 300


def _tile(rgb: np.ndarray, label: str, outline: np.ndarray | None) -> np.ndarray:
    img = rgb.copy()
    if outline is not None:
        contours, _ = cv2.findContours(
            outline.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
        )
        cv2.drawContours(img, contours, -1, (255, 60, 60), max(1, img.shape[1] // 300))
    h = round(img.shape[0] * TILE_W / img.shape[1])
    img = cv2.resize(img, (TILE_W, h), interpolation=cv2.INTER_AREA)
    tile = np.zeros((240, TILE_W, 3), np.uint8)
    tile[: min(240, h)] = img[:240]
    cv2.putText(tile, label, (4, 234), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 0), 1, cv2.LINE_AA)
    return tile


def montage(seed: int = 2) -> np.ndarray:
    rows = []
    for k, name in enumerate(FAMILIES):
        rng = np.random.default_rng([seed, k])
        b = simulate_bmode(rng, (name,))
        rgb = exported_rgb(b, rng, (["Adult TTE", "A4C"], ["HR", "Depth"]))
        beat = b.loop.beats[0]
        ed = _tile(rgb[beat.ed_frame], f"{name} ED {b.plan.phenotype}", None)
        es = _tile(
            rgb[beat.es_frame],
            f"ES, truth LV (EF {beat.ef_percent:.0f} %)",
            b.loop.masks[beat.es_frame],
        )
        rows.append(np.concatenate([ed, es], axis=1))
    left = rows[: (len(rows) + 1) // 2]
    right = rows[(len(rows) + 1) // 2 :]
    right += [np.zeros_like(rows[0])] * (len(left) - len(right))
    return np.concatenate([np.concatenate(left, 0), np.concatenate(right, 0)], axis=1)


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "docs/phantom_bmode.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    img = montage()
    # a 256-colour palette keeps the README picture small (grey ramps and a few tints)
    Image.fromarray(img).quantize(256, dither=Image.Dither.NONE).save(out, optimize=True)
    print(out, img.shape, out.stat().st_size, "bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
