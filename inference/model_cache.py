"""The networks a node runs: torch wrappers, the device, loading a preset once per process.

The networks are loaded once per process (a worker thread pool shares them; torch modules in
eval mode under inference_mode are safe to call from several threads) and the load time is kept,
because a node that spends 20 s loading weights should say so rather than look hung. Loading
takes plain ``ModelSettings``, so the caller's configuration format stays the caller's.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from inference.analyze import DEFAULT_CLIP_BATCH, DEFAULT_FRAME_BATCH, AnalysisResult
from inference.gate import GateSettings, GateThresholds
from inference.networks import build_deeplabv3_resnet50, build_r2plus1d_18
from inference.ood import REFERENCE_FILE_NAME, load_reference
from inference.preprocess import PreprocessParams
from inference.presets import DEMO_DIR, load_preset

log = logging.getLogger("echo_agent.analysis")


@dataclass(frozen=True)
class ModelSettings:
    """Which networks to load and how: ``preset`` (``demo`` | ``echonet``), weight files for
    ``echonet``, the input normalisation (empty: the preset's), ``device`` (``auto`` | ``cpu``
    | ``cuda``), the gate's thresholds and its out-of-distribution reference file (None: the
    one shipped beside the demo weights, for the demo preset)."""

    preset: str = "demo"
    device: str = "auto"
    seg_weights: str | None = None
    ef_weights: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    gate_thresholds: GateThresholds = field(default_factory=GateThresholds)
    ood_reference: Path | None = None


@dataclass(frozen=True)
class Models:
    """Loaded networks wrapped for inference, and what every surface must say about them."""

    segmenter: TorchSegmenter
    ef_model: TorchEFModel | None
    params: PreprocessParams
    demo: bool
    description: str
    preset: str
    load_time_s: float
    gate: GateSettings = field(default_factory=GateSettings)


def resolve_device(setting: str) -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise ValueError("models.device is 'cuda' but no CUDA device is available")
    return setting


def load_models(settings: ModelSettings) -> Models:
    """Builds the preset; raises ValueError (with the cause) for unusable weights."""
    started = time.perf_counter()
    device = resolve_device(settings.device)
    loaded = load_preset(
        settings.preset,
        seg_weights=settings.seg_weights,
        ef_weights=settings.ef_weights,
        mean=settings.mean,
        std=settings.std,
        device=device,
    )
    models = Models(
        segmenter=TorchSegmenter(loaded.segmenter, device=device),
        ef_model=None if loaded.ef_model is None else TorchEFModel(loaded.ef_model, device=device),
        params=PreprocessParams(mean=loaded.mean, std=loaded.std),
        demo=loaded.demo,
        description=loaded.description,
        preset=loaded.preset,
        load_time_s=time.perf_counter() - started,
        gate=gate_settings(settings, loaded.preset),
    )
    log.info("models loaded in %.1f s on %s: %s", models.load_time_s, device, models.description)
    return models


def gate_settings(settings: ModelSettings, preset: str) -> GateSettings:
    """The thresholds and the model set's out-of-distribution reference: the given file, else
    the one shipped beside the demo weights (``echonet`` ships none)."""
    if settings.ood_reference is not None:
        path = settings.ood_reference.expanduser()
        reference = load_reference(path)
        if reference is None:
            raise ValueError(f"gate.ood_reference {path} does not exist")
    else:
        reference = load_reference(DEMO_DIR / REFERENCE_FILE_NAME) if preset == "demo" else None
    return GateSettings(thresholds=settings.gate_thresholds, ood_reference=reference)


class ModelCache:
    """Loads the models on first use, once, however many workers ask at the same time.
    ``loader`` None: ``load_models``, looked up when the models are first asked for."""

    def __init__(
        self, settings: ModelSettings, loader: Callable[[ModelSettings], Models] | None = None
    ) -> None:
        self.settings = settings
        self._loader = loader
        self._lock = threading.Lock()
        self._models: Models | None = None

    def get(self) -> Models:
        with self._lock:
            if self._models is None:
                load = self._loader if self._loader is not None else load_models
                self._models = load(self.settings)
            return self._models


def measurements_document(result: AnalysisResult, models: Models) -> dict[str, object]:
    """The JSON the node prints, stores and grounds reports on: measurements plus provenance."""
    document = dict(result.analysis.measurements.to_json())
    document["sop_instance_uid"] = result.cine.sop_instance_uid
    document["models"] = {
        "preset": models.preset,
        "demo": models.demo,
        "description": models.description,
    }
    return document


class TorchSegmenter:
    """DeepLabV3 (one LV logit) as a ``Segmenter``: sigmoid probabilities, frames batched,
    no autograd, channels-last memory (faster convolutions on CPU and GPU)."""

    def __init__(
        self,
        model: nn.Module,
        *,
        batch_size: int = DEFAULT_FRAME_BATCH,
        device: str | torch.device = "cpu",
        channels_last: bool = True,
    ) -> None:
        self.runner = _BatchRunner(model, batch_size, device, torch.channels_last, channels_last)
        self.model = self.runner.model

    @property
    def batch_size(self) -> int:
        """Frames per forward pass (callers that feed chunks align them to it)."""
        return self.runner.batch_size

    @classmethod
    def build(cls, width: float = 1.0, **kwargs: object) -> TorchSegmenter:
        """A randomly initialised network (load weights into ``.model`` afterwards)."""
        return cls(build_deeplabv3_resnet50(width), **kwargs)  # type: ignore[arg-type]

    def segment(self, batch_112: np.ndarray) -> np.ndarray:
        frames = np.asarray(batch_112, dtype=np.float32)
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"expected (frames, 3, S, S), got {frames.shape}")
        out = self.runner.run(frames, lambda logits: torch.sigmoid(logits[:, 0]))
        return np.concatenate(out) if out else np.zeros((0, *frames.shape[2:]), np.float32)


class TorchEFModel:
    """R(2+1)D-18 (one output, EF in percent) as an ``EFModel``: clips batched, no autograd,
    channels-last-3d memory."""

    def __init__(
        self,
        model: nn.Module,
        *,
        batch_size: int = DEFAULT_CLIP_BATCH,
        device: str | torch.device = "cpu",
        channels_last: bool = True,
    ) -> None:
        self.runner = _BatchRunner(model, batch_size, device, torch.channels_last_3d, channels_last)
        self.model = self.runner.model

    @classmethod
    def build(cls, width: float = 1.0, **kwargs: object) -> TorchEFModel:
        """A randomly initialised network (load weights into ``.model`` afterwards)."""
        return cls(build_r2plus1d_18(width), **kwargs)  # type: ignore[arg-type]

    def predict_ef(self, clips: np.ndarray) -> np.ndarray:
        data = np.asarray(clips, dtype=np.float32)
        if data.ndim != 5 or data.shape[1] != 3:
            raise ValueError(f"expected (clips, 3, frames, S, S), got {data.shape}")
        out = self.runner.run(data, lambda y: y[:, 0])
        return np.concatenate(out) if out else np.zeros(0, np.float32)


class _BatchRunner:
    """What both wrappers share: the network in eval mode on its device and memory format,
    fed in batches without autograd (bf16 autocast on CUDA)."""

    def __init__(
        self,
        model: nn.Module,
        batch_size: int,
        device: str | torch.device,
        fast_format: torch.memory_format,
        channels_last: bool,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.memory_format = fast_format if channels_last else torch.contiguous_format
        self.model = model.eval().to(self.device, memory_format=self.memory_format)
        self.batch_size = int(batch_size)

    def run(
        self, data: np.ndarray, head: Callable[[torch.Tensor], torch.Tensor]
    ) -> list[np.ndarray]:
        out = []
        with torch.inference_mode(), _autocast(self.device):
            for i in range(0, len(data), self.batch_size):
                x = torch.from_numpy(data[i : i + self.batch_size]).to(self.device)
                y = self.model(x.contiguous(memory_format=self.memory_format))
                out.append(head(y.float()).cpu().numpy())
        return out


def _autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on CUDA (tensor cores, half the memory traffic); full precision on CPU,
    where bf16 convolutions are slower than fp32 on most processors."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
