"""Train the LV segmentation network (DeepLabV3-ResNet50, one logit) on the traced frames.

As in EchoNet-Dynamic: every video's traced ES and ED frame with its polygon mask, binary
cross-entropy on the logits, Dice on the validation split after each epoch. Unlike it (it
trains from random init with SGD for 50 epochs on a GPU): AdamW with a cosine
schedule, so a small-width model trains from scratch in a few CPU epochs; frames are shifted by
up to ``MAX_SHIFT_PX`` so the model does not learn one fixed fan position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 -- conventional alias
from torch.utils.data import Dataset

from inference.checkpoints import save_safetensors_fp16
from inference.networks import build_deeplabv3_resnet50
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
    load_video,
    mean_std_subset,
    read_filelists,
    seg_samples,
    traced_videos_in,
)
from inference.training.metrics import dice_scores, predict_masks
from inference.training.normalisation import channel_mean_std
from inference.training.transforms import (
    ZOOM_RANGE,
    draw_zoom,
    intensity_jitter,
    normalise,
    random_shift,
    shift_array,
    zoom_array,
)

WEIGHTS_NAME = "segmentation.safetensors"
MAX_SHIFT_PX = 8
ARCHITECTURE = "deeplabv3_resnet50"


@dataclass(frozen=True)
class TrainResult:
    weights_path: Path
    epochs_done: int
    history: tuple[dict[str, float], ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class TracedFrames(Dataset):
    """Traced frames as (C, H, W) uint8 and (H, W) float masks, shifted per (epoch, index)."""

    def __init__(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        seed: int,
        max_shift_px: int,
        intensity_augment: bool = False,
        zoom_augment: bool = False,
    ):
        self.images = np.ascontiguousarray(np.moveaxis(images, -1, 1))
        self.masks = masks.astype(np.float32)
        self.seed = seed
        self.max_shift_px = max_shift_px
        self.intensity_augment = intensity_augment
        self.zoom_augment = zoom_augment
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = item_generator(self.seed, self.epoch, i)
        image, (dy, dx) = random_shift(self.images[i], rng, self.max_shift_px)
        mask = shift_array(self.masks[i], dy, dx)
        if self.intensity_augment:  # drawn after the shift, so old runs keep their shifts
            image = intensity_jitter(image, rng)
        if self.zoom_augment:  # drawn last; the mask takes the image's zoom
            factor = draw_zoom(rng)
            image, mask = zoom_array(image, factor), zoom_array(mask, factor)
        return torch.from_numpy(image), torch.from_numpy(mask)


def train_segmentation(options: TrainOptions) -> TrainResult:
    runtime = make_runtime(options)
    log = Progress("seg", 1, 0, options.progress_every, options.log)
    train = traced_videos_in(options.data_dirs, ["TRAIN"])[: options.max_train_videos]
    val = traced_videos_in(options.data_dirs, ["VAL"])
    if not train:
        raise ValueError(f"{options.data_dir}: no traced TRAIN videos in FileList/VolumeTracings")
    # from the whole TRAIN split, whatever --max-videos: both networks of a folder must agree
    mean, std = channel_mean_std(
        load_video(r.path) for r in mean_std_subset(read_filelists(options.data_dirs, ["TRAIN"]))
    )
    log.note(f"{len(train)} train / {len(val)} val videos; mean {mean} std {std}")
    samples = seg_samples(train)
    val_samples = seg_samples(val)
    dataset = TracedFrames(
        np.stack([s.image for s in samples]),
        np.stack([s.mask for s in samples]),
        options.seed,
        MAX_SHIFT_PX,
        options.intensity_augment,
        options.zoom_augment,
    )
    _, steps_per_epoch = epoch_shape(len(dataset), options.batch_size)

    torch.manual_seed(options.seed)
    model = build_deeplabv3_resnet50(options.width, num_classes=1)
    init = init_from(model, options, ARCHITECTURE)
    model = model.to(runtime.device, memory_format=torch.channels_last)
    optimizer, schedule = make_optimizer(model, options, steps_per_epoch)
    mean_t = torch.tensor(mean, device=runtime.device)
    std_t = torch.tensor(std, device=runtime.device)

    def batch_loss(batch: Sequence[torch.Tensor]) -> torch.Tensor:
        images, masks = batch
        x = normalise(images.to(runtime.device, non_blocking=True), mean_t, std_t)
        y = masks.to(runtime.device, non_blocking=True)
        with autocast(runtime):
            logits = model(x.contiguous(memory_format=torch.channels_last))[:, 0]
        return F.binary_cross_entropy_with_logits(logits.float(), y)

    def validate() -> dict[str, float]:
        if not val_samples:
            return {}
        pred = predict_masks(model, np.stack([s.image for s in val_samples]), mean_t, std_t)
        scores = dice_scores(pred, np.stack([s.mask for s in val_samples]))
        return {"val_dice": scores.mean_per_frame, "val_dice_pooled": scores.pooled}

    out_dir = Path(options.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = EpochRun("seg", model, dataset, batch_loss, validate, "train_loss")
    history = run_epochs(run, options, runtime, optimizer, schedule, out_dir, log)

    weights = out_dir / WEIGHTS_NAME
    config = {
        "architecture": ARCHITECTURE,
        "task": "lv_segmentation",
        "width": options.width,
        "num_classes": 1,
        "input_size_px": GRID_SIZE_PX,
        "mean": list(mean),
        "std": list(std),
        "epochs": options.epochs,
        "epochs_done": len(history),
        "seed": options.seed,
        "batch_size": options.batch_size,
        "optimizer": f"AdamW lr {options.lr} wd {options.weight_decay}, warm-up + cosine",
        "augmentation": f"shift up to {MAX_SHIFT_PX} px"
        + (", intensity jitter (gamma, gain, blur)" if options.intensity_augment else "")
        + (f", zoom {ZOOM_RANGE[0]}-{ZOOM_RANGE[1]}" if options.zoom_augment else ""),
        "train_data": data_fingerprint(options.data_dirs, [v.record.name for v in train]),
        "val_videos": len(val),
        "history": history,
        "command": options.command,
        "init_weights": init or None,
    }
    save_safetensors_fp16(model.to(memory_format=torch.contiguous_format), weights, config)
    log.note(f"wrote {weights}")
    return TrainResult(weights, len(history), tuple(history), mean, std)


__all__ = ["ARCHITECTURE", "WEIGHTS_NAME", "TrainResult", "train_segmentation"]
