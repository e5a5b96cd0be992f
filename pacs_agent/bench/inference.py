"""``echo-agent bench inference``: where the time goes when one loop is analysed.

The loop is the one the issue names as the goal's yardstick: a 100-frame 800x600 JPEG Baseline
A4C loop (a phantom, scaled up and re-encoded), analysed with the demo preset and with the
full-width (1.0) networks. Full-width timings use randomly initialised weights: the arithmetic
is the same as with the published EchoNet-Dynamic weights, which cannot be downloaded here.
"""

from __future__ import annotations

import io
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pydicom
import torch
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, generate_uid

from inference.analyze import TorchEFModel, TorchSegmenter, run_analysis
from inference.decode import read_cine
from inference.phantom import generate_phantoms
from inference.preprocess import PreprocessParams
from inference.presets import load_preset

BENCH_ROWS, BENCH_COLS, BENCH_FRAMES = 600, 800, 100
STAGES = ("decode_s", "preprocess_s", "segmentation_s", "ef_s", "measurements_s")


@dataclass(frozen=True)
class InferenceTiming:
    models: str
    device: str
    n_frames: int
    stages_s: dict[str, float]

    @property
    def total_s(self) -> float:
        return sum(self.stages_s.values())

    @property
    def frames_per_s(self) -> float:
        return self.n_frames / self.total_s if self.total_s > 0 else float("nan")


def make_bench_loop(path: Path, seed: int = 11) -> Path:
    """A phantom A4C loop scaled to 800x600 and 100 frames, written as JPEG Baseline."""
    with tempfile.TemporaryDirectory(prefix="echo-bench-") as scratch:
        source = generate_phantoms(Path(scratch), 1, seed, distractors=False)[0]
        ds = pydicom.dcmread(source)
        frames = read_cine(ds).frames
    scale_y, scale_x = BENCH_ROWS / ds.Rows, BENCH_COLS / ds.Columns
    index = np.arange(BENCH_FRAMES) % len(frames)
    resized = [
        cv2.resize(frames[i], (BENCH_COLS, BENCH_ROWS), interpolation=cv2.INTER_LINEAR)
        for i in index
    ]
    for region in ds.get("SequenceOfUltrasoundRegions", []):
        region.PhysicalDeltaX = float(region.PhysicalDeltaX) / scale_x
        region.PhysicalDeltaY = float(region.PhysicalDeltaY) / scale_y
        for key, scale in (
            ("RegionLocationMinX0", scale_x),
            ("RegionLocationMaxX1", scale_x),
            ("ReferencePixelX0", scale_x),
            ("RegionLocationMinY0", scale_y),
            ("RegionLocationMaxY1", scale_y),
            ("ReferencePixelY0", scale_y),
        ):
            if key in region:
                region[key].value = round(float(region[key].value) * scale)
    ds.Rows, ds.Columns, ds.NumberOfFrames = BENCH_ROWS, BENCH_COLS, BENCH_FRAMES
    ds.SamplesPerPixel, ds.PlanarConfiguration = 3, 0
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PixelData = encapsulate([_jpeg(frame) for frame in resized])
    ds["PixelData"].VR = "OB"
    ds.LossyImageCompression = "01"
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["echo-agent-bench-inference", str(seed)])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _jpeg(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=90, subsampling=1)  # 4:2:2
    return buffer.getvalue()


def time_loop(
    path: Path,
    segmenter: TorchSegmenter,
    ef_model: TorchEFModel,
    params: PreprocessParams,
    label: str,
    device: str,
    all_clip_stride: int = 1,
) -> InferenceTiming:
    stages: dict[str, float] = {}
    started = time.perf_counter()
    cine = read_cine(path)
    stages["decode_s"] = time.perf_counter() - started
    run_analysis(
        cine, segmenter, ef_model, params, all_clip_stride=all_clip_stride, timings_s=stages
    )
    return InferenceTiming(label, device, cine.n_frames, {k: stages.get(k, 0.0) for k in STAGES})


def run_inference_bench(
    workdir: Path, *, full_width: bool = True, device: str = "cpu", full_width_stride: int = 1
) -> list[InferenceTiming]:
    """Times the demo preset, and optionally the width-1.0 networks, on the bench loop."""
    loop = make_bench_loop(workdir / "bench_a4c_800x600_100f_jpeg.dcm")
    demo = load_preset("demo", device=device)
    results = []
    demo_params = PreprocessParams(mean=demo.mean, std=demo.std)
    seg, ef = (
        TorchSegmenter(demo.segmenter, device=device),
        TorchEFModel(demo.ef_model, device=device),
    )
    time_loop(loop, seg, ef, demo_params, "warm-up", device)  # first call pays one-off costs
    results.append(time_loop(loop, seg, ef, demo_params, "demo (phantom-trained)", device))
    if full_width:
        torch.manual_seed(0)
        seg_full, ef_full = (
            TorchSegmenter.build(1.0, device=device),
            TorchEFModel.build(1.0, device=device),
        )
        label = "width 1.0 (EchoNet-Dynamic layout, random weights)"
        if full_width_stride > 1:
            label += f", EF every {full_width_stride}th clip"
        results.append(
            time_loop(loop, seg_full, ef_full, demo_params, label, device, full_width_stride)
        )
    return results


def format_table(results: Sequence[InferenceTiming]) -> str:
    header = (
        "| models | device | frames | decode | preprocess | segmentation | EF | measurements "
        "| total | frames/s |"
    )
    rule = "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    rows = [
        f"| {r.models} | {r.device} | {r.n_frames} | "
        + " | ".join(f"{r.stages_s[s]:.2f} s" for s in STAGES)
        + f" | {r.total_s:.2f} s | {r.frames_per_s:.1f} |"
        for r in results
    ]
    return "\n".join([header, rule, *rows])
