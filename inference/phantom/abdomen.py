"""A non-cardiac B-mode scene: abdominal wall layers over liver, with vessels and the
diaphragm, drifting slowly with breathing (or not at all).

It is rendered by the same beam renderer as the heart, so it has the same speckle, fan and
grey levels as a cardiac loop and differs only in content: a loop a node must not measure an
EF on, because there is no ventricle in it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .render import Paint

_X_SPAN_CM = 22.0  # layers run wider than any fan so their ends never show


@dataclass(frozen=True)
class Vessel:
    """A hepatic or portal vein in cross-section: an echo-free ellipse, bright-walled if
    portal."""

    centre_xy_cm: tuple[float, float]
    radii_cm: tuple[float, float]
    angle_rad: float
    wall_level: float  # 0: no wall (hepatic vein)


@dataclass(frozen=True)
class AbdomenScene:
    """Depths (cm) of the layer boundaries, echo levels, vessels and the breathing drift."""

    fat_bottom_cm: float
    muscle_bottom_cm: float
    diaphragm_depth_cm: float
    diaphragm_curvature_per_cm: float
    boundary_wave_cm: float
    boundary_phase_rad: float
    fat_level: float
    muscle_level: float
    liver_level: float
    capsule_level: float
    diaphragm_level: float
    below_diaphragm_level: float  # mirror artefact (liver-like) or dark lung
    vessels: tuple[Vessel, ...]
    drift_amp_cm: float  # 0: a static scene, only the speckle changes
    drift_period_s: float
    drift_phase_rad: float


def sample_abdomen(
    rng: np.random.Generator, depth_cm: float, half_angle_rad: float
) -> AbdomenScene:
    """A scene that fits a fan of this depth and opening."""
    fat = float(rng.uniform(0.8, 2.0))
    muscle = fat + float(rng.uniform(0.8, 1.6))
    diaphragm = float(rng.uniform(0.65, 0.9)) * depth_cm
    vessels = []
    for _ in range(int(rng.integers(3, 8))):
        y = float(rng.uniform(muscle + 1.5, max(muscle + 2.0, diaphragm - 1.0)))
        reach = 0.8 * y * np.tan(half_angle_rad)
        r = float(rng.uniform(0.3, 1.0))
        vessels.append(
            Vessel(
                centre_xy_cm=(float(rng.uniform(-reach, reach)), y),
                radii_cm=(r, r * float(rng.uniform(0.5, 1.0))),
                angle_rad=float(rng.uniform(0.0, np.pi)),
                wall_level=float(rng.uniform(0.5, 0.9)) if rng.random() < 0.5 else 0.0,
            )
        )
    static = rng.random() < 0.3
    return AbdomenScene(
        fat_bottom_cm=fat,
        muscle_bottom_cm=muscle,
        diaphragm_depth_cm=diaphragm,
        diaphragm_curvature_per_cm=float(rng.uniform(0.01, 0.04)),
        boundary_wave_cm=float(rng.uniform(0.05, 0.25)),
        boundary_phase_rad=float(rng.uniform(0.0, 2 * np.pi)),
        fat_level=float(rng.uniform(0.04, 0.09)),
        muscle_level=float(rng.uniform(0.1, 0.2)),
        liver_level=float(rng.uniform(0.15, 0.3)),
        capsule_level=float(rng.uniform(0.6, 1.0)),
        diaphragm_level=float(rng.uniform(1.5, 2.5)),
        below_diaphragm_level=float(rng.uniform(0.08, 0.2))
        if rng.random() < 0.5
        else float(rng.uniform(0.01, 0.03)),
        vessels=tuple(vessels),
        drift_amp_cm=0.0 if static else float(rng.uniform(0.3, 1.0)),
        drift_period_s=float(rng.uniform(3.0, 5.0)),
        drift_phase_rad=float(rng.uniform(0.0, 2 * np.pi)),
    )


def _band(xs: np.ndarray, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    return np.concatenate([np.stack([xs, top], 1), np.stack([xs[::-1], bottom[::-1]], 1)], 0)


def _ellipse(v: Vessel, dy_cm: float, n: int = 32) -> np.ndarray:
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    x, y = v.radii_cm[0] * np.cos(t), v.radii_cm[1] * np.sin(t)
    ca, sa = np.cos(v.angle_rad), np.sin(v.angle_rad)
    cx, cy = v.centre_xy_cm
    return np.stack([cx + x * ca - y * sa, cy + dy_cm + x * sa + y * ca], 1)


def drift_cm(scene: AbdomenScene, t_s: float) -> float:
    """How far the organs below the abdominal wall have moved down at t_s (breathing)."""
    w = 2 * np.pi * t_s / scene.drift_period_s + scene.drift_phase_rad
    return float(scene.drift_amp_cm * np.sin(w))


def abdomen_paints(scene: AbdomenScene, t_s: float) -> list[Paint]:
    """The scene at t_s; the wall layers stay put, the liver and diaphragm slide under them."""
    dy = drift_cm(scene, t_s)
    xs = np.linspace(-_X_SPAN_CM, _X_SPAN_CM, 90)
    wave = scene.boundary_wave_cm * np.sin(0.7 * xs + scene.boundary_phase_rad)
    fat_top = np.full_like(xs, 0.3)
    fat_bot = scene.fat_bottom_cm + wave
    muscle_bot = scene.muscle_bottom_cm + 0.6 * wave
    dia = scene.diaphragm_depth_cm + dy + scene.diaphragm_curvature_per_cm * xs**2
    deep = np.full_like(xs, scene.diaphragm_depth_cm + 40.0)
    paints = [
        Paint(_band(xs, fat_top, fat_bot), scene.fat_level),
        Paint(_band(xs, fat_bot, muscle_bot), scene.muscle_level),
        Paint(_band(xs, muscle_bot, dia), scene.liver_level),
        Paint(_band(xs, dia, deep), scene.below_diaphragm_level),
    ]
    # fibrous septa in the fat and fibres in the muscle: faint lines parallel to the skin
    for frac in (0.35, 0.7):
        y = fat_top + frac * (fat_bot - fat_top)
        paints.append(Paint(np.stack([xs, y], 1), 2.5 * scene.fat_level, "line", 0.06))
    for frac in (0.3, 0.55, 0.8):
        y = fat_bot + frac * (muscle_bot - fat_bot)
        paints.append(Paint(np.stack([xs, y], 1), 1.8 * scene.muscle_level, "line", 0.05))
    paints.append(Paint(np.stack([xs, muscle_bot], 1), scene.capsule_level, "line", 0.1))
    for v in scene.vessels:
        outline = _ellipse(v, dy)
        paints.append(Paint(outline, 0.005))
        if v.wall_level > 0:
            closed = np.concatenate([outline, outline[:1]], 0)
            paints.append(Paint(closed, v.wall_level, "line", 0.1))
    paints.append(Paint(np.stack([xs, dia], 1), scene.diaphragm_level, "line", 0.25))
    return paints
