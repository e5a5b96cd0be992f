"""One loop end to end: preprocess -> segment every frame -> EF per clip -> measurements.

The two networks enter through two small protocols, so the pipeline runs the real DeepLabV3 /
R(2+1)D (``TorchSegmenter`` / ``TorchEFModel``), a future export (ONNX, TensorRT), or, in the
tests, an oracle that returns the phantom's true masks and EF, which proves the plumbing end to
end without trained weights.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from inference.beats import CLIP_LENGTH_FRAMES, CLIP_PERIOD_FRAMES, clip_frame_indices
from inference.calibration import without_untrusted_spacing
from inference.ecg import with_burned_in_ecg
from inference.gate import GateSettings, apply_gate, gather_evidence
from inference.measure import measure_cine
from inference.networks import build_deeplabv3_resnet50, build_r2plus1d_18
from inference.preprocess import Preprocessed, PreprocessParams, preprocess_cine
from inference.types import Cine, Measurements

DEFAULT_FRAME_BATCH = 32
DEFAULT_CLIP_BATCH = 8  # one 32 x 112 x 112 clip is ~4.8 MB as float32


class Segmenter(Protocol):
    def segment(self, batch_112: np.ndarray) -> np.ndarray:
        """(frames, 3, S, S) float32 normalised frames -> (frames, S, S) LV probabilities."""
        ...


class EFModel(Protocol):
    def predict_ef(self, clips: np.ndarray) -> np.ndarray:
        """(clips, 3, 32, S, S) float32 normalised clips -> (clips,) EF in percent."""
        ...


@dataclass(frozen=True)
class LoopAnalysis:
    """The measurements plus what reporting needs to draw them: the network input, the LV
    probability on the grid, and the transform back to source pixels."""

    measurements: Measurements  # after the validity gate: what the node stands behind
    preprocessed: Preprocessed
    lv_probability: np.ndarray  # (frames, S, S) float32, zero outside the fan
    # before the gate, for evaluations that score what the gate withholds; never reported
    ungated: Measurements | None = None

    def lv_masks_source(self, threshold: float = 0.5) -> np.ndarray:
        """(frames, rows, cols) bool LV masks at source resolution."""
        return _masks_to_source(self.preprocessed, self.lv_probability, threshold)


def analyze_cine(
    cine: Cine,
    segmenter: Segmenter,
    ef_model: EFModel | None,
    preprocess_params: PreprocessParams,
    gate: GateSettings | None = None,
) -> Measurements:
    """Measurements of one A4C loop (see ``run_analysis`` for the pieces behind them)."""
    return run_analysis(cine, segmenter, ef_model, preprocess_params, gate=gate).measurements


def run_analysis(
    cine: Cine,
    segmenter: Segmenter,
    ef_model: EFModel | None,
    preprocess_params: PreprocessParams,
    *,
    clip_batch: int = DEFAULT_CLIP_BATCH,
    all_clip_stride: int = 1,
    timings_s: dict[str, float] | None = None,
    gate: GateSettings | None = None,
) -> LoopAnalysis:
    """Preprocesses, segments all frames in one call, runs the EF model on the clips the
    measurements ask for (every start, or every ``all_clip_stride``-th, plus each beat's
    ES-aligned clip) in batches of ``clip_batch``, and measures.

    ``timings_s``, when given, receives the wall time of each stage (``preprocess_s``,
    ``segmentation_s``, ``ef_s``, ``measurements_s``) so benchmarks and job logs can say where
    the time went without a profiler."""
    clock = _StageClock(timings_s)
    with clock("preprocess_s"):
        pre = preprocess_cine(cine, preprocess_params)
    with clock("segmentation_s"):
        probability = np.asarray(segmenter.segment(pre.frames), dtype=np.float32)
    return finish_analysis(
        cine,
        pre,
        probability,
        ef_model,
        clip_batch=clip_batch,
        all_clip_stride=all_clip_stride,
        timings_s=timings_s,
        gate=gate,
    )


def finish_analysis(
    cine: Cine,
    pre: Preprocessed,
    probability: np.ndarray,
    ef_model: EFModel | None,
    *,
    clip_batch: int = DEFAULT_CLIP_BATCH,
    all_clip_stride: int = 1,
    timings_s: dict[str, float] | None = None,
    gate: GateSettings | None = None,
) -> LoopAnalysis:
    """What follows segmentation, once every frame has its LV probability: EF per clip and
    the measurements. Shared by ``run_analysis`` and the overlapped ``inference.stream``, so
    both paths measure the same way."""
    clock = _StageClock(timings_s)
    expected = (pre.frames.shape[0], *pre.frames.shape[2:])
    if probability.shape != expected:
        raise ValueError(f"the segmenter returned shape {probability.shape}, expected {expected}")
    with clock("measurements_s"):
        probability = np.clip(probability, 0.0, 1.0) * pre.sector_mask
        masks = _masks_to_source(pre, probability, 0.5)
        clip_ef = None
        if ef_model is not None:
            clip_ef = clock.timed("ef_s", _clip_predictor(pre.frames, ef_model, clip_batch))
        # calibration check (issue #14): a region that does not hold the fan gives no volumes
        source_fan = pre.source_sector_mask()
        cine = without_untrusted_spacing(cine, source_fan)
        # beat timing from the ECG trace burned into the frames (issue #14), when the header
        # gave no ECG waveform: the R waves become the EDs in ``measure_cine``
        cine = with_burned_in_ecg(cine, source_fan)
        measurements = measure_cine(
            cine,
            masks,
            clip_ef,
            transducer_px=pre.transform.transducer_px,
            sector_mask=source_fan,
            all_clip_stride=all_clip_stride,
        )
    clock.exclude("measurements_s", "ef_s")  # EF ran inside the measurement step
    # the validity gate, always: with no settings given, the default thresholds (no OOD check)
    settings = gate if gate is not None else GateSettings()
    with clock("gate_s"):
        evidence = gather_evidence(
            measurements,
            probability,
            pre.sector_mask,
            pre.frames,
            cine.heart_rate_bpm,
            settings.ood_reference,
        )
        gated = apply_gate(measurements, evidence, settings.thresholds)
    return LoopAnalysis(
        measurements=gated, preprocessed=pre, lv_probability=probability, ungated=measurements
    )


class _StageClock:
    """Adds wall time per stage into a caller's dict (or does nothing without one)."""

    def __init__(self, sink: dict[str, float] | None) -> None:
        self.sink = sink

    def __call__(self, stage: str) -> _StageTimer:
        return _StageTimer(self, stage)

    def add(self, stage: str, seconds: float) -> None:
        if self.sink is not None:
            self.sink[stage] = self.sink.get(stage, 0.0) + seconds

    def timed(
        self, stage: str, func: Callable[[np.ndarray], np.ndarray]
    ) -> Callable[[np.ndarray], np.ndarray]:
        self.add(stage, 0.0)

        def wrapper(starts: np.ndarray) -> np.ndarray:
            with self(stage):
                return func(starts)

        return wrapper

    def exclude(self, outer: str, inner: str) -> None:
        if self.sink is not None and inner in self.sink and outer in self.sink:
            self.sink[outer] -= self.sink[inner]


class _StageTimer:
    def __init__(self, clock: _StageClock, stage: str) -> None:
        self.clock, self.stage = clock, stage

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *_exc: object) -> None:
        self.clock.add(self.stage, time.perf_counter() - self.started)


def build_clips(
    frames: np.ndarray,
    starts: np.ndarray,
    length: int = CLIP_LENGTH_FRAMES,
    period: int = CLIP_PERIOD_FRAMES,
) -> np.ndarray:
    """(frames, 3, S, S) -> (clips, 3, length, S, S); samples past the loop's end are zero,
    i.e. the normalisation mean (see ``inference.beats``)."""
    n, channels, height, width = frames.shape
    out = np.zeros((len(starts), channels, length, height, width), np.float32)
    for k, start in enumerate(starts):
        idx = clip_frame_indices(int(start), n, length, period)
        valid = idx >= 0
        out[k][:, valid] = frames[idx[valid]].transpose(1, 0, 2, 3)
    return out


def _clip_predictor(
    frames: np.ndarray, ef_model: EFModel, clip_batch: int
) -> Callable[[np.ndarray], np.ndarray]:
    if clip_batch < 1:
        raise ValueError(f"clip_batch must be >= 1, got {clip_batch}")

    def predict(starts: np.ndarray) -> np.ndarray:
        values = []
        for i in range(0, len(starts), clip_batch):
            chunk = starts[i : i + clip_batch]
            ef = np.asarray(ef_model.predict_ef(build_clips(frames, chunk)), np.float64)
            values.append(ef.reshape(-1))
        return np.concatenate(values) if values else np.zeros(0)

    return predict


def _masks_to_source(pre: Preprocessed, probability: np.ndarray, threshold: float) -> np.ndarray:
    rows, cols = pre.transform.source_shape_px
    out = np.zeros((probability.shape[0], rows, cols), bool)
    for i, p in enumerate(probability):
        out[i] = pre.transform.mask_to_source(p, threshold)
    return out


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
