"""Model presets: which weights the node runs, and the normalisation that goes with them.

* ``demo``: the EchoNet-Dynamic networks at a small width, trained on phantoms only, shipped in
  ``inference/weights/demo/`` as fp16 safetensors whose metadata carries width and mean/std.
  Every surface that shows their numbers must say they come from demo models (``demo=True``).
* ``echonet``: width 1.0 with weights from paths: the published EchoNet-Dynamic ``.pt`` files
  (loaded strictly, ``module.`` prefix stripped) or a lab's own ``echo-agent train`` output
  (``.safetensors``). EchoNet's files carry no normalisation, so the caller passes mean/std
  (configuration, or :func:`compute_mean_std` over the lab's own loops).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from inference.checkpoints import (
    CheckpointError,
    load_echonet_checkpoint,
    load_safetensors,
    read_safetensors_config,
)
from inference.networks import build_deeplabv3_resnet50, build_r2plus1d_18
from inference.training.normalisation import channel_mean_std
from inference.types import Cine

PRESETS = ("demo", "echonet")
DEMO_DIR = Path(__file__).resolve().parent / "weights" / "demo"
DEMO_SEG_FILE = "segmentation.safetensors"
DEMO_EF_FILE = "ef.safetensors"
SEG_ARCHITECTURE = "deeplabv3_resnet50"
EF_ARCHITECTURE = "r2plus1d_18"
MEAN_STD_TOLERANCE = 1e-3  # the two networks of one preset must expect the same input

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class LoadedModels:
    """Both networks in eval mode on ``device``, and the normalisation their inputs need."""

    segmenter: nn.Module
    ef_model: nn.Module | None  # None: the echonet preset was given no EF weights
    mean: Triple
    std: Triple
    demo: bool
    description: str
    preset: str
    seg_config: dict[str, Any]
    ef_config: dict[str, Any] | None


def load_preset(
    name: str,
    *,
    seg_weights: str | os.PathLike[str] | None = None,
    ef_weights: str | os.PathLike[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    device: str | torch.device = "cpu",
    demo_dir: str | os.PathLike[str] | None = None,
) -> LoadedModels:
    """Build and load a preset. Raises ValueError (CheckpointError for unfit files) with the
    cause; ``demo_dir`` points the demo preset at other files (tests, retrained weights)."""
    if name == "demo":
        if seg_weights is not None or ef_weights is not None:
            raise ValueError("the demo preset uses the shipped weights; use 'echonet' for paths")
        loaded = _load_demo(Path(demo_dir) if demo_dir is not None else DEMO_DIR, mean, std)
    elif name == "echonet":
        loaded = _load_echonet(seg_weights, ef_weights, mean, std)
    else:
        raise ValueError(f"unknown model preset {name!r} (known: {', '.join(PRESETS)})")
    loaded.segmenter.to(torch.device(device)).eval()
    if loaded.ef_model is not None:
        loaded.ef_model.to(torch.device(device)).eval()
    return loaded


def _load_demo(
    directory: Path, mean: Sequence[float] | None, std: Sequence[float] | None
) -> LoadedModels:
    if mean is not None or std is not None:
        raise ValueError("the demo preset's normalisation is stored with its weights")
    seg_path, ef_path = directory / DEMO_SEG_FILE, directory / DEMO_EF_FILE
    for path in (seg_path, ef_path):
        if not path.is_file():
            raise ValueError(f"demo weights missing: {path} (see inference/weights/demo/README.md)")
    seg, seg_config = _from_safetensors(seg_path, SEG_ARCHITECTURE)
    ef, ef_config = _from_safetensors(ef_path, EF_ARCHITECTURE)
    seg_mean, seg_std = _config_mean_std(seg_config, seg_path)
    ef_mean, ef_std = _config_mean_std(ef_config, ef_path)
    if not (_close(seg_mean, ef_mean) and _close(seg_std, ef_std)):
        raise ValueError(
            f"demo weights disagree on normalisation ({seg_path}: {seg_mean}/{seg_std}, "
            f"{ef_path}: {ef_mean}/{ef_std}): retrain both on the same data"
        )
    description = (
        f"demo models (phantom-trained, not for clinical use): DeepLabV3-ResNet50 width "
        f"{seg_config['width']}, R(2+1)D-18 width {ef_config['width']}"
    )
    return LoadedModels(
        seg, ef, seg_mean, seg_std, True, description, "demo", seg_config, ef_config
    )


def _load_echonet(
    seg_weights: str | os.PathLike[str] | None,
    ef_weights: str | os.PathLike[str] | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> LoadedModels:
    if seg_weights is None:
        raise ValueError("the echonet preset needs segmentation weights (a .pt or .safetensors)")
    seg, seg_config = _from_path(Path(seg_weights), SEG_ARCHITECTURE)
    ef, ef_config = (None, None)
    if ef_weights is not None:
        ef, ef_config = _from_path(Path(ef_weights), EF_ARCHITECTURE)
    if mean is None and std is None and "mean" in seg_config:
        resolved_mean, resolved_std = _config_mean_std(seg_config, Path(seg_weights))
    elif mean is None or std is None:
        raise ValueError(
            "the echonet preset needs the normalisation mean and std (EchoNet-Dynamic's "
            "checkpoints do not carry them): set them in the configuration or compute them "
            "with 'echo-agent calibrate DIR'"
        )
    else:
        resolved_mean, resolved_std = _triple(mean, "mean"), _triple(std, "std")
    if min(resolved_std) <= 0:
        raise ValueError(f"std must be positive, got {resolved_std}")
    parts = [f"DeepLabV3-ResNet50 from {seg_weights}"]
    parts.append(f"R(2+1)D-18 from {ef_weights}" if ef_weights else "no EF weights")
    return LoadedModels(
        seg,
        ef,
        resolved_mean,
        resolved_std,
        False,
        "echonet (width 1.0): " + ", ".join(parts),
        "echonet",
        seg_config,
        ef_config,
    )


def _build(architecture: str, width: float) -> nn.Module:
    if architecture == SEG_ARCHITECTURE:
        return build_deeplabv3_resnet50(width, num_classes=1)
    return build_r2plus1d_18(width, num_outputs=1)


def _from_safetensors(path: Path, architecture: str) -> tuple[nn.Module, dict[str, Any]]:
    config = read_safetensors_config(path)
    if config.get("architecture") != architecture:
        raise CheckpointError(
            f"{path}: holds {config.get('architecture')!r}, expected {architecture!r}"
        )
    width = config.get("width")
    if not isinstance(width, int | float) or isinstance(width, bool):
        raise CheckpointError(f"{path}: config has no numeric 'width'")
    model = _build(architecture, float(width))
    load_safetensors(path, model)  # strict; fp16 values cast to the model's float32
    return model, config


def _from_path(path: Path, architecture: str) -> tuple[nn.Module, dict[str, Any]]:
    """Width 1.0 from an EchoNet ``.pt`` file, or any width a safetensors config names."""
    if not path.is_file():
        raise ValueError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        return _from_safetensors(path, architecture)
    model = _build(architecture, 1.0)
    info = load_echonet_checkpoint(path, model)
    return model, {
        "architecture": architecture,
        "width": 1.0,
        "source": info.path,
        "epoch": info.epoch,
    }


def _config_mean_std(config: dict[str, Any], path: Path) -> tuple[Triple, Triple]:
    if "mean" not in config or "std" not in config:
        raise CheckpointError(f"{path}: config has no normalisation mean/std")
    try:
        return _triple(config["mean"], "mean"), _triple(config["std"], "std")
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc


def _triple(values: Sequence[float], label: str) -> Triple:
    try:
        v = [float(x) for x in values]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{label} must be three numbers, got {values!r}") from exc
    if len(v) != 3 or not all(np.isfinite(v)):
        raise ValueError(f"{label} must be three finite numbers (R, G, B), got {values!r}")
    return (v[0], v[1], v[2])


def _close(a: Triple, b: Triple) -> bool:
    return bool(np.allclose(a, b, rtol=0.0, atol=MEAN_STD_TOLERANCE))


def compute_mean_std(items: Iterable[str | os.PathLike[str] | Cine]) -> tuple[Triple, Triple]:
    """Normalisation of a lab's own loops, for weights that do not carry one (EchoNet's).

    Items are EchoNet-layout ``.avi`` videos (already the 112 grid), DICOM files, or decoded
    ``Cine`` objects; the last two go through the node's own preprocessing first (fan masked,
    cropped, 112x112), so the statistics describe exactly what the networks will be fed.
    """
    return channel_mean_std(_grid_frames(item) for item in items)


def _grid_frames(item: str | os.PathLike[str] | Cine) -> np.ndarray:
    from inference.preprocess import PreprocessParams, preprocess_cine

    if isinstance(item, Cine):
        cine = item
    else:
        path = Path(item)
        if path.suffix.lower() == ".avi":
            from inference.training.echonet_data import load_video

            return load_video(path)
        from inference.decode import read_cine

        cine = read_cine(path)
    identity = PreprocessParams(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    frames = preprocess_cine(cine, identity).frames  # (frames, 3, S, S), raw 0..255 values
    return np.moveaxis(frames, 1, -1)


__all__ = [
    "DEMO_DIR",
    "PRESETS",
    "LoadedModels",
    "compute_mean_std",
    "load_preset",
]
