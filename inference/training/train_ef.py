"""Train the EF regressor (R(2+1)D-18, one output = EF in percent) on 32-frame clips.

As in EchoNet-Dynamic: one random clip (32 frames, a sample about every 40 ms: period 2 at
EchoNet's 50 /s, ``beats.clip_period_for`` at other rates) per training video per epoch,
shifted by up to ``MAX_SHIFT_PX`` (EchoNet pads by 12 and crops back), mean squared error on
EF in percent; validation averages the clips of each video. Differences, for training from
scratch on a CPU: AdamW with a cosine schedule, the output bias starting at the training mean EF
(the first steps then learn the variation, not the offset), channels-last-3d memory, and
validation on every ``VAL_START_STRIDE``-th clip start of at most ``MAX_VAL_VIDEOS`` videos
rather than all clips of all of them. The exported weights' batch-norm statistics are
recomputed over one clip of every training video (``batch_norm``): with 4-clip batches the
running averages otherwise jitter with the last batches of the run.

Videos are held in RAM (one channel when grey) so an epoch does not decode every file again.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 -- conventional alias
from torch.utils.data import Dataset

from inference.beats import CLIP_LENGTH_FRAMES, CLIP_PERIOD_FRAMES, CLIP_SAMPLE_INTERVAL_MS
from inference.checkpoints import save_safetensors_fp16
from inference.networks import build_r2plus1d_18
from inference.training.batch_norm import recompute_batch_norm_stats
from inference.training.common import (
    EpochRun,
    Progress,
    TrainOptions,
    autocast,
    data_fingerprint,
    epoch_shape,
    init_from,
    item_generator,
    make_optimizer,
    make_runtime,
    run_epochs,
)
from inference.training.echonet_data import (
    GRID_SIZE_PX,
    VideoRecord,
    clip_starts,
    compact_video,
    load_video,
    mean_std_subset,
    read_filelists,
    take_clip,
)
from inference.training.metrics import clip_batch, ef_errors, predict_video_ef
from inference.training.normalisation import channel_mean_std
from inference.training.train_seg import TrainResult
from inference.training.transforms import (
    ZOOM_RANGE,
    intensity_jitter,
    random_shift,
    tone_tint_jitter,
    zoom_jitter,
)

WEIGHTS_NAME = "ef.safetensors"
MAX_SHIFT_PX = 8
VAL_START_STRIDE = 16
BN_STATS_BATCH = 16  # clips per batch when the batch-norm statistics are recomputed
BN_STATS_EPOCH = 1_000_000  # the clip draw for those statistics: apart from every training epoch
MAX_VAL_VIDEOS = 64  # per-epoch validation cost stays bounded on a CPU
ARCHITECTURE = "r2plus1d_18"


class RandomClips(Dataset):
    """One random clip per video per epoch: (C, T, H, W) uint8, (T,) real-frame flags, EF."""

    def __init__(
        self,
        videos: Sequence[np.ndarray],
        ef_percent: Sequence[float],
        seed: int,
        max_shift_px: int,
        length: int = CLIP_LENGTH_FRAMES,
        periods: Sequence[int] | None = None,
        intensity_augment: bool = False,
        tone_tint_augment: bool = False,
        zoom_augment: bool = False,
    ) -> None:
        self.videos = list(videos)
        self.ef = np.asarray(ef_percent, np.float32)
        self.seed = seed
        self.max_shift_px = max_shift_px
        self.length = length
        # per video: a clip sample about every 40 ms, as the node samples (beats.clip_period_for)
        default = [CLIP_PERIOD_FRAMES] * len(self.videos)
        self.periods = default if periods is None else [int(p) for p in periods]
        if len(self.periods) != len(self.videos):
            raise ValueError(f"{len(self.periods)} clip periods for {len(self.videos)} videos")
        self.intensity_augment = intensity_augment
        self.tone_tint_augment = tone_tint_augment
        self.zoom_augment = zoom_augment
        self.channels = max(v.shape[-1] for v in self.videos)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rng = item_generator(self.seed, self.epoch, i)
        video = self.videos[i]
        period = self.periods[i]
        start = int(rng.choice(clip_starts(len(video), self.length, period)))
        clip, valid = take_clip(video, start, self.length, period)
        chw = np.moveaxis(clip, -1, 0)  # (C, T, H, W)
        if chw.shape[0] != self.channels:  # grey and colour videos in one batch
            chw = np.repeat(chw, self.channels, axis=0)
        chw, _ = random_shift(chw, rng, self.max_shift_px)
        if self.intensity_augment:  # drawn after the shift, so old runs keep their shifts
            chw = intensity_jitter(chw, rng)
        if self.tone_tint_augment:  # drawn last, so runs without it keep every other draw
            chw = tone_tint_jitter(chw, rng)
        if self.zoom_augment:  # drawn after the others, so runs without it keep their draws
            chw = zoom_jitter(chw, rng)
        return torch.from_numpy(chw), torch.from_numpy(valid), torch.tensor(self.ef[i])


def _load_videos(records: Sequence[VideoRecord], log: Progress) -> list[np.ndarray]:
    out = []
    for k, rec in enumerate(records, start=1):
        out.append(compact_video(load_video(rec.path)))
        if k % 200 == 0:
            log.note(f"loaded {k}/{len(records)} videos")
    return out


def train_ef(options: TrainOptions) -> TrainResult:
    runtime = make_runtime(options)
    log = Progress("ef", 1, 0, options.progress_every, options.log)
    all_train = read_filelists(options.data_dirs, ["TRAIN"])
    train = all_train[: options.max_train_videos]
    val = read_filelists(options.data_dirs, ["VAL"])[:MAX_VAL_VIDEOS]
    if not train:
        raise ValueError(f"{options.data_dir}: no TRAIN videos in FileList.csv")
    # from the whole TRAIN split, whatever --max-videos: both networks of a folder must agree
    mean, std = channel_mean_std(load_video(r.path) for r in mean_std_subset(all_train))
    videos = _load_videos(train, log)
    val_videos = _load_videos(val, log)
    log.note(f"{len(train)} train / {len(val)} val videos; mean {mean} std {std}")
    dataset = RandomClips(
        videos,
        [r.ef_percent for r in train],
        options.seed,
        MAX_SHIFT_PX,
        periods=[r.clip_period_frames for r in train],
        intensity_augment=options.intensity_augment,
        tone_tint_augment=options.tone_tint_augment,
        zoom_augment=options.zoom_augment,
    )
    _, steps_per_epoch = epoch_shape(len(dataset), options.batch_size)

    torch.manual_seed(options.seed)
    model = build_r2plus1d_18(options.width, num_outputs=1)
    with torch.no_grad():
        model.fc.bias.fill_(float(np.mean(dataset.ef)))
    init = init_from(model, options, ARCHITECTURE)
    model = model.to(runtime.device, memory_format=torch.channels_last_3d)
    optimizer, schedule = make_optimizer(model, options, steps_per_epoch)
    mean_t = torch.tensor(mean, device=runtime.device)
    std_t = torch.tensor(std, device=runtime.device)

    def batch_loss(batch: Sequence[torch.Tensor]) -> torch.Tensor:
        clips, valid, ef = batch
        x = clip_batch(
            np.moveaxis(clips.numpy(), 1, -1), valid.numpy(), mean_t, std_t, runtime.device
        )
        y = ef.to(runtime.device)
        with autocast(runtime):
            pred = model(x)[:, 0]
        return F.mse_loss(pred.float(), y)

    def validate() -> dict[str, float]:
        if not val:
            return {}
        predicted = [
            predict_video_ef(
                model, v, mean_t, std_t, start_stride=VAL_START_STRIDE, period=r.clip_period_frames
            )
            for v, r in zip(val_videos, val, strict=True)
        ]
        errors = ef_errors(predicted, [r.ef_percent for r in val])
        return {f"val_{k}": v for k, v in errors.items()}

    def stats_batches() -> Iterator[torch.Tensor]:
        # one clip per training video, drawn as in training, in larger batches than training's
        dataset.set_epoch(BN_STATS_EPOCH)
        for i in range(0, len(dataset), BN_STATS_BATCH):
            clips, valid, _ = zip(
                *(dataset[j] for j in range(i, min(len(dataset), i + BN_STATS_BATCH))), strict=True
            )
            x = torch.stack(clips).numpy()
            yield clip_batch(
                np.moveaxis(x, 1, -1), torch.stack(valid).numpy(), mean_t, std_t, runtime.device
            )

    out_dir = Path(options.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = EpochRun("ef", model, dataset, batch_loss, validate, "train_mse")
    history = run_epochs(run, options, runtime, optimizer, schedule, out_dir, log)
    # the exported weights get batch-norm statistics averaged over the whole training set (the
    # resume checkpoint keeps the training state as it was, so --resume stays exact)
    with autocast(runtime):
        batches_seen = recompute_batch_norm_stats(model, stats_batches())
    batch_norm_stats = {"clips": len(dataset), "batches": batches_seen, **validate()}
    log.note(
        "batch-norm statistics recomputed: "
        + " ".join(f"{k} {v:.4g}" for k, v in batch_norm_stats.items())
    )

    weights = out_dir / WEIGHTS_NAME
    config = {
        "architecture": ARCHITECTURE,
        "task": "ef_regression",
        "output": "ef_percent",
        "width": options.width,
        "num_outputs": 1,
        "input_size_px": GRID_SIZE_PX,
        "clip_length_frames": CLIP_LENGTH_FRAMES,
        "clip_period_frames": CLIP_PERIOD_FRAMES,
        "clip_sample_interval_ms": CLIP_SAMPLE_INTERVAL_MS,  # the period follows the frame rate
        "mean": list(mean),
        "std": list(std),
        "epochs": options.epochs,
        "epochs_done": len(history),
        "seed": options.seed,
        "batch_size": options.batch_size,
        "optimizer": f"AdamW lr {options.lr} wd {options.weight_decay}, warm-up + cosine",
        "augmentation": f"shift up to {MAX_SHIFT_PX} px"
        + (", intensity jitter (gamma, gain, blur)" if options.intensity_augment else "")
        + (", tone curve and tint" if options.tone_tint_augment else "")
        + (f", zoom {ZOOM_RANGE[0]}-{ZOOM_RANGE[1]}" if options.zoom_augment else ""),
        "train_data": data_fingerprint(options.data_dirs, [r.name for r in train]),
        "val_videos": len(val),
        "history": history,
        "batch_norm_stats": batch_norm_stats,
        "command": options.command,
        "init_weights": init or None,
    }
    save_safetensors_fp16(model.to(memory_format=torch.contiguous_format), weights, config)
    log.note(f"wrote {weights}")
    return TrainResult(weights, len(history), tuple(history), mean, std)


__all__ = ["ARCHITECTURE", "WEIGHTS_NAME", "train_ef"]
