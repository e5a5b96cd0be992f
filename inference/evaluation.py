"""Agreement metrics between measured and true values: EchoGPT's Table 2 (Dice, EF MAE, RMSE,
R2, AUC at 40/50/70 % EF) and Bland-Altman limits, in plain numpy so that an evaluation can be
checked by hand."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

AUC_THRESHOLDS_PERCENT = (40.0, 50.0, 70.0)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Overlap of two binary masks; two empty masks agree perfectly."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(p, t).sum()) / total


@dataclass(frozen=True)
class AgreementStats:
    n: int
    mae: float
    rmse: float
    r2: float
    bias: float
    sd_diff: float
    auc: dict[str, float | None]  # "40": AUC of detecting EF < 40 %, None when one class only

    @property
    def limits_of_agreement(self) -> tuple[float, float]:
        return (self.bias - 1.96 * self.sd_diff, self.bias + 1.96 * self.sd_diff)

    def to_json(self) -> dict[str, object]:
        low, high = self.limits_of_agreement
        return {
            "n": self.n,
            "mae": self.mae,
            "rmse": self.rmse,
            "r2": self.r2,
            "bias": self.bias,
            "sd_diff": self.sd_diff,
            "loa_low": low,
            "loa_high": high,
            "auc": self.auc,
        }


def agreement(predicted: Sequence[float], truth: Sequence[float]) -> AgreementStats:
    """Errors of ``predicted`` against ``truth`` (pairs with a missing side are dropped first)."""
    pairs = [
        (float(p), float(t))
        for p, t in zip(predicted, truth, strict=True)
        if p is not None and t is not None and np.isfinite(p) and np.isfinite(t)
    ]
    if not pairs:
        raise ValueError("no pair of measured and true values to compare")
    p = np.array([a for a, _ in pairs])
    t = np.array([b for _, b in pairs])
    diff = p - t
    ss_tot = float(((t - t.mean()) ** 2).sum())
    r2 = float("nan") if ss_tot == 0 else 1.0 - float((diff**2).sum()) / ss_tot
    auc = {f"{th:g}": roc_auc(t < th, -p) for th in AUC_THRESHOLDS_PERCENT}
    return AgreementStats(
        n=len(p),
        mae=float(np.abs(diff).mean()),
        rmse=float(np.sqrt((diff**2).mean())),
        r2=r2,
        bias=float(diff.mean()),
        sd_diff=float(diff.std(ddof=1)) if len(p) > 1 else 0.0,
        auc=auc,
    )


def roc_auc(positive: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve as the Mann-Whitney probability that a positive case scores
    above a negative one (ties count half); None when either class is empty."""
    positive = np.asarray(positive, bool)
    score = np.asarray(score, float)
    pos, neg = score[positive], score[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))
