"""Runs the inference package on one stored loop, with the networks the configuration names.

The networks are loaded once per process (a worker thread pool shares them; torch modules in
eval mode under inference_mode are safe to call from several threads) and the load time is kept,
because a node that spends 20 s loading weights should say so rather than look hung.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from inference.analyze import LoopAnalysis, TorchEFModel, TorchSegmenter
from inference.gate import GateSettings
from inference.ood import REFERENCE_FILE_NAME, load_reference
from inference.preprocess import PreprocessParams
from inference.presets import DEMO_DIR, LoadedModels, load_preset
from inference.stream import analyze_stream
from inference.types import Cine
from pacs_agent.config import Config, gate_thresholds

log = logging.getLogger("echo_agent.analysis")


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


@dataclass(frozen=True)
class LoopResult:
    cine: Cine
    analysis: LoopAnalysis
    models: Models
    timings_s: dict[str, float]


def resolve_device(setting: str) -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise ValueError("models.device is 'cuda' but no CUDA device is available")
    return setting


def load_models(config: Config) -> Models:
    """Builds the configured preset; raises ValueError (with the cause) for unusable weights."""
    started = time.perf_counter()
    device = resolve_device(config.models.device)
    m = config.models
    loaded: LoadedModels = load_preset(
        m.preset,
        seg_weights=m.seg_weights or None,
        ef_weights=m.ef_weights or None,
        mean=m.mean or None,
        std=m.std or None,
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
        gate=gate_settings(config, loaded.preset),
    )
    log.info("models loaded in %.1f s on %s: %s", models.load_time_s, device, models.description)
    return models


def gate_settings(config: Config, preset: str) -> GateSettings:
    """The configured thresholds and the model set's out-of-distribution reference: the
    configured file, else the one shipped beside the demo weights (``echonet`` ships none)."""
    if config.gate.ood_reference:
        path = Path(config.gate.ood_reference).expanduser()
        reference = load_reference(path)
        if reference is None:
            raise ValueError(f"gate.ood_reference {path} does not exist")
    else:
        reference = load_reference(DEMO_DIR / REFERENCE_FILE_NAME) if preset == "demo" else None
    return GateSettings(thresholds=gate_thresholds(config.gate), ood_reference=reference)


class ModelCache:
    """Loads the models on first use, once, however many workers ask at the same time."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._models: Models | None = None

    def get(self) -> Models:
        with self._lock:
            if self._models is None:
                self._models = load_models(self._config)
            return self._models

    def preload_in_background(self) -> threading.Thread:
        """Starts loading now, so the first job does not wait and a bad preset shows at once."""

        def preload() -> None:
            log.info("loading %s models ...", self._config.models.preset)
            try:
                self.get()
            except ValueError as exc:
                log.error("models not usable: %s (jobs will fail until fixed)", exc)

        thread = threading.Thread(target=preload, name="model-preload", daemon=True)
        thread.start()
        return thread


def analyze_file(path: Path, models: Models, all_clip_stride: int = 1) -> LoopResult:
    """Decodes and analyses one loop, decoding on a background thread while the frames
    already decoded are preprocessed and segmented (``inference.stream``); the result equals
    ``read_cine`` + ``run_analysis``. ``DecodeError`` / ``PreprocessError`` pass through.

    ``timings_s`` has the stages of ``run_analysis`` plus ``decode_s`` (decoding thread),
    ``decode_wait_s`` (decoding not hidden behind analysis) and ``wall_s`` (the whole call)."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    streamed = analyze_stream(
        path,
        models.segmenter,
        models.ef_model,
        models.params,
        all_clip_stride=all_clip_stride,
        timings_s=timings,
        gate=models.gate,
    )
    timings["wall_s"] = time.perf_counter() - started
    return LoopResult(
        cine=streamed.cine, analysis=streamed.analysis, models=models, timings_s=timings
    )


def measurements_document(result: LoopResult) -> dict[str, object]:
    """The JSON the node prints, stores and grounds reports on: measurements plus provenance."""
    document = dict(result.analysis.measurements.to_json())
    document["sop_instance_uid"] = result.cine.sop_instance_uid
    document["models"] = {
        "preset": result.models.preset,
        "demo": result.models.demo,
        "description": result.models.description,
    }
    return document
