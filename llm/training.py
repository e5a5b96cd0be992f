"""Training the video-text model: stage 1 on video-report pairs, stage 2 on question answering,
AdamW with a cosine schedule (short linear warm-up), lr 1e-4, batch 2 with gradient
accumulation. Only the LoRA adapters and the projector train.

Frame features come from the frozen encoder once per loop, before training, so an epoch costs
only the language model's forward and backward passes.
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from inference.types import Cine
from llm.backend import HFTextModel
from llm.dataset import LlmSample, read_dataset
from llm.hf_imports import transformers_module
from llm.video_text import (
    MAX_FRAMES,
    FrameEncoder,
    VideoTextModel,
    build_video_text,
    encode_frames,
    load_video_text,
    save_adapters,
)

LR = 1e-4
BATCH_SIZE = 2
GRAD_ACCUM = 4
WARMUP_FRACTION = 0.05
WEIGHT_DECAY = 0.0  # LoRA weights start at zero; decaying them only fights the update


@dataclass(frozen=True)
class FeatureSample:
    """One training example with its loop already encoded: ``features`` ``(T, dim)``."""

    id: str
    features: torch.Tensor
    instruction: str
    answer: str


@dataclass(frozen=True)
class FitOptions:
    epochs: int = 1
    max_steps: int | None = None  # optimizer steps; None: the epochs decide
    batch_size: int = BATCH_SIZE
    grad_accum: int = GRAD_ACCUM
    lr: float = LR
    warmup_fraction: float = WARMUP_FRACTION
    max_answer_tokens: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("epochs, batch size and gradient accumulation must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps must be at least 1")
        if not self.lr > 0:
            raise ValueError("lr must be positive")


@dataclass(frozen=True)
class LlmTrainOptions:
    dataset: Path
    out_dir: Path
    fit: FitOptions = FitOptions()
    init_adapter: Path | None = None  # stage 2 continues from stage 1's adapters
    max_frames: int = MAX_FRAMES
    save_dtype: str = "float32"  # "float16" for adapters shipped in the repository


@dataclass(frozen=True)
class LlmTrainResult:
    out_dir: Path
    stage: int
    losses: tuple[float, ...]  # one per optimizer step
    n_samples: int


def _batches(n: int, batch_size: int, rng: random.Random) -> list[list[int]]:
    order = list(range(n))
    rng.shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def fit(
    model: VideoTextModel,
    samples: Sequence[FeatureSample],
    options: FitOptions,
    progress: Callable[[str], None] | None = None,
) -> list[float]:
    """Trains what requires grad in ``model`` (adapters, projector); returns the loss of every
    optimizer step (mean over its micro-batches)."""
    transformers = transformers_module()

    if not samples:
        raise ValueError("no training samples")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter requires grad")
    per_epoch = math.ceil(math.ceil(len(samples) / options.batch_size) / options.grad_accum)
    total = options.max_steps or per_epoch * options.epochs
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=WEIGHT_DECAY)
    schedule = transformers.get_cosine_schedule_with_warmup(
        optimizer, int(options.warmup_fraction * total), total
    )
    rng = random.Random(options.seed)
    torch.manual_seed(options.seed)
    model.train()
    losses: list[float] = []
    micro: list[float] = []
    while len(losses) < total:
        for batch in _batches(len(samples), options.batch_size, rng):
            picked = [samples[i] for i in batch]
            loss = model(
                [s.features for s in picked],
                [s.instruction for s in picked],
                [s.answer for s in picked],
                options.max_answer_tokens,
            )
            (loss / options.grad_accum).backward()
            micro.append(float(loss.detach()))
            if len(micro) == options.grad_accum:
                _step(optimizer, schedule, params)
                losses.append(sum(micro) / len(micro))
                micro = []
                if progress is not None:
                    progress(f"step {len(losses)}/{total} loss {losses[-1]:.4f}")
                if len(losses) == total:
                    break
        if micro and len(losses) < total:  # the epoch's last, partial accumulation
            _step(optimizer, schedule, params)
            losses.append(sum(micro) / len(micro))
            micro = []
    model.eval()
    return losses


def _step(optimizer: torch.optim.Optimizer, schedule: object, params: list[torch.Tensor]) -> None:
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    schedule.step()  # type: ignore[attr-defined]
    optimizer.zero_grad(set_to_none=True)


def load_frames(
    sample: LlmSample, dataset_dir: Path, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """The sample's loop as normalised ``(F, 3, 112, 112)`` frames, exactly as the segmentation
    network sees them (so its backbone's features mean what they meant in training)."""
    path = Path(sample.video)
    if not path.is_absolute():
        path = dataset_dir / path
    if sample.video_format == "dicom":
        from inference.decode import read_cine

        return cine_frames(read_cine(path), mean, std)
    if sample.video_format == "avi":
        from inference.training.echonet_data import load_video

        frames = load_video(path).astype(np.float32)  # (F, H, W, 3), the 112 grid already
        frames = (frames - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(np.moveaxis(frames, -1, 1)))
    raise ValueError(f"{sample.id}: unknown video_format {sample.video_format!r}")


def cine_frames(cine: Cine, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """A decoded loop as normalised ``(F, 3, 112, 112)`` frames, preprocessed as for the
    segmentation network (training and the video-text backend share this)."""
    from inference.preprocess import PreprocessParams, preprocess_cine

    params = PreprocessParams(mean=tuple(mean), std=tuple(std))  # type: ignore[arg-type]
    frames = preprocess_cine(cine, params).frames
    return torch.from_numpy(np.ascontiguousarray(frames))


def encode_samples(
    samples: Sequence[LlmSample],
    dataset_dir: Path,
    encoder: FrameEncoder,
    mean: Sequence[float],
    std: Sequence[float],
    max_frames: int = MAX_FRAMES,
) -> list[FeatureSample]:
    """Every distinct loop encoded once (stage 2 asks several questions about each)."""
    cache: dict[str, torch.Tensor] = {}
    out = []
    for s in samples:
        if s.video not in cache:
            frames = load_frames(s, dataset_dir, mean, std)
            cache[s.video] = encode_frames(encoder, frames, max_frames)
        out.append(FeatureSample(s.id, cache[s.video], s.instruction, s.answer))
    return out


def train_video_text(
    options: LlmTrainOptions,
    base: HFTextModel,
    encoder: FrameEncoder,
    mean: Sequence[float],
    std: Sequence[float],
    encoder_name: str = "",
    progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
) -> LlmTrainResult:
    """Reads the dataset, encodes its loops, trains, and saves adapters and projector into
    ``out_dir`` (the base model's weights are never written)."""
    stage, samples = read_dataset(options.dataset)
    progress(f"stage {stage}: {len(samples)} samples from {options.dataset}")
    features = encode_samples(
        samples, Path(options.dataset).parent, encoder, mean, std, options.max_frames
    )
    if options.init_adapter is not None:
        model = load_video_text(base, options.init_adapter, trainable=True)
    else:
        model = build_video_text(base, encoder.dim, encoder_name, options.fit.seed)
    if model.config.feature_dim != encoder.dim:
        raise ValueError(
            f"adapters expect {model.config.feature_dim}-wide frame features, the encoder gives "
            f"{encoder.dim}"
        )
    losses = fit(model, features, options.fit, progress)
    save_adapters(model, options.out_dir, stage, options.save_dtype)
    progress(f"saved adapters and projector to {options.out_dir}")
    return LlmTrainResult(Path(options.out_dir), stage, tuple(losses), len(samples))
