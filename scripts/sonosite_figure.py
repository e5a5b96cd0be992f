"""The README's picture of the demo models on pydicom's real SonoSite loop, from the outputs of
``echo-agent analyze`` (its secondary capture and measurements.json), so the caption's numbers
are the node's own and the picture can be remade whenever the shipped models change:

    LOOP=$(python -c 'from pydicom import examples; print(examples.get_path("ybr_color"))')
    echo-agent analyze "$LOOP" --out /tmp/sono
    python scripts/sonosite_figure.py /tmp/sono docs/sonosite_overlay.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom import dcmread

FRAMES_SHOWN = (5, 12, 19, 26)  # 0-based; labelled 1-based as on the review page
CAPTION_PX = 44
FONT_FILE = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
WITHHELD_NAMES = {
    "ef_disks_percent": "method of disks",
    "edv_ml": "EDV",
    "esv_ml": "ESV",
    "heart_rate_bpm": "heart rate",
}


def caption_lines(measurements: dict) -> tuple[str, str]:
    gate = measurements["gate"]
    ef = measurements.get("ef_percent")
    ef_text = "LVEF (AI regression) withheld" if ef is None else f"LVEF (AI regression) {ef:.1f} %"
    withheld = [
        label
        for key, label in WITHHELD_NAMES.items()
        if measurements["validity"].get(key, {}).get("state") != "measured"
    ]
    first = (
        "pydicom examples.ybr_color (SonoSite, real A4C, no ground truth) - node output, "
        "shipped DEMO models (trained on simulations only)"
    )
    second = f"LV found on {gate['lv_frames']}/{gate['n_frames']} frames; {ef_text}"
    if withheld:
        second += "; withheld: " + ", ".join(withheld)
    return first, second


def main(analyze_dir: Path, out_png: Path) -> None:
    ds = dcmread(analyze_dir / "overlay_sc.dcm")
    frames = ds.pixel_array  # pydicom gives YBR (the JPEG) as RGB
    measurements = json.loads((analyze_dir / "measurements.json").read_text())
    n, rows, cols = frames.shape[:3]
    try:
        font = ImageFont.truetype(FONT_FILE, 11)
    except OSError:
        font = ImageFont.load_default()
    canvas = Image.new("RGB", (cols * len(FRAMES_SHOWN), rows + CAPTION_PX), "black")
    draw = ImageDraw.Draw(canvas)
    for k, index in enumerate(FRAMES_SHOWN):
        canvas.paste(Image.fromarray(np.ascontiguousarray(frames[index])), (k * cols, 0))
        draw.text((k * cols + 6, rows - 18), f"frame {index + 1}/{n}", fill="yellow", font=font)
    for line, text in enumerate(caption_lines(measurements)):
        draw.text((6, rows + 6 + 18 * line), text, fill="white", font=font)
    canvas.save(out_png)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
