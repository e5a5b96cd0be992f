"""Held-out scores computed the way EchoNet-Dynamic reports them: Dice on the traced frames,
EF error averaged over every clip of a video."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from inference.beats import CLIP_LENGTH_FRAMES, CLIP_PERIOD_FRAMES
from inference.training.echonet_data import clip_starts, take_clip
from inference.training.transforms import normalise


@dataclass(frozen=True)
class DiceScores:
    mean_per_frame: float  # mean of each frame's Dice
    pooled: float  # 2 * sum(overlap) / sum(sizes) over all frames (EchoNet's "overall")
    per_frame: tuple[float, ...]


def dice_scores(pred: np.ndarray, truth: np.ndarray) -> DiceScores:
    """``pred``/``truth``: (frames, H, W) bool. An empty pair counts as a perfect frame."""
    p = pred.reshape(len(pred), -1).astype(bool)
    t = truth.reshape(len(truth), -1).astype(bool)
    overlap = (p & t).sum(axis=1).astype(np.float64)
    sizes = (p.sum(axis=1) + t.sum(axis=1)).astype(np.float64)
    per = np.where(sizes > 0, 2 * overlap / np.maximum(sizes, 1), 1.0)
    pooled = float(2 * overlap.sum() / sizes.sum()) if sizes.sum() > 0 else 1.0
    return DiceScores(float(per.mean()) if len(per) else float("nan"), pooled, tuple(per))


def to_channels_first(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) -> (N, C, H, W)."""
    return np.ascontiguousarray(np.moveaxis(images, -1, 1))


@torch.inference_mode()
def predict_masks(
    model: nn.Module,
    images: np.ndarray,
    mean: torch.Tensor,
    std: torch.Tensor,
    batch_size: int = 32,
) -> np.ndarray:
    """(N, H, W, C) uint8 frames -> (N, H, W) bool LV masks (logit > 0)."""
    device = mean.device
    was_training = model.training
    model.eval()
    out = []
    try:
        chw = to_channels_first(images)
        for i in range(0, len(chw), batch_size):
            x = normalise(torch.from_numpy(chw[i : i + batch_size]).to(device), mean, std)
            logits = model(x.contiguous(memory_format=torch.channels_last))[:, 0]
            out.append((logits > 0).cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, *images.shape[1:3]), bool)


@torch.inference_mode()
def predict_video_ef(
    model: nn.Module,
    video: np.ndarray,
    mean: torch.Tensor,
    std: torch.Tensor,
    start_stride: int = 1,
    batch_size: int = 8,
    length: int = CLIP_LENGTH_FRAMES,
    period: int = CLIP_PERIOD_FRAMES,
) -> float:
    """Mean EF (percent) over the clips starting at every ``start_stride``-th frame
    (1 = all clips, EchoNet-Dynamic's test-time protocol)."""
    if start_stride < 1:
        raise ValueError(f"start_stride must be >= 1, got {start_stride}")
    device = mean.device
    was_training = model.training
    model.eval()
    values = []
    try:
        starts = clip_starts(len(video), length, period)[::start_stride]
        for i in range(0, len(starts), batch_size):
            clips, valid = zip(
                *(take_clip(video, int(s), length, period) for s in starts[i : i + batch_size]),
                strict=True,
            )
            x = clip_batch(np.stack(clips), np.stack(valid), mean, std, device)
            values.append(model(x)[:, 0].float().cpu().numpy())
    finally:
        model.train(was_training)
    return float(np.concatenate(values).mean())


def clip_batch(
    clips: np.ndarray,
    valid: np.ndarray,
    mean: torch.Tensor,
    std: torch.Tensor,
    device: torch.device,
) -> torch.Tensor:
    """(B, T, H, W, C) uint8 clips + (B, T) real-frame flags -> normalised (B, 3, T, H, W),
    padding frames set to 0 (the mean), channels-last-3d for faster convolutions."""
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(clips, -1, 1))).to(device)
    x = normalise(x, mean, std)
    keep = torch.from_numpy(np.asarray(valid)).to(device)[:, None, :, None, None]
    return (x * keep).contiguous(memory_format=torch.channels_last_3d)


def ef_errors(predicted: Sequence[float], truth: Sequence[float]) -> dict[str, float]:
    p = np.asarray(predicted, np.float64)
    t = np.asarray(truth, np.float64)
    err = p - t
    ss_tot = float(((t - t.mean()) ** 2).sum()) if len(t) else 0.0
    return {
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "r2": float(1 - (err**2).sum() / ss_tot) if ss_tot > 0 else float("nan"),
        "bias": float(err.mean()),
    }
