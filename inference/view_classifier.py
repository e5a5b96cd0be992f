"""View classification for loops whose metadata names no view.

``ViewClassifier`` is the interface the A4C selector calls; anything with ``name`` and
``classify(frames) -> ViewPrediction`` fits (a real echo view network later). The one bundled
here is deliberately tiny: logistic regression on hand-made features of a downsampled mean and
temporal-spread image, trained on phantom loops (A4C against the parasternal long-axis
distractor). It knows phantoms, not patients; ``selection.view_classifier = "phantom"`` turns
it on, and its verdict is recorded as coming from this classifier.

Its weights (a few kB of JSON) ship in
``inference/weights/view_classifier/view_classifier_phantom.json`` and are rebuilt
deterministically with ``python -m inference.view_classifier OUT.json``; training renders
phantom studies, which takes minutes, too slow for first use.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from inference.errors import InferenceError

A4C_LABEL = "A4C"
OTHER_LABEL = "other"
PHANTOM_CLASSIFIER = "phantom"
PHANTOM_WEIGHTS = (
    Path(__file__).resolve().parent / "weights" / "view_classifier" / "view_classifier_phantom.json"
)
GRID = 12  # feature maps are GRID x GRID
TRAIN_SEED = 20260101


def to_grey(frames: np.ndarray) -> np.ndarray:
    """(n, rows, cols[, 3]) -> (n, rows, cols) uint8 luminance."""
    if frames.ndim == 4:
        weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return np.clip(frames.astype(np.float32) @ weights, 0, 255).astype(np.uint8)
    return frames.astype(np.uint8, copy=False)


class ViewClassifierError(InferenceError, ValueError):
    """The classifier named in the configuration does not exist or cannot be loaded."""


@dataclass(frozen=True)
class ViewPrediction:
    """The most likely view and its probability (0-1)."""

    label: str
    probability: float


class ViewClassifier(Protocol):
    name: str

    def classify(self, frames: np.ndarray) -> ViewPrediction:
        """frames: (n, rows, cols) uint8 grey-scale, a few frames spread over the loop."""
        ...


def loop_features(frames: np.ndarray) -> np.ndarray:
    """Gain-independent coarse anatomy: where the loop is bright, where it moves, which way
    its edges run (A4C walls run down from the apex; parasternal ones across the screen)."""
    if frames.ndim != 3 or frames.shape[0] < 1:
        raise ValueError(f"expected (n, rows, cols) grey frames, got shape {frames.shape}")
    stack = frames.astype(np.float32) / 255.0
    mean = stack.mean(axis=0)
    spread = stack.std(axis=0)
    maps = []
    for image in (mean, spread):
        small = cv2.resize(image, (GRID, GRID), interpolation=cv2.INTER_AREA)
        maps.append(small.ravel() / (float(small.mean()) + 1e-3))
    smooth = cv2.resize(mean, (mean.shape[1] // 4, mean.shape[0] // 4), cv2.INTER_AREA)
    gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1)
    ex, ey = float(np.mean(gx * gx)), float(np.mean(gy * gy))
    orientation = np.array([np.log((ex + 1e-6) / (ey + 1e-6))], dtype=np.float32)
    return np.concatenate([*maps, orientation]).astype(np.float32)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30.0, 30.0)))


@dataclass(frozen=True)
class LogisticViewClassifier:
    """P(A4C) = sigmoid(w . standardised features + b)."""

    name: str
    weights: np.ndarray
    bias: float
    feature_mean: np.ndarray
    feature_scale: np.ndarray

    def probability_a4c(self, frames: np.ndarray) -> float:
        x = (loop_features(frames) - self.feature_mean) / self.feature_scale
        return float(_sigmoid(np.array(x @ self.weights + self.bias)))

    def classify(self, frames: np.ndarray) -> ViewPrediction:
        p = self.probability_a4c(frames)
        return ViewPrediction(A4C_LABEL, p) if p >= 0.5 else ViewPrediction(OTHER_LABEL, 1 - p)

    def to_json(self) -> str:
        return json.dumps(
            {
                "name": self.name,
                "grid": GRID,
                "bias": self.bias,
                "weights": [round(float(v), 6) for v in self.weights],
                "feature_mean": [round(float(v), 6) for v in self.feature_mean],
                "feature_scale": [round(float(v), 6) for v in self.feature_scale],
            }
        )

    @classmethod
    def from_json(cls, text: str) -> LogisticViewClassifier:
        data = json.loads(text)
        if data.get("grid") != GRID:
            raise ViewClassifierError(f"weights are for grid {data.get('grid')}, code uses {GRID}")
        return cls(
            name=str(data["name"]),
            weights=np.asarray(data["weights"], dtype=np.float32),
            bias=float(data["bias"]),
            feature_mean=np.asarray(data["feature_mean"], dtype=np.float32),
            feature_scale=np.asarray(data["feature_scale"], dtype=np.float32),
        )


def fit_logistic(
    features: np.ndarray,
    is_a4c: np.ndarray,
    name: str,
    l2: float = 0.1,
    steps: int = 3000,
    learning_rate: float = 0.1,
) -> LogisticViewClassifier:
    """Full-batch gradient descent on the L2-penalised log loss; deterministic, no seed needed.

    Classes are weighted equally, since phantom studies hold more A4C loops than distractors.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(is_a4c, dtype=np.float64)
    if len(np.unique(y)) != 2:
        raise ValueError("training needs A4C and non-A4C examples")
    mean = x.mean(axis=0)
    scale = x.std(axis=0) + 1e-3
    xs = (x - mean) / scale
    sample_weight = np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    w = np.zeros(x.shape[1])
    b = 0.0
    n = len(y)
    for _ in range(steps):
        p = _sigmoid(xs @ w + b)
        g = sample_weight * (p - y)
        w -= learning_rate * (xs.T @ g / n + l2 * w)
        b -= learning_rate * float(g.mean())
    return LogisticViewClassifier(
        name=name,
        weights=w.astype(np.float32),
        bias=b,
        feature_mean=mean.astype(np.float32),
        feature_scale=scale.astype(np.float32),
    )


def sample_frames(path: str | os.PathLike[str], count: int = 16) -> np.ndarray:
    """The grey frames the selector hands a classifier, read the same way."""
    from pydicom import dcmread
    from pydicom.pixels import iter_pixels

    n = int(dcmread(path, stop_before_pixels=True).get("NumberOfFrames", 1) or 1)
    indices = sorted({int(i) for i in np.linspace(0, n - 1, min(count, n))})
    return to_grey(np.stack(list(iter_pixels(path, indices=indices))))


def phantom_examples(
    paths: Sequence[Path],
) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """Features and labels (1 = A4C) of the phantom cine loops among ``paths``.

    Only A4C and PLAX loops: still frames and colour loops never reach a classifier (the
    selector's rules reject them first), and the colour loop's anatomy is A4C anyway.
    """
    feats, labels, used = [], [], []
    for path in paths:
        truth = json.loads(Path(path).with_suffix(".json").read_text())
        if truth["view"] not in (A4C_LABEL, "PLAX"):
            continue
        feats.append(loop_features(sample_frames(path)))
        labels.append(1 if truth["view"] == A4C_LABEL else 0)
        used.append(Path(path))
    return np.stack(feats), np.asarray(labels), used


def render_phantom_examples(n_loops: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features of ``n_loops`` A4C and as many PLAX loops, one phantom study per seed.

    Study 0 of every seed carries the PLAX distractor, so one-study runs give balanced classes.
    Studies are rendered one at a time into a scratch folder and deleted (they are large).
    """
    from inference.phantom import generate_phantoms

    feats, labels = [], []
    for offset in range(n_loops):
        with tempfile.TemporaryDirectory() as tmp:
            paths = generate_phantoms(Path(tmp), n=1, seed=seed + offset)
            x, y, _ = phantom_examples(paths)
            feats.append(x)
            labels.append(y)
    return np.concatenate(feats), np.concatenate(labels)


def train_phantom_classifier(n_loops: int = 24, seed: int = TRAIN_SEED) -> LogisticViewClassifier:
    x, y = render_phantom_examples(n_loops, seed)
    return fit_logistic(x, y, name="phantom-logreg")


def load_view_classifier(name: str) -> ViewClassifier | None:
    """The classifier ``selection.view_classifier`` names; "" means none (metadata only)."""
    if not name:
        return None
    if name == PHANTOM_CLASSIFIER:
        try:
            return LogisticViewClassifier.from_json(PHANTOM_WEIGHTS.read_text())
        except OSError as exc:
            raise ViewClassifierError(f"cannot read {PHANTOM_WEIGHTS}: {exc.strerror}") from None
    raise ViewClassifierError(
        f"selection.view_classifier must be '' or '{PHANTOM_CLASSIFIER}', got {name!r}"
    )


def main(argv: Sequence[str]) -> int:
    """``python -m inference.view_classifier OUT.json [N_LOOPS]``: rebuild the weights."""
    if not 1 <= len(argv) <= 2:
        print("usage: python -m inference.view_classifier OUT.json [N_LOOPS]", file=sys.stderr)
        return 2
    n = int(argv[1]) if len(argv) == 2 else 24
    model = train_phantom_classifier(n_loops=n)
    out = Path(argv[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(model.to_json() + "\n")
    print(f"wrote {out} ({out.stat().st_size} bytes) from {n} A4C and {n} PLAX phantom loops")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
