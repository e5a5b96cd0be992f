"""The analysis entry point (``inference.analyze.analyse``) end to end: a truth oracle in place
of the networks proves the plumbing (preprocess -> segment -> map back -> beats -> clips ->
measurements) against the phantom truth; the torch wrappers are checked for shapes and batching
at a small width."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from support import phantom_truth

from inference.analyze import LoopAnalysis, Networks, analyse
from inference.beats import beat_clip_start, clip_period_for, clip_starts
from inference.decode import read_cine
from inference.ef_clips import build_clips
from inference.model_cache import TorchEFModel, TorchSegmenter
from inference.preprocess import PreprocessParams, preprocess_cine
from inference.types import Cine, RegionBox

PARAMS = PreprocessParams(mean=(30.0, 30.0, 30.0), std=(45.0, 45.0, 45.0))


class TruthOracle:
    """Stands in for both networks: the phantom's true masks as grid coverage fractions (what
    a perfect segmentation's probability would be) and the true EF for every clip."""

    def __init__(self, grid: np.ndarray, ef_percent: float) -> None:
        self.grid = grid
        self.ef_percent = ef_percent
        self.clip_shapes: list[tuple[int, ...]] = []

    def segment(self, batch_112: np.ndarray) -> np.ndarray:
        assert batch_112.shape == (len(self.grid), 3, 112, 112)
        assert batch_112.dtype == np.float32
        return self.grid

    def predict_ef(self, clips: np.ndarray) -> np.ndarray:
        self.clip_shapes.append(clips.shape)
        return np.full(len(clips), self.ef_percent)


@pytest.fixture(scope="module")
def loops(phantom_studies) -> list[tuple[Path, dict, Cine]]:
    return [
        (p, phantom_truth(p), read_cine(p))
        for p in phantom_studies
        if phantom_truth(p)["view"] == "A4C"
    ]


def _analysis(cine: Cine, segmenter: object, ef_model: object) -> LoopAnalysis:
    """The one entry on a decoded loop, with the given networks and ``PARAMS``."""
    return analyse(cine, Networks(segmenter, ef_model, PARAMS)).analysis  # type: ignore[arg-type]


def _oracle(path: Path, truth: dict, cine: Cine) -> tuple[TruthOracle, np.ndarray]:
    masks = np.load(path.parent / truth["masks_file"])["masks"]
    transform = preprocess_cine(cine, PARAMS).transform
    grid = np.stack([transform.mask_to_grid(m) for m in masks])
    return TruthOracle(grid, truth["ef_percent"]), masks


@pytest.mark.slow
def test_a_truth_oracle_reproduces_the_phantom_truth_end_to_end(loops) -> None:
    for path, truth, cine in loops:
        oracle, masks = _oracle(path, truth, cine)
        analysis = _analysis(cine, oracle, oracle)
        m = analysis.measurements
        assert m.ef_percent == pytest.approx(truth["ef_percent"]) and m.ef_source == "beats"
        assert m.ef_disks_percent == pytest.approx(truth["ef_percent"], abs=3.0)
        assert m.edv_ml == pytest.approx(truth["edv_ml"], rel=0.05)
        assert m.esv_ml == pytest.approx(truth["esv_ml"], rel=0.06)
        assert m.heart_rate_source == "ecg"  # the phantom's burned-in ECG times the beats
        assert m.heart_rate_bpm == pytest.approx(truth["heart_rate_bpm"], abs=3.0)
        assert len(m.beats) == len(truth["beats"])
        for found, true in zip(m.beats, truth["beats"], strict=True):
            assert abs(found.ed_frame - true["ed_frame"]) <= 2
            assert abs(found.es_frame - true["es_frame"]) <= 2
        assert m.flags == (), (path.name, m.flags)
        # every clip the EF model saw is a 32-frame clip on the grid
        assert {s[1:] for s in oracle.clip_shapes} == {(3, 32, 112, 112)}
        period = clip_period_for(cine.frame_time_ms)  # a sample about every 40 ms
        assert m.clip_period_frames == period
        assert sum(s[0] for s in oracle.clip_shapes) == len(
            clip_starts(cine.n_frames, period=period)
        )
        # the masks handed back for reporting are the true ones at source resolution
        source = analysis.lv_masks_source()
        assert source.shape == masks.shape
        ed = truth["beats"][0]["ed_frame"]
        assert (
            np.count_nonzero(source[ed] & masks[ed]) / np.count_nonzero(source[ed] | masks[ed])
            > 0.95
        )
        out = json.loads(json.dumps(m.to_json()))
        assert {"ef_percent", "ef_disks_percent", "edv_ml", "esv_ml", "heart_rate_bpm"} <= set(out)
        assert isinstance(out["beats"], list) and out["flags"] == []


@pytest.mark.slow
def test_a_loop_without_spacing_reports_ef_and_no_volumes(loops) -> None:
    path, truth, cine = loops[1]
    oracle, _ = _oracle(path, truth, cine)
    bare = dataclasses.replace(cine, spacing_cm=None, tissue_region=None)
    m = _analysis(bare, oracle, oracle).measurements
    assert m.edv_ml is None and m.esv_ml is None
    assert "no_spacing" in m.flag_codes
    assert m.ef_percent == pytest.approx(truth["ef_percent"])
    assert m.ef_disks_percent == pytest.approx(truth["ef_percent"], abs=3.0)


def _synthetic_cine(n: int = 40) -> Cine:
    """A fan with a pulsing dark ellipse: enough for the torch wrappers' plumbing."""
    rows, cols = 180, 240
    rr, cc = np.mgrid[0:rows, 0:cols]
    fan = (np.hypot(cc - 120, rr - 10) < 160) & (np.abs(np.arctan2(cc - 120, rr - 10)) < 0.7)
    rng = np.random.default_rng(3)
    frames = np.zeros((n, rows, cols, 3), np.uint8)
    for i in range(n):
        r = 1.0 + 0.25 * np.cos(2 * np.pi * i / 20)
        lv = ((cc - 130) / (18 * r)) ** 2 + ((rr - 80) / (40 * r)) ** 2 < 1
        grey = rng.uniform(60, 160, (rows, cols)) * fan * ~lv
        frames[i] = grey.astype(np.uint8)[..., None]
    return Cine(
        frames=frames,
        frame_time_ms=40.0,
        frame_time_source="FrameTime",
        spacing_cm=(0.08, 0.08),
        tissue_region=RegionBox(0, 0, cols - 1, rows - 1),
        heart_rate_bpm=75.0,
        sop_instance_uid="1.2.3.4",
    )


def test_torch_wrappers_batch_every_frame_and_clip() -> None:
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        segmenter = TorchSegmenter.build(0.125, batch_size=16)
        ef_model = TorchEFModel.build(0.125, batch_size=4)
        cine = _synthetic_cine()
        analysis = _analysis(cine, segmenter, ef_model)
    finally:
        torch.set_num_threads(threads)
    p = analysis.lv_probability
    assert p.shape == (cine.n_frames, 112, 112) and p.dtype == np.float32
    assert p.min() >= 0.0 and p.max() <= 1.0
    assert not np.any(p[:, ~analysis.preprocessed.sector_mask])
    m = analysis.ungated
    # 40 frames at 25 /s: period 1 (a sample every 40 ms), so 9 whole clips (random weights:
    # any value)
    assert m is not None and m.clip_period_frames == 1
    assert m.clip_starts == tuple(range(9)) and "loop_shorter_than_clip" not in m.flag_codes
    assert m.ef_clips_mean_percent is not None and np.isfinite(m.ef_clips_mean_percent)
    # random weights find no LV: the gate publishes none of it
    gated = analysis.measurements
    assert gated.ef_percent is None and gated.ef_clips_mean_percent is None
    assert not gated.validity["ef_percent"].measured
    assert not segmenter.model.training and not ef_model.model.training


def test_wrappers_refuse_wrong_shapes() -> None:
    with pytest.raises(ValueError, match="frames, 3"):
        TorchSegmenter.build(0.125).segment(np.zeros((2, 112, 112), np.float32))
    with pytest.raises(ValueError, match="clips, 3"):
        TorchEFModel.build(0.125).predict_ef(np.zeros((2, 3, 112, 112), np.float32))

    class Broken:
        def segment(self, batch_112: np.ndarray) -> np.ndarray:
            return np.zeros((len(batch_112), 64, 64), np.float32)

    with pytest.raises(ValueError, match="segmenter returned shape"):
        _analysis(_synthetic_cine(8), Broken(), None)


def test_clips_take_every_second_frame_and_pad_with_the_mean() -> None:
    frames = np.arange(70, dtype=np.float32)[:, None, None, None] * np.ones((70, 3, 4, 4))
    clips = build_clips(frames.astype(np.float32), np.array([0, 7]))
    assert clips.shape == (2, 3, 32, 4, 4)
    assert clips[0, 0, :, 0, 0].tolist() == list(range(0, 64, 2))
    assert clips[1, 2, :, 1, 1].tolist() == list(range(7, 70, 2))
    short = build_clips(frames[:40].astype(np.float32), np.array([0]))
    assert short[0, 0, :20, 0, 0].tolist() == list(range(0, 40, 2))
    assert not short[0, :, 20:].any()  # padding is zero after normalisation: the mean colour
    # a beat's clip is one of the starts the loop has
    assert beat_clip_start(50, 70) in clip_starts(70).tolist()
