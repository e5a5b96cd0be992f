"""One loop end to end, as declared stages: decode -> preprocess -> segment -> checks -> EF ->
measure -> gate, run by ``inference.stages``. ``analyse`` is the one entry: jobs, the
``echo-agent analyze`` and ``evaluate`` commands and the benches all call it.

The two networks enter through two small protocols, so the stages run the real DeepLabV3 /
R(2+1)D (``inference.model_cache.TorchSegmenter`` / ``TorchEFModel``), a future export (ONNX,
TensorRT), or, in the tests, an oracle that returns the phantom's true masks and EF, which
proves the plumbing end to end without trained weights.

A file (path, file object, dataset) is decoded on a background thread while the frames already
decoded are preprocessed and segmented (``inference.stream``); a loop decoded before is
analysed as it is. Both give the same numbers: the segmenter sees the same batches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import numpy as np

from inference.beats import clip_period_for
from inference.calibration import without_untrusted_spacing
from inference.ecg import with_burned_in_ecg
from inference.ef_clips import clip_lookup, clip_predictor
from inference.gate import GateSettings, apply_gate, gather_evidence
from inference.measure import ef_clip_starts, measure_cine
from inference.preprocess import Preprocessed, PreprocessParams, SectorShaper
from inference.stages import Stage, StageTimings, run_stages
from inference.stream import FrameSource, LoopSource, open_frames
from inference.types import Cine, Measurements

DEFAULT_FRAME_BATCH = 32
DEFAULT_CLIP_BATCH = 8  # one 32 x 112 x 112 clip is ~4.8 MB as float32

log = logging.getLogger(__name__)


class Segmenter(Protocol):
    def segment(self, batch_112: np.ndarray) -> np.ndarray:
        """(frames, 3, S, S) float32 normalised frames -> (frames, S, S) LV probabilities."""
        ...


class EFModel(Protocol):
    def predict_ef(self, clips: np.ndarray) -> np.ndarray:
        """(clips, 3, 32, S, S) float32 normalised clips -> (clips,) EF in percent."""
        ...


class AnalysisModels(Protocol):
    """What ``analyse`` needs of a model set (``Networks``, ``model_cache.Models``)."""

    @property
    def segmenter(self) -> Segmenter: ...

    @property
    def ef_model(self) -> EFModel | None: ...

    @property
    def params(self) -> PreprocessParams: ...

    @property
    def gate(self) -> GateSettings: ...


@dataclass(frozen=True)
class Networks:
    """A model set without provenance: what tests, benches and evaluations build by hand."""

    segmenter: Segmenter
    ef_model: EFModel | None
    params: PreprocessParams
    gate: GateSettings = field(default_factory=GateSettings)


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


@dataclass(frozen=True)
class DecodeOverlap:
    """How decoding met the analysis, in ms: the decoding thread's busy time, the time the
    preprocess and segment stages waited for frames, and the shaping (mask, crop, resize,
    normalise) done batch by batch inside the segment stage. Zero waits for a decoded loop."""

    decoded_here: bool
    busy_ms: float = 0.0
    preprocess_wait_ms: float = 0.0
    segment_wait_ms: float = 0.0
    shaping_ms: float = 0.0


@dataclass(frozen=True)
class AnalysisResult:
    """What ``analyse`` returns: the decoded loop, its analysis and each stage's time."""

    cine: Cine
    analysis: LoopAnalysis
    timings: StageTimings
    overlap: DecodeOverlap
    ef_estimated: bool  # an EF model ran (``ef_s`` is reported)

    def timings_s(self) -> dict[str, float]:
        """Seconds per part under the keys job logs and benches have always used
        (``decode_s`` is the decoding thread's time plus opening the file, ``decode_wait_s``
        the part of it the analysis waited for; ``measurements_s`` the checks and the
        measurements; ``ef_s`` only when an EF model ran)."""
        t, o = self.timings, self.overlap
        out: dict[str, float] = {}
        if o.decoded_here:
            out["decode_s"] = (t.ms("decode") + o.busy_ms) / 1000.0
            out["decode_wait_s"] = (o.preprocess_wait_ms + o.segment_wait_ms) / 1000.0
        out["preprocess_s"] = (t.ms("preprocess") - o.preprocess_wait_ms + o.shaping_ms) / 1000.0
        out["segmentation_s"] = (t.ms("segment") - o.segment_wait_ms - o.shaping_ms) / 1000.0
        if self.ef_estimated:
            out["ef_s"] = t.ms("ef") / 1000.0
        out["measurements_s"] = (t.ms("checks") + t.ms("measure")) / 1000.0
        out["gate_s"] = t.ms("gate") / 1000.0
        return out


# --- the values passed between stages -------------------------------------------------------


@dataclass(frozen=True)
class LoopInput:
    source: LoopSource  # a file, file object or dataset to decode; or a decoded Cine


@dataclass(frozen=True)
class DecodingLoop:
    frames: FrameSource  # decoding (on its thread) or decoded


@dataclass(frozen=True)
class ShapedLoop:
    frames: FrameSource
    shaper: SectorShaper  # the fan and transform, fitted on the fan sample
    waited_ms: float


@dataclass(frozen=True)
class SegmentedLoop:
    cine: Cine
    preprocessed: Preprocessed
    lv_probability: np.ndarray  # clipped to [0, 1], zero outside the fan
    masks_source: np.ndarray  # (frames, rows, cols) bool at source resolution
    overlap: DecodeOverlap

    @classmethod
    def of(
        cls,
        cine: Cine,
        pre: Preprocessed,
        probability: np.ndarray,
        overlap: DecodeOverlap = DecodeOverlap(decoded_here=False),
    ) -> SegmentedLoop:
        """The segmenter's output made what the later stages read: clipped to [0, 1], zero
        outside the fan, and the LV masks at source resolution."""
        expected = (pre.frames.shape[0], *pre.frames.shape[2:])
        if probability.shape != expected:
            raise ValueError(
                f"the segmenter returned shape {probability.shape}, expected {expected}"
            )
        clipped = np.clip(probability, 0.0, 1.0) * pre.sector_mask
        return cls(cine, pre, clipped, _masks_to_source(pre, clipped, 0.5), overlap)


@dataclass(frozen=True)
class CheckedLoop:
    segmented: SegmentedLoop
    cine: Cine  # untrusted spacing dropped, burned-in ECG read (issue #14)
    source_fan: np.ndarray


@dataclass(frozen=True)
class EFEstimates:
    checked: CheckedLoop
    ef_by_start: Mapping[int, float] | None  # None: no EF model


@dataclass(frozen=True)
class MeasuredLoop:
    checked: CheckedLoop
    measurements: Measurements
    ef_estimated: bool


# --- the stages -----------------------------------------------------------------------------


def decode(value: LoopInput, exits: contextlib.ExitStack) -> DecodingLoop:
    """Opens the loop and starts decoding it on a background thread (a Cine: nothing to do).
    ``exits`` joins the thread however the later stages end."""
    return DecodingLoop(exits.enter_context(open_frames(value.source)))


def preprocess(value: DecodingLoop, params: PreprocessParams) -> ShapedLoop:
    """Fits the fan and the transform on the fan sample (the first frames decoded)."""
    frames = value.frames
    before = frames.wait_ms
    sample = frames.fan_sample()
    waited_ms = frames.wait_ms - before
    return ShapedLoop(frames, SectorShaper.fit(sample, params), waited_ms)


def segment(value: ShapedLoop, segmenter: Segmenter, frame_batch: int | None) -> SegmentedLoop:
    """Shapes and segments each batch of frames as soon as it is decoded (a decoded loop in
    one call, the segmenter batching itself), then maps the LV back to source pixels."""
    frames, shaper = value.frames, value.shaper
    n = frames.n_frames
    batch = max(1, n)
    if frames.streams:
        batch = int(frame_batch or getattr(segmenter, "batch_size", DEFAULT_FRAME_BATCH))
    if batch < 1:
        raise ValueError(f"frame_batch must be >= 1, got {batch}")
    size = shaper.transform.size_px
    network_input = np.empty((n, 3, size, size), np.float32)
    probability = np.empty((n, size, size), np.float32)
    waited_before, shaping_ms = frames.wait_ms, 0.0
    for start in range(0, n, batch):
        chunk = slice(start, min(n, start + batch))
        frames.wait_for(np.arange(chunk.start, chunk.stop))
        shaping_started = time.perf_counter()
        network_input[chunk] = shaper.network_input(frames.frames[chunk])
        shaping_ms += (time.perf_counter() - shaping_started) * 1000.0
        out = np.asarray(segmenter.segment(network_input[chunk]), dtype=np.float32)
        expected = (chunk.stop - chunk.start, size, size)
        if out.shape != expected:
            raise ValueError(f"the segmenter returned shape {out.shape}, expected {expected}")
        probability[chunk] = out
    cine = frames.cine()
    frames.close()  # every frame is in: the thread has ended (its busy time is final)
    overlap = DecodeOverlap(
        decoded_here=frames.streams,
        busy_ms=frames.busy_ms,
        preprocess_wait_ms=value.waited_ms,
        segment_wait_ms=frames.wait_ms - waited_before,
        shaping_ms=shaping_ms,
    )
    return SegmentedLoop.of(cine, shaper.preprocessed(network_input), probability, overlap)


def check(value: SegmentedLoop) -> CheckedLoop:
    """The loop's own evidence before anything is measured (issue #14): a region that does not
    hold the fan gives no volumes; an ECG trace burned into the frames times the beats when
    the header has no ECG waveform."""
    source_fan = value.preprocessed.source_sector_mask()
    cine = without_untrusted_spacing(value.cine, source_fan)
    cine = with_burned_in_ecg(cine, source_fan)
    return CheckedLoop(value, cine, source_fan)


def estimate_ef(
    value: CheckedLoop, ef_model: EFModel | None, clip_batch: int, all_clip_stride: int
) -> EFEstimates:
    """The EF model on exactly the clips the measurements use: every ``all_clip_stride``-th
    start plus each beat's ES-aligned clip, in batches of ``clip_batch``."""
    if ef_model is None:
        return EFEstimates(value, None)
    starts = ef_clip_starts(
        value.cine, value.segmented.masks_source, all_clip_stride=all_clip_stride
    )
    frames = value.segmented.preprocessed.frames
    period = clip_period_for(value.cine.frame_time_ms)
    values = clip_predictor(frames, ef_model.predict_ef, clip_batch, period)(starts)
    return EFEstimates(value, {int(s): float(v) for s, v in zip(starts, values, strict=True)})


def measure(value: EFEstimates, all_clip_stride: int) -> MeasuredLoop:
    """Beats, volumes, EF and heart rate from the masks and the clip estimates."""
    checked = value.checked
    clip_ef = None if value.ef_by_start is None else clip_lookup(value.ef_by_start)
    measurements = measure_cine(
        checked.cine,
        checked.segmented.masks_source,
        clip_ef,
        transducer_px=checked.segmented.preprocessed.transform.transducer_px,
        sector_mask=checked.source_fan,
        all_clip_stride=all_clip_stride,
    )
    return MeasuredLoop(checked, measurements, value.ef_by_start is not None)


def gate(value: MeasuredLoop, settings: GateSettings) -> AnalysisResult:
    """The validity gate, always: each value measured, or not measurable with the reason."""
    segmented = value.checked.segmented
    evidence = gather_evidence(
        value.measurements,
        segmented.lv_probability,
        segmented.preprocessed.sector_mask,
        segmented.preprocessed.frames,
        value.checked.cine.heart_rate_bpm,
        settings.ood_reference,
    )
    gated = apply_gate(value.measurements, evidence, settings.thresholds)
    analysis = LoopAnalysis(
        measurements=gated,
        preprocessed=segmented.preprocessed,
        lv_probability=segmented.lv_probability,
        ungated=value.measurements,
    )
    return AnalysisResult(
        segmented.cine, analysis, StageTimings(), segmented.overlap, value.ef_estimated
    )


def analyse(
    loop: LoopSource,
    models: AnalysisModels,
    *,
    all_clip_stride: int = 1,
    clip_batch: int = DEFAULT_CLIP_BATCH,
    frame_batch: int | None = None,
) -> AnalysisResult:
    """Runs the stages on one loop: a file, file object or dataset (decoded while analysed) or
    a decoded ``Cine``. ``frame_batch`` (default: the segmenter's ``batch_size``, else
    ``DEFAULT_FRAME_BATCH``) is how many decoded frames go to the segmenter at once; keeping it
    equal to the segmenter's own batch gives the same numbers as a decoded loop.

    Raises ``DecodeError`` for unreadable or corrupt pixel data (whichever frame it is in) and
    ``PreprocessError`` when the loop has no fan; the decoding thread has ended either way."""
    if clip_batch < 1:
        raise ValueError(f"clip_batch must be >= 1, got {clip_batch}")
    with contextlib.ExitStack() as exits:
        stages = (
            Stage("decode", partial(decode, exits=exits)),
            Stage("preprocess", partial(preprocess, params=models.params)),
            Stage("segment", partial(segment, segmenter=models.segmenter, frame_batch=frame_batch)),
            Stage("checks", check),
            Stage(
                "ef",
                partial(
                    estimate_ef,
                    ef_model=models.ef_model,
                    clip_batch=clip_batch,
                    all_clip_stride=all_clip_stride,
                ),
            ),
            Stage("measure", partial(measure, all_clip_stride=all_clip_stride)),
            Stage("gate", partial(gate, settings=models.gate)),
        )
        run = run_stages(stages, LoopInput(loop), log=log, label="analysis")
    result: AnalysisResult = run.value
    return dataclasses.replace(result, timings=run.timings)


def _masks_to_source(pre: Preprocessed, probability: np.ndarray, threshold: float) -> np.ndarray:
    rows, cols = pre.transform.source_shape_px
    out = np.zeros((probability.shape[0], rows, cols), bool)
    for i, p in enumerate(probability):
        out[i] = pre.transform.mask_to_source(p, threshold)
    return out
