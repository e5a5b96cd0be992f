"""A B-mode export as the node's networks will see it: the EchoNet-layout videos written for
training go through the node's own preprocessing (``inference.preprocess``: the fan found from
its pixels, everything outside it zeroed, cropped to the fan, padded square, area-resized to
112) and, for JPEG-exporting styles, through the JPEG round trip the DICOM loop would take.

Why: a network trained on the whole export squared to 112 (text, ECG strip and margins
included) sees a small heart in a large frame, while the node feeds it a fan that fills the
grid. Training on the node's own view removes that gap, fan-finding errors included.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ...preprocess import GRID_SIZE_PX, PreprocessParams, SectorShaper, SectorTransform
from ...types import Cine

# only the fan geometry is used; the normalisation of the shaper is never applied here
_NEUTRAL = PreprocessParams(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), size_px=GRID_SIZE_PX)


@dataclass(frozen=True)
class GridPoints:
    """Maps native (column, row) pixel-centre points to the 112 grid, as ``SquareResize``
    does for the classic generator, so ``echonet.tracing_rows`` works unchanged."""

    transform: SectorTransform

    def points(self, colrow: np.ndarray) -> np.ndarray:
        return self.transform.points_to_grid(colrow)


def jpeg_round_trip(rgb: np.ndarray, quality: int) -> np.ndarray:
    """Each frame encoded and decoded as baseline JPEG at ``quality`` (the artefacts the DICOM
    export of a JPEG-encoding style carries)."""
    out = np.empty_like(rgb)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    for i, frame in enumerate(rgb):
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise RuntimeError("OpenCV could not encode a JPEG frame")
        out[i] = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return out


def network_view(rgb: np.ndarray, frame_time_ms: float) -> tuple[np.ndarray, GridPoints]:
    """(n, rows, cols, 3) uint8 export -> (n, 112, 112, 3) uint8 fan frames and the point map.
    Raises ``inference.preprocess.PreprocessError`` when the node would find no fan."""
    cine = Cine(
        frames=rgb,
        frame_time_ms=frame_time_ms,
        frame_time_source="phantom",
        spacing_cm=None,
        tissue_region=None,
        heart_rate_bpm=None,
        sop_instance_uid="",
    )
    shaper = SectorShaper.fit(cine, _NEUTRAL)
    keep = shaper.fan_mask[..., None].astype(np.uint8)
    small = np.stack([shaper.transform.image_to_grid(frame * keep) for frame in rgb])
    return small, GridPoints(shaper.transform)
