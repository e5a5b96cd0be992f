"""Negative phantom loops (issue #14): every class is a valid, decodable US multi-frame file
with a truth JSON that says nothing may be published, and the set is a function of the seed."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from support import need_tool

from inference.decode import read_cine
from inference.phantom.negatives import (
    NEGATIVE_CLASSES,
    generate_negatives,
    iter_negatives,
    simulate_negative,
)
from inference.phantom.study import layout_for

SEED = 77
MATRIX = (160, 214)  # small frames keep the five loops to a few seconds
MAX_FRAMES = 64
VIEWS = {
    "blank": "none",
    "noise": "none",
    "non_cardiac": "none",
    "wrong_view": "PLAX",
    "lv_cut_off": "A4C",
}


def truth_of(path: Path) -> dict:
    return json.loads(path.with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def negatives(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("negatives")
    return generate_negatives(out, n=5, seed=SEED, matrix=MATRIX, max_frames=MAX_FRAMES)


def _centre(frames: np.ndarray, truth: dict) -> np.ndarray:
    """A patch well inside the fan (the middle of its depth, on the axis), grey."""
    rows, cols = truth["rows"], truth["cols"]
    r0, c0 = int(0.45 * rows), int(0.5 * cols)
    return frames[:, r0 - 10 : r0 + 10, c0 - 12 : c0 + 12].astype(np.float64).mean(-1)


def test_every_class_is_written_with_a_truth_that_publishes_nothing(negatives):
    assert [p.name for p in negatives] == [
        f"negative_{i:04d}_{c}.dcm" for i, c in enumerate(NEGATIVE_CLASSES)
    ]
    for path in negatives:
        t = truth_of(path)
        cls = path.stem.split("_", 2)[2]
        assert t["negative_class"] == cls
        assert t["view"] == VIEWS[cls]
        assert t["ef_publishable"] is False
        for key in ("ef_percent", "edv_ml", "esv_ml", "beats", "ed_frames", "masks_file"):
            assert t[key] is None, (cls, key)
        assert (t["rows"], t["cols"]) == MATRIX
        assert t["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.3.1"
    cut = truth_of(negatives[4])
    assert 15.0 <= cut["reference_ef_percent"] <= 80.0
    assert cut["lv_outside_fan_fraction_min"] >= 0.25
    assert cut["negative_variant"] in ("side_left", "side_right", "too_shallow")
    uids = {truth_of(p)["sop_instance_uid"] for p in negatives}
    assert len(uids) == 5


def test_every_loop_decodes_with_its_timing_and_calibration(negatives):
    for path in negatives:
        t = truth_of(path)
        cine = read_cine(path)
        assert cine.frames.shape == (t["n_frames"], *MATRIX, 3)
        assert cine.frame_time_ms == pytest.approx(t["frame_time_ms"], abs=0.05)
        assert cine.spacing_cm == pytest.approx(tuple(t["spacing_cm"]), rel=1e-6)
        assert cine.tissue_region is not None
        assert cine.heart_rate_bpm == pytest.approx(t["heart_rate_bpm"], abs=1.0)


def test_the_content_is_what_the_class_says(negatives):
    patches = {
        p.stem.split("_", 2)[2]: (_centre(read_cine(p).frames, truth_of(p))) for p in negatives
    }
    # blank: one grey level in space and time (JPEG may ripple it by a count or two)
    assert float(patches["blank"].std()) < 2.0
    # noise: uniform 0..255 (std 73.9), independent from frame to frame
    noise = patches["noise"]
    assert 60.0 < float(noise.std()) < 85.0
    r = np.corrcoef(noise[:-1].ravel(), noise[1:].ravel())[0, 1]
    assert abs(r) < 0.1
    # tissue (non-cardiac and the two hearts): speckle that persists from frame to frame
    for cls in ("non_cardiac", "wrong_view", "lv_cut_off"):
        p = patches[cls]
        assert float(p.std()) > 3.0, cls
        r = np.corrcoef(p[:-1].ravel(), p[1:].ravel())[0, 1]
        assert r > 0.3, (cls, r)


def test_dciodvfy_reports_no_errors(negatives):
    exe = need_tool("dciodvfy", "dicom3tools")
    for p in negatives:
        res = subprocess.run([exe, str(p)], capture_output=True, text=True, timeout=120)
        errors = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.startswith("Error")]
        assert not errors, f"{p.name}: {errors}"


def test_same_seed_same_bytes_and_the_first_loops_do_not_depend_on_n(negatives, tmp_path):
    a = generate_negatives(tmp_path / "a", n=2, seed=SEED, matrix=MATRIX, max_frames=MAX_FRAMES)
    b = generate_negatives(tmp_path / "b", n=2, seed=SEED, matrix=MATRIX, max_frames=MAX_FRAMES)
    c = generate_negatives(tmp_path / "c", n=2, seed=SEED + 1, matrix=MATRIX, max_frames=MAX_FRAMES)
    for pa, pb, p5, pc in zip(a, b, negatives[:2], c, strict=True):
        for suffix in (".dcm", ".json"):
            data = pa.with_suffix(suffix).read_bytes()
            assert data == pb.with_suffix(suffix).read_bytes()
            assert data == p5.with_suffix(suffix).read_bytes()
            assert data != pc.with_suffix(suffix).read_bytes()


def test_iter_negatives_yields_the_written_loops_in_memory(negatives):
    loops = list(iter_negatives(2, SEED, matrix=MATRIX, max_frames=MAX_FRAMES))
    assert [lp.negative_class for lp in loops] == ["blank", "noise"]
    for lp, path in zip(loops, negatives, strict=False):
        t = truth_of(path)
        assert lp.variant == t["negative_variant"]
        assert lp.frames.shape == (t["n_frames"], *MATRIX)
        assert lp.plan.frame_time_ms == t["frame_time_ms"]
    # the noise loop is RLE (lossless): the fan's pixels are exactly the in-memory frames
    noise, decoded = loops[1], read_cine(negatives[1]).frames
    fan = noise.sector.mask()
    assert np.array_equal(decoded[:, fan, 0], noise.frames[:, fan])


def test_bad_arguments_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="negative class"):
        simulate_negative("cat", rng, layout_for(*MATRIX), MAX_FRAMES)
    with pytest.raises(ValueError, match="n must be"):
        generate_negatives(tmp_path, n=0, seed=1)
    with pytest.raises(ValueError, match="max_frames"):
        generate_negatives(tmp_path, n=1, seed=1, max_frames=10)
    with pytest.raises(ValueError, match="matrix"):
        generate_negatives(tmp_path, n=1, seed=1, matrix=(32, 32))


def _echo_agent(exe: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECHO_AGENT_")}
    return subprocess.run(
        [exe, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_phantom_command_writes_negatives(echo_agent_exe, tmp_path):
    res = _echo_agent(
        echo_agent_exe, "phantom", "neg", "--negative", "--n", "1", "--seed", "5", cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr
    files = [Path(p) for p in json.loads(res.stdout)["files"]]
    assert [p.name for p in files] == ["negative_0000_blank.dcm"]
    truth = json.loads((tmp_path / "neg" / "negative_0000_blank.json").read_text())
    assert truth["negative_class"] == "blank" and truth["ef_percent"] is None
    assert read_cine(tmp_path / "neg" / "negative_0000_blank.dcm").n_frames == truth["n_frames"]
    bad = _echo_agent(
        echo_agent_exe, "phantom", "x", "--negative", "--format", "echonet", cwd=tmp_path
    )
    assert bad.returncode == 2
    assert "--negative" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
