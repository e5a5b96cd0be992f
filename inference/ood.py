"""Is this loop like the loops the models learned from? An out-of-distribution signal.

A network asked about an image unlike its training data still answers, and the answer looks as
confident as any other. So each model set may ship a reference: robust statistics (median and
scaled MAD) of a few per-loop features over its training loops. A loop's distance is the root
mean square of its features' robust z-scores; in-distribution loops sit near 1, a different
scanner, texture or grey map far above. The features are what the networks see (the normalised
fan on the 112 grid) and what the segmentation made of it, so they are cheap (no extra network
pass) and do not depend on any one architecture.

The reference is written by ``echo-agent evaluate gate --write-reference`` from training-split
phantoms and stored beside the weights as ``gate_reference.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FEATURE_NAMES = (
    "fan_mean",  # mean normalised intensity in the fan
    "fan_sd",  # its spread (gain, dynamic range)
    "fan_p10",
    "fan_p90",
    "dark_fraction",  # share of the fan below the normalised value of black + 0.25 SD
    "gradient",  # mean |spatial gradient| over the fan SD: speckle size and sharpness
    "motion",  # mean |frame difference| over the fan SD: how much moves between frames
    "chroma",  # mean colour spread between channels: tints and colour overlays
    "lv_fraction",  # mean share of the fan the segmentation calls LV
    "lv_sureness",  # mean |2p - 1| over the fan: how decided the segmentation is
)
# how each feature reads in the out-of-distribution flag: a lab whose loops are all withheld
# needs to know whether it is the colour map, the grey map, the texture or the motion that
# differs before it asks for a model or reference that covers its scanner
FEATURE_WORDS = {
    "fan_mean": "overall brightness",
    "fan_sd": "contrast",
    "fan_p10": "the darkest grey levels (grey map or gain)",
    "fan_p90": "the brightest grey levels (grey map or gain)",
    "dark_fraction": "the share of dark pixels",
    "gradient": "speckle texture",
    "motion": "frame-to-frame change",
    "chroma": "colour (a tint or a colour overlay)",
    "lv_fraction": "the share of the sector the LV outline takes",
    "lv_sureness": "how decided the LV outline is",
}
REFERENCE_FILE_NAME = "gate_reference.json"
MIN_SCALE = 1e-3  # robust scale floor, so a feature constant in training still has a unit
SCALE_FRACTION_OF_MEDIAN = 0.05


@dataclass(frozen=True)
class OodReference:
    """Per-feature median and robust scale over a model set's training loops."""

    median: tuple[float, ...]
    scale: tuple[float, ...]
    n_loops: int
    source: str  # how the reference was made (command, data, seed)

    def __post_init__(self) -> None:
        if len(self.median) != len(FEATURE_NAMES) or len(self.scale) != len(FEATURE_NAMES):
            raise ValueError(f"an OOD reference needs {len(FEATURE_NAMES)} features")
        if min(self.scale) <= 0:
            raise ValueError("OOD reference scales must be positive")

    def to_json(self) -> dict[str, object]:
        return {
            "features": list(FEATURE_NAMES),
            "median": list(self.median),
            "scale": list(self.scale),
            "n_loops": self.n_loops,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: dict) -> OodReference:
        if list(data.get("features", [])) != list(FEATURE_NAMES):
            raise ValueError("the OOD reference was made for other features; rebuild it")
        return cls(
            median=tuple(float(v) for v in data["median"]),
            scale=tuple(float(v) for v in data["scale"]),
            n_loops=int(data["n_loops"]),
            source=str(data.get("source", "")),
        )


def load_reference(path: Path) -> OodReference | None:
    """The reference at ``path``, or None when the model set ships none."""
    if not path.is_file():
        return None
    try:
        return OodReference.from_json(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: unusable OOD reference: {exc}") from exc


def loop_features(
    network_input: np.ndarray, sector_mask: np.ndarray, lv_probability: np.ndarray
) -> np.ndarray:
    """The ``FEATURE_NAMES`` of one loop: ``network_input`` (frames, 3, S, S) normalised,
    ``sector_mask`` (S, S) bool, ``lv_probability`` (frames, S, S)."""
    x = np.asarray(network_input, np.float32)
    fan = np.asarray(sector_mask, bool)
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2:] != fan.shape:
        raise ValueError(f"expected (frames, 3, S, S) matching the fan, got {x.shape}")
    if not fan.any() or x.shape[0] == 0:
        return np.zeros(len(FEATURE_NAMES))
    grey = x.mean(axis=1)  # (frames, S, S)
    values = grey[:, fan]
    black = float(values.min())
    sd = float(values.std()) or 1.0
    gy, gx = np.gradient(grey, axis=(1, 2))
    gradient = float(np.hypot(gx, gy)[:, fan].mean()) / sd
    motion = float(np.abs(np.diff(grey, axis=0))[:, fan].mean()) / sd if len(grey) > 1 else 0.0
    chroma = float((np.abs(x[:, 0] - x[:, 1]) + np.abs(x[:, 1] - x[:, 2]))[:, fan].mean())
    p = np.asarray(lv_probability, np.float32)[:, fan]
    return np.array(
        [
            float(values.mean()),
            sd,
            float(np.percentile(values, 10)),
            float(np.percentile(values, 90)),
            float(np.mean(values < black + 0.25 * sd)),
            gradient,
            motion,
            chroma,
            float(np.mean(p > 0.5)),
            float(np.mean(np.abs(2.0 * p - 1.0))),
        ]
    )


def build_reference(features: np.ndarray, source: str) -> OodReference:
    """Median and robust scale of (loops, features) training-loop features."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[1] != len(FEATURE_NAMES) or f.shape[0] < 2:
        raise ValueError(f"need (loops >= 2, {len(FEATURE_NAMES)}) features, got {f.shape}")
    median = np.median(f, axis=0)
    mad = 1.4826 * np.median(np.abs(f - median), axis=0)
    scale = np.maximum(mad, np.maximum(SCALE_FRACTION_OF_MEDIAN * np.abs(median), MIN_SCALE))
    return OodReference(
        median=tuple(float(v) for v in median),
        scale=tuple(float(v) for v in scale),
        n_loops=int(f.shape[0]),
        source=source,
    )


def feature_z_scores(features: np.ndarray, reference: OodReference) -> np.ndarray:
    """Per-feature robust z-scores (for explaining a high distance)."""
    return (np.asarray(features, np.float64) - np.asarray(reference.median)) / np.asarray(
        reference.scale
    )


def furthest_feature(features: np.ndarray, reference: OodReference) -> str:
    """The name of the feature furthest from the training reference (largest |z|)."""
    z = feature_z_scores(features, reference)
    return FEATURE_NAMES[int(np.argmax(np.abs(z)))]


def ood_score(features: np.ndarray, reference: OodReference) -> float:
    """Root mean square robust z-score: about 1 for training-like loops."""
    z = feature_z_scores(features, reference)
    return float(np.sqrt(np.mean(z**2)))
