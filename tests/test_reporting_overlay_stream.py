"""The overlay branch written frame by frame, and the SEG's faster writer (issue #17, writing
within 1.5 s a loop): the frames drawn one at a time are the loop-at-once frames pixel for pixel,
the contour found in the mask's box is the one found in the whole frame, the YUV conversion is
BT.601 limited range with 2 x 2 chroma means, the streamed video plays every frame, the SC's JPEG
frames are the bytes the SC always had, a failing JPEG thread ends the branch with its error
instead of a hang, and the SEG file (its packed bits, its per-frame groups encoded by
``dicom_tail``) is byte for byte the file pydicom writes."""

from __future__ import annotations

import copy
import datetime as dt

import av
import cv2
import numpy as np
import pydicom
import pytest
from orthanc_helpers import phantom_cache
from pydicom.pixels import pack_bits
from reporting_helpers import SEED_ONE_STUDY, a4c_paths, dciodvfy_errors, load_loop

from reporting import overlay_writer
from reporting.dicom_base import save
from reporting.dicom_tail import save_with_tail
from reporting.overlay import (
    CONTOUR_RGB,
    OverlayVideo,
    Yuv420Converter,
    draw_contour,
    render_overlay_frame,
    render_overlay_frames,
    write_overlay_video,
)
from reporting.overlay_writer import render_video_and_jpeg
from reporting.secondary_capture import JpegFrames, JpegSpool, encode_frame, write_secondary_capture
from reporting.seg import _packed_bits, build_seg, write_seg
from reporting.types import AlgorithmInfo


@pytest.fixture(scope="module")
def loop(request, tmp_path_factory):
    (path,) = a4c_paths(phantom_cache(request.config, tmp_path_factory), 1, SEED_ONE_STUDY)
    return load_loop(path)


def _marks(loop) -> dict:
    beats = loop.measurements.beats
    return {
        "ed_frames": tuple(b.ed_frame for b in beats),
        "es_frames": tuple(b.es_frame for b in beats),
        "demo_models": True,
    }


def _decoded(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def _psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255**2 / mse)


def test_frames_drawn_one_at_a_time_are_the_loop_at_once(loop):
    marks = _marks(loop)
    whole = render_overlay_frames(loop.cine.frames, loop.masks, **marks)
    out = np.empty(loop.cine.frames.shape[1:], np.uint8)  # one buffer, reused
    for i in range(loop.cine.n_frames):
        render_overlay_frame(
            out,
            loop.cine.frames[i],
            loop.masks[i],
            ed=i in marks["ed_frames"],
            es=i in marks["es_frames"],
            demo_models=True,
        )
        assert np.array_equal(out, whole[i]), f"frame {i}"


def _contour_of_whole_frame(frame, mask, px):
    contours, _ = cv2.findContours(
        np.ascontiguousarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
    )
    if contours:
        cv2.drawContours(frame, contours, -1, CONTOUR_RGB, px, lineType=cv2.LINE_AA)


def test_contour_found_in_the_mask_box_is_the_whole_frame_contour():
    rng = np.random.default_rng(3)
    rows, cols = 61, 83
    masks = np.zeros((7, rows, cols), bool)
    masks[1, :10, :10] = True  # touches two edges
    masks[2] = True  # the whole frame
    masks[3, 50:, 70:] = True  # the opposite corner
    masks[4] = rng.random((rows, cols)) > 0.7  # scattered pixels, many outlines
    masks[5, 20:40, 0:5] = True  # one edge
    masks[6, 30, 40] = True  # one pixel
    for mask in masks:  # masks[0] is empty: nothing drawn
        frame = rng.integers(0, 256, (rows, cols, 3), np.uint8)
        expected, drawn = frame.copy(), frame.copy()
        _contour_of_whole_frame(expected, mask, 2)
        draw_contour(drawn, mask, CONTOUR_RGB, 2)
        assert np.array_equal(drawn, expected)
    untouched = np.zeros((rows, cols, 3), np.uint8)
    draw_contour(untouched, masks[0], CONTOUR_RGB, 2)
    assert not untouched.any()


def test_yuv_is_bt601_limited_range_with_block_mean_chroma():
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (48, 64, 3), np.uint8)
    yuv = Yuv420Converter(48, 64).convert(rgb)
    assert yuv.shape == (72, 64) and yuv.dtype == np.uint8
    assert np.array_equal(yuv[:48], cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)[:48])
    means = rgb.reshape(24, 2, 32, 2, 3).astype(np.float64).mean(axis=(1, 3))
    r, g, b = means[..., 0], means[..., 1], means[..., 2]
    cb = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    cr = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    planes = yuv[48:].reshape(-1)
    assert np.abs(planes[: 24 * 32].reshape(24, 32) - cb).max() <= 1.5
    assert np.abs(planes[24 * 32 :].reshape(24, 32) - cr).max() <= 1.5
    with pytest.raises(ValueError, match="even"):
        Yuv420Converter(47, 64)


def test_streamed_video_plays_every_frame_close_to_the_rendering(loop, tmp_path):
    rendered = render_overlay_frames(loop.cine.frames, loop.masks, **_marks(loop))
    path = write_overlay_video(rendered, tmp_path / "overlay.webm", loop.cine.frame_time_ms)
    decoded = _decoded(path)
    assert len(decoded) == loop.cine.n_frames
    assert min(_psnr_db(d, r) for d, r in zip(decoded, rendered, strict=True)) > 30

    odd = rendered[:5, :-1, :-1]  # odd sizes: padded by a black row and column
    with OverlayVideo(tmp_path / "odd.webm", 40.0, *odd.shape[1:3]) as video:
        for frame in odd:
            video.write(frame)
    back = _decoded(tmp_path / "odd.webm")
    assert len(back) == 5 and back[0].shape[:2] == (odd.shape[1] + 1, odd.shape[2] + 1)
    assert _psnr_db(back[0][: odd.shape[1], : odd.shape[2]], odd[0]) > 30


def test_streamed_video_refuses_misuse(tmp_path):
    video = OverlayVideo(tmp_path / "x.webm", 40.0, 8, 8)
    with pytest.raises(RuntimeError, match="with block"):
        video.write(np.zeros((8, 8, 3), np.uint8))
    with (
        pytest.raises(ValueError, match="want"),
        OverlayVideo(tmp_path / "y.webm", 40.0, 8, 8) as v,
    ):
        v.write(np.zeros((8, 9, 3), np.uint8))
    with (
        pytest.raises(ValueError, match="at least one frame"),
        OverlayVideo(tmp_path / "z.webm", 40.0, 8, 8),
    ):
        pass
    with pytest.raises(ValueError, match="webm"):
        OverlayVideo(tmp_path / "x.mp4", 40.0, 8, 8)


def test_branch_gives_the_sc_its_old_jpeg_bytes_and_a_playable_video(loop, tmp_path):
    marks = _marks(loop)
    out = render_video_and_jpeg(
        loop.cine.frames, loop.masks, tmp_path / "o.webm", loop.cine.frame_time_ms, **marks
    )
    rendered = render_overlay_frames(loop.cine.frames, loop.masks, **marks)
    assert out.jpeg.shape == rendered.shape
    assert list(out.jpeg.encoded) == [encode_frame(f) for f in rendered]
    assert len(_decoded(out.video_path)) == loop.cine.n_frames
    assert out.video_s > 0 and out.jpeg_s > 0

    # the SC from the streamed frames is the SC from the rendered loop
    a = write_secondary_capture(
        loop.header, out.jpeg, tmp_path / "a.dcm", frame_time_ms=40.0, demo_models=True
    )
    b = write_secondary_capture(
        loop.header, rendered, tmp_path / "b.dcm", frame_time_ms=40.0, demo_models=True
    )
    assert a.PixelData == b.PixelData
    assert a.LossyImageCompressionRatio == b.LossyImageCompressionRatio
    assert dciodvfy_errors(tmp_path / "a.dcm") == []
    assert pydicom.dcmread(tmp_path / "a.dcm").pixel_array.shape == rendered.shape


def test_a_failing_jpeg_thread_ends_the_branch_with_its_error(loop, tmp_path, monkeypatch):
    calls = []

    def fail_on_third(self, frame):
        calls.append(1)
        if len(calls) >= 3:
            raise OSError("disk full (test)")

    monkeypatch.setattr(overlay_writer.JpegSpool, "add", fail_on_third)
    with pytest.raises(OSError, match="disk full"):
        render_video_and_jpeg(loop.cine.frames, loop.masks, tmp_path / "o.webm", 40.0)
    assert len(calls) == loop.cine.n_frames  # every buffer came back: no frame was stuck


def test_jpeg_spool_frames_are_the_in_memory_encoding():
    rng = np.random.default_rng(9)
    frames = rng.integers(0, 256, (4, 24, 32, 3), np.uint8)
    with JpegSpool() as spool:
        for frame in frames:
            spool.add(frame)
        got = spool.frames()
        with pytest.raises(ValueError, match="loop of"):
            spool.add(frames[0, :10])
    assert list(got.encoded) == [encode_frame(f) for f in frames]
    assert JpegFrames.of(frames) == got
    with JpegSpool() as empty, pytest.raises(ValueError, match="no frame"):
        empty.frames()


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 7), (2, 8, 8), (5, 33, 17)])
def test_seg_bits_are_pydicoms(shape):
    masks = np.random.default_rng(sum(shape)).random(shape) > 0.5
    assert _packed_bits(masks) == pack_bits(masks.reshape(-1))


@pytest.mark.parametrize("frame_of_reference", [False, True])
def test_seg_file_is_the_file_pydicom_writes(loop, tmp_path, frame_of_reference):
    header = copy.deepcopy(loop.header)  # Dataset(ds) shares ds's elements
    if frame_of_reference:
        header.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.1"
    options = {
        "series_instance_uid": "1.2.826.0.1.3680043.8.498.2",
        "sop_instance_uid": "1.2.826.0.1.3680043.8.498.3",
        "now": dt.datetime(2026, 12, 6, 9, 30).astimezone(),
    }
    algorithm = AlgorithmInfo("net", "1", demo_model=True, parameters=("width=0.25",))
    masks = loop.masks.copy()
    masks[[0, -1]] = False  # empty frames too
    written = write_seg(header, masks, algorithm, tmp_path / "fast.dcm", **options)
    assert "PerFrameFunctionalGroupsSequence" in written and "PixelData" in written
    reference = build_seg(header, masks, algorithm, **options)
    # the Dimension Organization UID is new for every SEG: the written one, for comparing
    organisation = written.DimensionOrganizationSequence[0].DimensionOrganizationUID
    reference.DimensionOrganizationSequence[0].DimensionOrganizationUID = organisation
    for item in reference.DimensionIndexSequence:
        item.DimensionOrganizationUID = organisation
    save(reference, tmp_path / "pydicom.dcm")
    assert (tmp_path / "fast.dcm").read_bytes() == (tmp_path / "pydicom.dcm").read_bytes()
    assert dciodvfy_errors(tmp_path / "fast.dcm") == []


def test_a_tail_that_is_not_plain_is_left_to_pydicom(tmp_path):
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.3"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.3", "1.2.3.4"
    item = pydicom.Dataset()
    item.ContentDescription = "Gr\u00fc\u00dfe"  # not ASCII: the character set decides
    item.PixelSpacing = [0.5, 0.5]  # DS: not encoded here
    ds.PerFrameFunctionalGroupsSequence = [item]
    save_with_tail(ds, tmp_path / "tail.dcm", ("PerFrameFunctionalGroupsSequence",))
    save(ds, tmp_path / "plain.dcm")
    assert (tmp_path / "tail.dcm").read_bytes() == (tmp_path / "plain.dcm").read_bytes()
    back = pydicom.dcmread(tmp_path / "tail.dcm")
    assert back.PerFrameFunctionalGroupsSequence[0].PixelSpacing == [0.5, 0.5]
