"""A quick held-out check of a segmentation + EF pair on an EchoNet-layout folder.

Not the product's ``echo-agent evaluate`` (that one runs the whole pipeline on DICOM loops and
writes plots and CSVs): this scores the networks alone, on the 112 grid, the way the training
scripts validate, so a freshly trained pair can be judged in a minute.

    python -m inference.training.quick_eval DATA_DIR [--demo-dir DIR] [--stride N] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from inference.presets import LoadedModels, load_preset
from inference.training.echonet_data import load_video, seg_samples, traced_videos
from inference.training.metrics import dice_scores, ef_errors, predict_masks, predict_video_ef


@dataclass(frozen=True)
class QuickScores:
    videos: int
    dice_mean: float
    dice_pooled: float
    dice_es: float
    dice_ed: float
    ef: dict[str, float] | None
    per_video: tuple[dict[str, object], ...]


def quick_evaluate(
    models: LoadedModels,
    data_dir: Path,
    *,
    splits: tuple[str, ...] | None = None,
    limit: int | None = None,
    start_stride: int = 1,
) -> QuickScores:
    """Dice on every traced ES/ED frame; EF as the mean over the clips of each video (every
    ``start_stride``-th start; 1 = all clips)."""
    videos = traced_videos(Path(data_dir), splits)[:limit]
    if not videos:
        raise ValueError(f"{data_dir}: no traced videos to evaluate")
    device = next(models.segmenter.parameters()).device
    mean = torch.tensor(models.mean, device=device)
    std = torch.tensor(models.std, device=device)
    samples = seg_samples(videos)
    pred = predict_masks(models.segmenter, np.stack([s.image for s in samples]), mean, std)
    truth = np.stack([s.mask for s in samples])
    scores = dice_scores(pred, truth)
    per_frame = np.asarray(scores.per_frame)
    phases = np.asarray([s.phase for s in samples])
    rows: list[dict[str, object]] = []
    ef_pred: list[float] = []
    for k, v in enumerate(videos):
        row: dict[str, object] = {
            "name": v.record.name,
            "dice_es": float(per_frame[2 * k]),
            "dice_ed": float(per_frame[2 * k + 1]),
            "ef_true": v.record.ef_percent,
        }
        if models.ef_model is not None:
            ef = predict_video_ef(
                models.ef_model,
                load_video(v.record.path),
                mean,
                std,
                start_stride=start_stride,
                period=v.record.clip_period_frames,
            )
            ef_pred.append(ef)
            row["ef_pred"] = ef
        rows.append(row)
    ef_stats = ef_errors(ef_pred, [v.record.ef_percent for v in videos]) if ef_pred else None
    return QuickScores(
        videos=len(videos),
        dice_mean=scores.mean_per_frame,
        dice_pooled=scores.pooled,
        dice_es=float(per_frame[phases == "ES"].mean()),
        dice_ed=float(per_frame[phases == "ED"].mean()),
        ef=ef_stats,
        per_video=tuple(rows),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--demo-dir", type=Path, default=None)
    parser.add_argument("--stride", type=int, default=1, help="clip start stride (1 = all)")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    models = load_preset("demo", demo_dir=args.demo_dir)
    s = quick_evaluate(models, args.data, limit=args.limit, start_stride=args.stride)
    summary = {
        "videos": s.videos,
        "dice_mean": s.dice_mean,
        "dice_pooled": s.dice_pooled,
        "dice_es": s.dice_es,
        "dice_ed": s.dice_ed,
        "ef": s.ef,
        "wall_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
