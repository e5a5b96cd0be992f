"""Renderings of a phantom loop: the overlay frames, the WebM video (container signature, and a
real Chromium <video> decoding it), and the multi-frame true colour Secondary Capture (dciodvfy,
pydicom and dcmtk read it; derived, burned in, same study, new series; demo label)."""

from __future__ import annotations

import json
import re
import subprocess

import numpy as np
import pydicom
import pytest
from orthanc_helpers import phantom_cache
from reporting_helpers import (
    SEED_ONE_STUDY,
    a4c_paths,
    dciodvfy_errors,
    dcmdump_reads,
    load_loop,
)
from support import need_tool

from reporting.overlay import (
    BANNER_RGB,
    CONTOUR_RGB,
    EBML_MAGIC,
    RenderingError,
    render_overlay_frames,
    write_overlay_video,
)
from reporting.secondary_capture import write_secondary_capture
from reporting.types import DEMO_LABEL_ASCII


@pytest.fixture(scope="module")
def loop(request, tmp_path_factory):
    (path,) = a4c_paths(phantom_cache(request.config, tmp_path_factory), 1, SEED_ONE_STUDY)
    return load_loop(path)


@pytest.fixture(scope="module")
def rendered(loop) -> dict[bool, np.ndarray]:
    m = loop.measurements
    ed = tuple(b.ed_frame for b in m.beats)
    es = tuple(b.es_frame for b in m.beats)
    return {
        demo: render_overlay_frames(
            loop.cine.frames, loop.masks, ed_frames=ed, es_frames=es, demo_models=demo
        )
        for demo in (True, False)
    }


def _banner_pixels(frame: np.ndarray) -> int:
    """Pixels of the demo banner's red in the top strip."""
    top = frame[: frame.shape[0] // 12].astype(int)
    return int((np.abs(top - np.array(BANNER_RGB)).sum(axis=-1) < 30).sum())


def test_overlay_draws_the_measured_contour(loop, rendered):
    frames = rendered[False]
    assert frames.shape == loop.cine.frames.shape and frames.dtype == np.uint8
    i = loop.measurements.beats[0].ed_frame
    changed = np.any(frames[i] != loop.cine.frames[i], axis=-1)
    contour = np.all(np.abs(frames[i].astype(int) - CONTOUR_RGB) < 40, axis=-1)
    mask = loop.masks[i]
    # the contour colour sits on the mask's boundary, not in its interior or far outside it
    boundary = mask & ~np.roll(mask, 1, 0) | mask & ~np.roll(mask, -1, 0)
    boundary |= mask & ~np.roll(mask, 1, 1) | mask & ~np.roll(mask, -1, 1)
    near = np.zeros_like(mask)
    for dy in range(-3, 4):
        for dx in range(-3, 4):
            near |= np.roll(np.roll(boundary, dy, 0), dx, 1)
    assert contour.sum() > boundary.sum() * 0.5
    assert (contour & ~near).sum() < 0.02 * contour.sum()
    assert changed.sum() > 0
    # the demo banner only on demo renderings
    assert _banner_pixels(rendered[True][0]) > 500
    assert _banner_pixels(rendered[False][0]) == 0


def test_overlay_video_is_webm_vp8_that_chromium_plays(loop, rendered, tmp_path):
    path = write_overlay_video(rendered[True], tmp_path / "overlay.webm", loop.cine.frame_time_ms)
    data = path.read_bytes()
    assert data.startswith(EBML_MAGIC)
    assert b"webm" in data[:64] and b"V_VP8" in data[:4096]
    with pytest.raises(ValueError, match="webm"):
        write_overlay_video(rendered[True], tmp_path / "overlay.mp4", loop.cine.frame_time_ms)

    chromium = need_tool("chromium", "chromium")
    page = tmp_path / "play.html"
    page.write_text(
        """<!doctype html><html><body><pre id="out">pending</pre>
<video id="v" muted src="overlay.webm"></video>
<script>
const v = document.getElementById('v'), out = document.getElementById('out');
v.addEventListener('error', () => { out.textContent = 'error ' + (v.error && v.error.code); });
v.addEventListener('loadeddata', () => {
  out.textContent = JSON.stringify({width: v.videoWidth, height: v.videoHeight,
    duration: v.duration, readyState: v.readyState});
});
</script></body></html>"""
    )
    result = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--allow-file-access-from-files",
            "--virtual-time-budget=5000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r'<pre id="out">([^<]*)</pre>', result.stdout)
    assert found, result.stderr[-2000:]
    played = json.loads(found.group(1))  # "pending" or "error N" fail here, with the text
    rows, cols = loop.cine.frames.shape[1:3]
    assert (played["width"], played["height"]) == (cols + cols % 2, rows + rows % 2)
    expected_s = loop.cine.n_frames * loop.cine.frame_time_ms / 1000.0
    assert played["duration"] == pytest.approx(expected_s, rel=0.1)
    assert played["readyState"] >= 2


def test_overlay_video_refuses_what_is_not_a_loop(tmp_path):
    with pytest.raises(ValueError):
        write_overlay_video(np.zeros((0, 8, 8, 3), np.uint8), tmp_path / "x.webm", 30.0)
    (tmp_path / "fake.webm").write_bytes(b"not a video")
    from reporting.overlay import check_webm

    with pytest.raises(RenderingError):
        check_webm(tmp_path / "fake.webm")


@pytest.mark.parametrize("demo", [True, False])
def test_secondary_capture_is_valid_derived_and_in_the_study(loop, rendered, tmp_path, demo):
    out = tmp_path / "sc.dcm"
    sc = write_secondary_capture(
        loop.header, rendered[demo], out, frame_time_ms=loop.cine.frame_time_ms, demo_models=demo
    )
    assert dciodvfy_errors(out) == []
    dcmdump_reads(out)
    back = pydicom.dcmread(out)
    src = loop.header
    assert back.SOPClassUID == pydicom.uid.MultiFrameTrueColorSecondaryCaptureImageStorage
    assert back.StudyInstanceUID == src.StudyInstanceUID
    assert back.PatientID == src.PatientID
    assert back.SeriesInstanceUID not in (src.SeriesInstanceUID, "")
    assert back.SOPInstanceUID != src.SOPInstanceUID
    assert back.BurnedInAnnotation == "YES"
    assert list(back.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert back.DerivationDescription.startswith("LV cavity contour")
    assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert int(back.NumberOfFrames) == loop.cine.n_frames
    assert float(back.FrameTime) == pytest.approx(loop.cine.frame_time_ms, rel=1e-3)
    pixels = back.pixel_array  # JPEG baseline, decoded to RGB
    assert pixels.shape == rendered[demo].shape
    assert np.abs(pixels.astype(int) - rendered[demo].astype(int)).mean() < 3
    assert (DEMO_LABEL_ASCII in back.DerivationDescription) is demo
    assert ("DEMO" in back.SeriesDescription) is demo
    assert (_banner_pixels(pixels[0]) > 500) is demo
    assert sc.SOPInstanceUID == back.SOPInstanceUID
