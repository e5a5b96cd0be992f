"""Decoding overlapped with analysis (``inference.stream``, via ``analyse`` on a file): the same
frames, network input, LV probabilities and measurements as a loop decoded first, on every
encoding the phantom writes; the same ``DecodeError`` for corrupt data wherever it is; and no
decoding thread left behind."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit
from support import phantom_truth

from inference.analyze import Networks, analyse
from inference.decode import DecodeError, read_cine
from inference.model_cache import ModelCache, TorchEFModel, TorchSegmenter
from inference.preprocess import MAX_STAT_FRAMES, PreprocessError, PreprocessParams
from inference.presets import load_preset
from inference.stream import DECODE_THREAD_NAME, decode_order, fan_sample_indices
from pacs_agent.analysis import model_settings
from pacs_agent.config import Config
from pacs_agent.pipeline import AnalysisError, PixelDataError, analyse_for_job

DECODE_THREAD = DECODE_THREAD_NAME


@pytest.fixture(scope="module")
def a4c_loops(phantom_studies) -> list[Path]:
    return [p for p in phantom_studies if phantom_truth(p)["view"] == "A4C"]


@pytest.fixture(scope="module")
def demo() -> Networks:
    loaded = load_preset("demo", device="cpu")
    return Networks(
        TorchSegmenter(loaded.segmenter),
        TorchEFModel(loaded.ef_model),
        PreprocessParams(mean=loaded.mean, std=loaded.std),
    )


def _decode_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == DECODE_THREAD and t.is_alive()]


def _loop_with(loops: list[Path], syntax: str) -> pydicom.Dataset:
    for path in loops:
        ds = pydicom.dcmread(path)
        if ds.file_meta.TransferSyntaxUID == syntax:
            return ds
    raise AssertionError(f"the phantom set has no {syntax} loop")


@pytest.mark.parametrize("n_frames", [1, 2, 5, 31, 32, 33, 100, 257])
def test_the_fan_sample_comes_first_and_every_frame_once(n_frames) -> None:
    sample = fan_sample_indices(n_frames)
    order = decode_order(n_frames)
    assert sorted(order) == list(range(n_frames))
    assert order[: len(sample)] == list(sample)
    assert len(sample) == min(n_frames, MAX_STAT_FRAMES)
    assert sample[0] == 0 and sample[-1] == n_frames - 1
    # on the sample alone, the fan search's own choice of frames is the whole sample
    assert list(fan_sample_indices(len(sample))) == list(range(len(sample)))


@pytest.mark.slow
def test_overlapped_equals_sequential_on_every_phantom_encoding(a4c_loops, demo) -> None:
    syntaxes = set()
    for path in a4c_loops:
        cine = read_cine(path)
        sequential = analyse(cine, demo).analysis
        streamed = analyse(path, demo)
        timings = streamed.timings_s()
        header = pydicom.dcmread(path, stop_before_pixels=True)
        syntaxes.add((str(header.file_meta.TransferSyntaxUID), header.PhotometricInterpretation))
        assert np.array_equal(streamed.cine.frames, cine.frames)
        assert streamed.cine.frame_time_ms == cine.frame_time_ms
        assert streamed.cine.spacing_cm == cine.spacing_cm
        assert streamed.cine.notes == cine.notes
        pre_s, pre_o = sequential.preprocessed, streamed.analysis.preprocessed
        assert pre_o.fan == pre_s.fan
        assert pre_o.transform == pre_s.transform
        assert np.array_equal(pre_o.sector_mask, pre_s.sector_mask)
        assert np.array_equal(pre_o.frames, pre_s.frames)
        # same batches through the same network: the same numbers, not just close ones
        assert np.array_equal(streamed.analysis.lv_probability, sequential.lv_probability)
        assert streamed.analysis.measurements.to_json() == sequential.measurements.to_json()
        assert timings["decode_s"] > 0 and 0 <= timings["decode_wait_s"] <= timings["decode_s"]
        assert timings["segmentation_s"] > 0 and timings["ef_s"] > 0
    assert len(syntaxes) == 4  # JPEG Baseline, RLE and uncompressed colour / monochrome
    assert not _decode_threads()


@pytest.mark.slow
def test_a_corrupt_frame_mid_loop_is_a_decode_error_and_the_thread_ends(
    a4c_loops, demo, tmp_path
) -> None:
    ds = _loop_with(a4c_loops, JPEGBaseline8Bit)
    n = int(ds.NumberOfFrames)
    fragments = list(generate_frames(ds.PixelData, number_of_frames=n))
    middle = decode_order(n)[-2]  # decoded late, after analysis has started
    fragments[middle] = b"\xff\xd8\xff\xdb" + bytes(range(256)) * 8 + b"\xff\xd9"
    ds.PixelData = encapsulate(fragments)
    path = tmp_path / "corrupt.dcm"
    ds.save_as(path, enforce_file_format=True)

    with pytest.raises(DecodeError) as sequential:
        read_cine(path)
    with pytest.raises(DecodeError) as overlapped:
        analyse(path, demo)
    assert str(overlapped.value).startswith("cannot decode pixel data (JPEG Baseline")
    assert str(sequential.value).split(":")[0] == str(overlapped.value).split(":")[0]
    assert not _decode_threads()


@pytest.mark.slow
def test_truncated_pixels_and_non_dicom_fail_alike(a4c_loops, demo, tmp_path) -> None:
    ds = _loop_with(a4c_loops, ExplicitVRLittleEndian)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) * 2 // 3]
    truncated = tmp_path / "truncated.dcm"
    ds.save_as(truncated, enforce_file_format=True)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"this is not a DICOM file at all" * 10)
    for path in (truncated, junk):
        with pytest.raises(DecodeError):
            read_cine(path)
        with pytest.raises(DecodeError):
            analyse(path, demo)
    assert not _decode_threads()


@pytest.mark.slow
def test_a_loop_without_a_fan_stops_the_decoder(a4c_loops, demo, tmp_path) -> None:
    ds = _loop_with(a4c_loops, ExplicitVRLittleEndian)
    ds.PixelData = bytes(len(ds.PixelData))  # every frame black: no fan to find
    path = tmp_path / "blank.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(PreprocessError):
        analyse(path, demo)
    assert not _decode_threads()


@pytest.mark.slow
def test_a_failing_segmenter_ends_the_decoding_thread(a4c_loops, demo) -> None:
    path = next(p for p in a4c_loops if phantom_truth(p)["n_frames"] > 40)

    class WrongShape:
        """A segmenter that breaks its contract (returns one row per frame)."""

        def segment(self, batch_112: np.ndarray) -> np.ndarray:
            return np.zeros((len(batch_112), 1), np.float32)

    with pytest.raises(ValueError, match="segmenter returned shape"):
        analyse(path, Networks(WrongShape(), demo.ef_model, demo.params), frame_batch=8)
    assert not _decode_threads()


@pytest.mark.slow
def test_the_pipeline_records_corrupt_pixels_and_missing_fans_as_job_errors(
    a4c_loops, tmp_path
) -> None:
    config = Config(home=str(tmp_path / "home"))
    models = ModelCache(model_settings(config))
    ds = _loop_with(a4c_loops, ExplicitVRLittleEndian)
    ds.PixelData = ds.PixelData[:1000]
    corrupt = tmp_path / "corrupt.dcm"
    ds.save_as(corrupt, enforce_file_format=True)
    with pytest.raises(PixelDataError):
        analyse_for_job(corrupt, config, models)
    ds = _loop_with(a4c_loops, ExplicitVRLittleEndian)
    ds.PixelData = bytes(len(ds.PixelData))
    blank = tmp_path / "blank.dcm"
    ds.save_as(blank, enforce_file_format=True)
    with pytest.raises(AnalysisError, match="cannot analyse the loop"):
        analyse_for_job(blank, config, models)
    result, loaded = analyse_for_job(a4c_loops[0], config, models)
    assert result.cine.n_frames == phantom_truth(a4c_loops[0])["n_frames"]
    assert loaded.demo and result.timings_s()["decode_s"] > 0
    stages = ("decode", "preprocess", "segment", "checks", "ef", "measure", "gate")
    assert result.timings.names() == stages
    assert not _decode_threads()
