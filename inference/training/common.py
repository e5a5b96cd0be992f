"""What both training scripts share: options, device set-up, schedule, progress, checkpoints.

Determinism is by construction rather than by saved generator state: every random draw of an
epoch (shuffle order, clip starts, shifts) comes from a generator seeded with ``(seed, epoch)``,
and torch's global generator (dropout) is re-seeded at each epoch start. A run resumed after
epoch k therefore continues exactly like an uninterrupted one; the torch RNG state is saved as
well so a checkpoint is self-describing.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

CHECKPOINT_NAME = "checkpoint.pt"
WARMUP_FRACTION = 0.05
PHANTOM_NAME = re.compile(r"^0X([0-9A-F]{8})([0-9A-F]{8})$")


@dataclass(frozen=True)
class TrainOptions:
    """One training run. ``command`` is recorded in the weights' config for reproduction."""

    data_dir: Path
    out_dir: Path
    epochs: int
    width: float
    seed: int = 0
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    resume: bool = False
    threads: int = 2
    progress_every: int = 10
    device: str = "auto"
    command: str = ""
    max_train_videos: int | None = None  # a prefix of the training split, for quick runs
    # stop (checkpoint written) after this many epochs of the planned ``epochs``: a time-boxed
    # or interrupted run, continued later with ``resume``; the schedule still spans ``epochs``
    stop_after_epochs: int | None = None
    # start from these weights (a previous run's .safetensors, same network and width) with a
    # fresh optimizer and schedule: a second, documented training stage
    init_weights: Path | None = None
    # more EchoNet-layout folders trained on with ``data_dir`` (their union, in this order)
    extra_data_dirs: tuple[Path, ...] = ()
    # random gamma, gain and blur per sample (``transforms.intensity_jitter``): scanners and
    # labs differ in grey map, gain and resolution far more than any one simulator draws
    intensity_augment: bool = False
    # a random S or inverse-S tone curve and tint per sample (``transforms.tone_tint_jitter``)
    tone_tint_augment: bool = False
    # a random zoom about the grid's centre per sample (``transforms.zoom_jitter``; the
    # segmentation's mask takes its image's zoom): depth and sector angle change the heart's
    # size on the grid from lab to lab
    zoom_augment: bool = False
    log: TextIO = field(default=sys.stderr, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"--epochs must be at least 1, got {self.epochs}")
        if not (self.width > 0 and math.isfinite(self.width)):
            raise ValueError(f"--width must be a positive number, got {self.width}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.seed < 0:
            raise ValueError(f"--seed must be non-negative, got {self.seed}")
        if not (self.lr > 0):
            raise ValueError(f"learning rate must be positive, got {self.lr}")
        if self.stop_after_epochs is not None and self.stop_after_epochs < 1:
            raise ValueError(f"stop_after_epochs must be >= 1, got {self.stop_after_epochs}")
        for d in self.data_dirs:
            if not Path(d).is_dir():
                raise ValueError(f"--data {d} is not a directory")

    @property
    def data_dirs(self) -> tuple[Path, ...]:
        return (Path(self.data_dir), *(Path(d) for d in self.extra_data_dirs))


@dataclass(frozen=True)
class Runtime:
    """Where tensors live and whether CUDA-only speed-ups (autocast, loader workers) apply."""

    device: torch.device
    amp_dtype: torch.dtype | None
    loader_workers: int

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def make_runtime(options: TrainOptions) -> Runtime:
    """CUDA gets bf16 (or fp16) autocast and loader workers; the CPU gets neither, because both
    cost more than they save there, and a fixed thread count so colleagues' jobs keep a core."""
    name = options.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but CUDA is not available")
    device = torch.device(name)
    if device.type == "cuda":
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return Runtime(device, amp, loader_workers=min(8, os.cpu_count() or 1))
    torch.set_num_threads(max(1, options.threads))
    return Runtime(device, None, loader_workers=0)


def init_from(model: nn.Module, options: TrainOptions, architecture: str) -> dict[str, Any]:
    """Load ``options.init_weights`` into ``model`` (strict); return provenance for the config."""
    from inference.checkpoints import load_safetensors, read_safetensors_config

    path = options.init_weights
    if path is None:
        return {}
    if not Path(path).is_file():
        raise ValueError(f"--init {path}: file not found")
    previous = read_safetensors_config(path)
    if previous.get("architecture") != architecture or previous.get("width") != options.width:
        raise ValueError(
            f"--init {path} holds {previous.get('architecture')} width {previous.get('width')}, "
            f"this run trains {architecture} width {options.width}"
        )
    load_safetensors(path, model)
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return {"path": str(path), "sha256": digest, "command": previous.get("command", "")}


def last_epoch(options: TrainOptions) -> int:
    """Epoch index to stop before: ``epochs`` or the earlier stop asked for."""
    if options.stop_after_epochs is None:
        return options.epochs
    return min(options.epochs, options.stop_after_epochs)


def epoch_generator(seed: int, epoch: int, salt: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, salt])


def item_generator(seed: int, epoch: int, index: int) -> np.random.Generator:
    """One generator per (epoch, sample): independent of loader workers and batch order."""
    return np.random.default_rng([seed, epoch, index, 7])


def cosine_with_warmup(total_steps: int) -> Callable[[int], float]:
    """Linear warm-up over 5 % of the steps, then cosine decay to zero: robust from scratch
    without a learning-rate search."""
    warmup = max(1, int(total_steps * WARMUP_FRACTION))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def make_optimizer(
    model: nn.Module, options: TrainOptions, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (no decay on norms and biases): trains from scratch in few epochs, which SGD with
    EchoNet's small learning rate (meant for pretrained weights) does not."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": options.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=options.lr,
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(options.epochs * steps_per_epoch)
    )
    return optimizer, schedule


class Progress:
    """One line every ``every`` steps: epoch, step, mean loss since the last line, steps/s, ETA
    of the whole run (no tqdm here: a plain line also reads well in a log file)."""

    def __init__(self, label: str, total_steps: int, done_steps: int, every: int, out: TextIO):
        self.label = label
        self.total = total_steps
        self.done = done_steps
        self.every = max(1, every)
        self.out = out
        self._start = time.monotonic()
        self._steps_here = 0
        self._losses: list[float] = []

    def step(self, epoch: int, epochs: int, step: int, steps: int, loss: float) -> None:
        self.done += 1
        self._steps_here += 1
        self._losses.append(loss)
        if step % self.every and step != steps:
            return
        elapsed = time.monotonic() - self._start
        rate = self._steps_here / elapsed if elapsed > 0 else 0.0
        eta_s = (self.total - self.done) / rate if rate > 0 else float("nan")
        self.out.write(
            f"{self.label} epoch {epoch + 1}/{epochs} step {step}/{steps} "
            f"loss {np.mean(self._losses):.4f} {rate:.2f} steps/s ETA {_clock(eta_s)}\n"
        )
        self.out.flush()
        self._losses.clear()

    def note(self, text: str) -> None:
        self.out.write(f"{self.label} {text}\n")
        self.out.flush()


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def save_checkpoint(
    out_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LambdaLR,
    epoch: int,
    history: list[dict[str, float]],
) -> Path:
    """Written after each epoch (``epoch`` = epochs completed), atomically: a run killed while
    saving keeps the previous checkpoint."""
    path = Path(out_dir) / CHECKPOINT_NAME
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "history": history,
        },
        tmp,
    )
    os.replace(tmp, path)
    return path


def load_checkpoint(
    out_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LambdaLR,
) -> tuple[int, list[dict[str, float]]]:
    """Restore a run; returns (epochs completed, per-epoch history)."""
    path = Path(out_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise ValueError(f"--resume: no {CHECKPOINT_NAME} in {out_dir}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ValueError(
            f"--resume: {path} does not fit this run (different --width or network?): {exc}"
        ) from exc
    schedule.load_state_dict(state["schedule"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["epoch"]), list(state.get("history", []))


def data_fingerprint(data_dirs: Path | Sequence[Path], names: Sequence[str]) -> dict[str, Any]:
    """What identifies the training data in the weights' config: the folder(s), the video
    count, a digest of the names used, and the phantom seed when the names are the
    generator's (``0X<seed><i>`` with one seed and indices 0..n-1)."""
    digest = hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()
    dirs = [data_dirs] if isinstance(data_dirs, (str, Path)) else list(data_dirs)
    where: Any = str(dirs[0]) if len(dirs) == 1 else [str(d) for d in dirs]
    out: dict[str, Any] = {"dir": where, "videos": len(names), "names_sha256": digest}
    seeds = set()
    for name in names:
        m = PHANTOM_NAME.match(name)
        if m is None:
            return out
        seeds.add(int(m.group(1), 16))
    if len(seeds) == 1:
        out["phantom_seed"] = seeds.pop()
    return out


def autocast(runtime: Runtime) -> Any:
    if runtime.amp_dtype is None:
        return torch.autocast("cpu", enabled=False)
    return torch.autocast("cuda", dtype=runtime.amp_dtype)


def make_scaler(runtime: Runtime) -> torch.amp.GradScaler:
    """fp16 needs loss scaling; bf16 and fp32 do not (a disabled scaler is a no-op)."""
    return torch.amp.GradScaler("cuda", enabled=runtime.amp_dtype == torch.float16)


def epoch_shape(n_items: int, batch_size: int) -> tuple[bool, int]:
    """(drop_last, optimizer steps per epoch): the last short batch is dropped unless it is
    the only one, because BatchNorm cannot train on a batch of one."""
    drop_last = n_items > batch_size
    return drop_last, max(1, n_items // batch_size if drop_last else 1)


@dataclass
class EpochRun:
    """What differs between the segmentation and EF runs; the epochs around it are shared
    (``run_epochs``) so that seeding, resuming and checkpoints behave the same for both.

    ``dataset`` draws its augmentation from ``set_epoch``; ``batch_loss`` maps one loader
    batch to the loss (forward pass under autocast included); ``validate`` measures the model
    after an epoch (an empty dict when there is no validation split); ``loss_key`` names the
    mean training loss in the history."""

    label: str
    model: nn.Module
    dataset: Dataset[Any]
    batch_loss: Callable[[Sequence[torch.Tensor]], torch.Tensor]
    validate: Callable[[], dict[str, float]]
    loss_key: str


def run_epochs(
    run: EpochRun,
    options: TrainOptions,
    runtime: Runtime,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LambdaLR,
    out_dir: Path,
    log: Progress,
) -> list[dict[str, float]]:
    """Trains from the first epoch not done (``options.resume``: from the checkpoint in
    ``out_dir``) to ``last_epoch``, saving a checkpoint after each; returns the history."""
    drop_last, steps_per_epoch = epoch_shape(len(run.dataset), options.batch_size)  # type: ignore[arg-type]
    scaler = make_scaler(runtime)
    start_epoch, history = 0, []
    if options.resume:
        start_epoch, history = load_checkpoint(out_dir, run.model, optimizer, schedule)
        log.note(f"resumed after epoch {start_epoch}")
    progress = Progress(
        run.label,
        options.epochs * steps_per_epoch,
        start_epoch * steps_per_epoch,
        options.progress_every,
        options.log,
    )
    for epoch in range(start_epoch, last_epoch(options)):
        torch.manual_seed(options.seed * 1_000_003 + epoch)
        run.dataset.set_epoch(epoch)  # type: ignore[attr-defined]
        order = torch.Generator().manual_seed(options.seed * 1_000_003 + epoch)
        loader = DataLoader(
            run.dataset,
            batch_size=options.batch_size,
            shuffle=True,
            generator=order,
            drop_last=drop_last,
            num_workers=runtime.loader_workers,
            pin_memory=runtime.cuda,
        )
        run.model.train()
        losses = []
        for step, batch in enumerate(loader, start=1):
            loss = run.batch_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            losses.append(loss.item())
            progress.step(epoch, options.epochs, step, len(loader), losses[-1])
        record = {"epoch": epoch + 1, run.loss_key: float(np.mean(losses))}
        record.update(run.validate())
        history.append(record)
        progress.note(" ".join(f"{k} {v:.4g}" for k, v in record.items()))
        save_checkpoint(out_dir, run.model, optimizer, schedule, epoch + 1, history)
    return history
