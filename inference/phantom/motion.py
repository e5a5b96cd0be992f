"""Cardiac timing: when each beat starts, how far the LV has contracted, valves and ECG.

Everything is a function of time so frame rate and heart rate stay independent: the same
heart sampled at 30 or 80 frames/s gives the same physiology, as on a real scanner.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def smoothstep(x: np.ndarray | float) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def end_systole_delay_s(heart_rate_bpm: float) -> float:
    """R wave to end-systole; shortens with heart rate, as electromechanical systole does."""
    return 0.52 - 0.0016 * heart_rate_bpm


@dataclass(frozen=True)
class CardiacTiming:
    """Beat k (k = -1 for the partial beat before the first R wave) starts at first_r_s + k*T."""

    heart_rate_bpm: float
    first_r_s: float  # time of the first R wave after the loop starts

    @property
    def period_s(self) -> float:
        return 60.0 / self.heart_rate_bpm

    @property
    def es_phase(self) -> float:
        return end_systole_delay_s(self.heart_rate_bpm) / self.period_s

    def beat_and_phase(self, t_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Beat index (int) and phase in [0, 1) since that beat's R wave."""
        x = (np.asarray(t_s, dtype=np.float64) - self.first_r_s) / self.period_s
        k = np.floor(x)
        return k.astype(int), x - k

    def r_wave_times_s(self, t_end_s: float) -> np.ndarray:
        k_first = int(np.ceil(-self.first_r_s / self.period_s))
        k_last = int(np.floor((t_end_s - self.first_r_s) / self.period_s))
        return self.first_r_s + np.arange(k_first, k_last + 1) * self.period_s


def contraction(phase: np.ndarray, es_phase: float) -> np.ndarray:
    """0 at end-diastole (R wave), 1 at end-systole; ejection, rapid filling, diastasis, atrial
    kick. Strictly one maximum and one minimum per beat so ED and ES are unambiguous."""
    ph = np.asarray(phase, dtype=np.float64)
    out = np.empty_like(ph)
    sys = ph <= es_phase
    x = np.clip(ph[sys] / es_phase, 0.0, 1.0)
    out[sys] = 0.5 - 0.5 * np.cos(np.pi * x**0.85)
    d = (ph[~sys] - es_phase) / (1.0 - es_phase)
    rapid = 1.0 - 0.75 * smoothstep(d / 0.4)
    diastasis = 0.25 - 0.07 * (d - 0.4) / 0.38
    atrial = 0.18 * (1.0 - smoothstep((d - 0.78) / 0.22))
    out[~sys] = np.where(d < 0.4, rapid, np.where(d < 0.78, diastasis, atrial))
    return out


def valve_opening(phase: np.ndarray, es_phase: float) -> np.ndarray:
    """Atrioventricular valve opening 0 (closed) .. 1 (wide open): shut in systole, open in
    rapid filling, half-closed in diastasis, open again with the atrial kick."""
    ph = np.asarray(phase, dtype=np.float64)
    d = (ph - es_phase) / (1.0 - es_phase)
    early = smoothstep((d - 0.04) / 0.08) * (1.0 - 0.65 * smoothstep((d - 0.35) / 0.15))
    late = 0.55 * smoothstep((d - 0.74) / 0.06) * (1.0 - smoothstep((d - 0.93) / 0.07))
    return np.where(ph <= es_phase, 0.0, np.clip(early + late, 0.0, 1.0))


def ecg_mv(t_s: np.ndarray, timing: CardiacTiming) -> np.ndarray:
    """A plausible lead-II-like trace with the R peak exactly at each beat's end-diastole."""
    t = np.asarray(t_s, dtype=np.float64)
    period = timing.period_s
    rel = (t - timing.first_r_s) % period  # time since the last R wave
    rel_prev = rel - period  # time relative to the next R wave (negative)
    t_wave = end_systole_delay_s(timing.heart_rate_bpm) - 0.09
    p_wave = -min(0.16, 0.22 * period)

    def g(x: np.ndarray, mu: float, sd: float, amp: float) -> np.ndarray:
        return amp * np.exp(-0.5 * ((x - mu) / sd) ** 2)

    v = np.zeros_like(t)
    for x in (rel, rel_prev):
        v += g(x, 0.0, 0.011, 1.0)  # R
        v += g(x, -0.025, 0.008, -0.12)  # Q
        v += g(x, 0.028, 0.010, -0.28)  # S
        v += g(x, t_wave, 0.045, 0.30)  # T
        v += g(x, p_wave, 0.025, 0.13)  # P
    return v
