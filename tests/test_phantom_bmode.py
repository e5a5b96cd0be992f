"""The B-mode simulator (issue #16): deterministic, its truth matches what it draws, its
speckle is fully developed speckle, each family keeps its geometry, excluded families are never
drawn, and its DICOM is valid and decodes in the node. Speed is a bench, not a test here."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from inference.phantom.anatomy import Pose
from inference.phantom.bmode import (
    FAMILIES,
    HELD_OUT_FAMILY,
    SEALED_FAMILY,
    generate_bmode,
    select_families,
)
from inference.phantom.bmode.export import simulate_bmode
from inference.phantom.bmode.psf import apply_psf, make_psf
from inference.phantom.bmode.scatterers import ScattererField
from inference.phantom.bmode.tissue import MYOCARDIUM, N_LABELS, TissueTable
from inference.phantom.geometry import PolarGrid

FAST = "export_small"  # the smallest matrices: quick loops for the file-level tests


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out, seed in ((a, 3), (b, 3), (c, 4)):
        generate_bmode(out, 1, seed, families=[FAST], progress=False)
    fa = _files(a)
    assert set(fa) == {"study_0000_a4c.dcm", "study_0000_a4c.json", "study_0000_a4c_masks.npz"}
    assert fa == _files(b)
    assert _files(c)["study_0000_a4c.dcm"] != fa["study_0000_a4c.dcm"]


@pytest.mark.parametrize("family", ["cart_classic", HELD_OUT_FAMILY])
def test_truth_mask_is_the_dark_cavity_inside_brighter_myocardium(family: str) -> None:
    b = simulate_bmode(np.random.default_rng(11), (family,))
    loop = b.loop
    kernel = np.ones((5, 5), np.uint8)
    for f in (*loop.ed_frames, *loop.es_frames):
        mask = loop.masks[f].astype(np.uint8)
        inner = cv2.erode(mask, kernel, iterations=2).astype(bool)
        ring = (cv2.dilate(mask, kernel, iterations=2) - mask).astype(bool)
        grey = loop.frames[f].astype(np.float64)
        assert inner.sum() > 500
        # blood pool dark, the wall right around the truth border clearly brighter
        assert grey[ring].mean() > grey[inner].mean() + 25, (family, f)


def test_truth_volumes_follow_the_mask_and_ed_is_largest() -> None:
    b = simulate_bmode(np.random.default_rng(5), (FAST,))
    loop = b.loop
    areas = loop.masks.reshape(len(loop.masks), -1).sum(axis=1)
    for beat in loop.beats:
        assert loop.volumes_ml[beat.ed_frame] > loop.volumes_ml[beat.es_frame]
        assert areas[beat.ed_frame] > areas[beat.es_frame]
    assert 8.0 <= loop.ef_percent <= 82.0


def test_envelope_of_dense_scatterers_is_rayleigh() -> None:
    """Fully developed speckle: envelope mean/std = sqrt(pi/(4-pi)) = 1.91 before log
    compression, whatever the PSF's size."""
    grid = PolarGrid(n_r=400, n_theta=200, depth_cm=16.0, half_angle_rad=np.deg2rad(40))
    table = TissueTable(echo=np.ones(N_LABELS, np.float32), density=np.ones(N_LABELS, np.float32))
    field = ScattererField(grid, table, memory=0.9, rng=np.random.default_rng(0))
    labels = np.full((grid.n_r, grid.n_theta), MYOCARDIUM, np.uint8)
    iq = field.frame(labels, Pose((0.0, 3.0), 0.0), 0.0, 0.0, 8.0, np.ones(labels.shape, "f4"))
    psf = make_psf(grid, axial_px=1.2, lateral_deg=0.8, focus_frac=0.5, rayleigh_frac=0.3)
    env = np.hypot(*np.moveaxis(apply_psf(iq, psf), -1, 0))
    core = env[40:-40, 30:-30]
    snr = core.mean() / core.std()
    assert abs(snr - 1.91) < 0.12, snr
    # and the lateral speckle size grows away from the focus (the PSF widens with depth)
    sigma = psf.lateral_sigma_beams
    assert sigma[-1] > 1.5 * sigma[len(sigma) // 2]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sector_geometry_stays_in_its_family(family: str) -> None:
    fam = FAMILIES[family]
    rng = np.random.default_rng(21)
    b = simulate_bmode(rng, (family,))
    sector = b.plan.case.sector
    assert b.style.family == family
    assert (sector.rows, sector.cols) in fam.matrices
    half_deg = np.rad2deg(sector.half_angle_rad)
    assert fam.half_angle_deg[0] <= half_deg <= fam.half_angle_deg[1]
    assert fam.depth_cm[0] <= sector.depth_cm <= fam.depth_cm[1] + 2.5
    lit = (b.loop.frames > 0).any(axis=0)
    outside = lit & ~sector.mask()
    assert outside.sum() == 0  # echoes only inside the fan
    assert (b.loop.masks.any(axis=0) & ~sector.mask()).sum() == 0  # the LV lies in the fan


def test_excluded_family_is_never_drawn(tmp_path: Path) -> None:
    allowed = select_families(None, [HELD_OUT_FAMILY, "cart_classic", "zoom_green"])
    assert HELD_OUT_FAMILY not in allowed and allowed
    drawn = {simulate_bmode(np.random.default_rng(s), allowed).style.family for s in range(4)}
    assert drawn <= set(allowed)
    generate_bmode(
        tmp_path, 3, 9, exclude_families=[f for f in FAMILIES if f != FAST], progress=False
    )
    for truth in tmp_path.glob("*.json"):
        assert json.loads(truth.read_text())["style"]["family"] == FAST
    with pytest.raises(ValueError, match="unknown style family"):
        select_families(["no_such_family"], None)
    with pytest.raises(ValueError, match="no style family left"):
        select_families([FAST], [FAST])


def test_the_sealed_family_is_drawn_only_when_named() -> None:
    """The blind family never enters a default or an --exclude-families run (the documented
    training commands), so adding it left their loops as they were."""
    assert FAMILIES[SEALED_FAMILY].sealed
    assert SEALED_FAMILY not in select_families(None, None)
    assert SEALED_FAMILY not in select_families(None, [HELD_OUT_FAMILY])
    assert select_families(None, [HELD_OUT_FAMILY]) == tuple(
        f for f in FAMILIES if f not in (HELD_OUT_FAMILY, SEALED_FAMILY)
    )
    assert select_families([SEALED_FAMILY], None) == (SEALED_FAMILY,)
    b = simulate_bmode(np.random.default_rng(5), (SEALED_FAMILY,))
    assert b.style.family == SEALED_FAMILY and b.style.grey_map == "log_knee"


def test_loop_is_valid_dicom_and_decodes_in_the_node(tmp_path: Path) -> None:
    from inference.decode import read_cine
    from tests.reporting_helpers import dciodvfy_errors

    paths = generate_bmode(tmp_path, 2, 12, families=[FAST], progress=False)
    for path in paths:
        truth = json.loads(path.with_suffix(".json").read_text())
        assert dciodvfy_errors(path) == []
        cine = read_cine(path)
        assert cine.frames.shape[0] == truth["n_frames"]
        assert cine.frames.shape[1:3] == (truth["rows"], truth["cols"])
        assert cine.spacing_cm is not None
        assert cine.spacing_cm[0] == pytest.approx(truth["spacing_cm"][0], rel=1e-6)
        masks = np.load(path.parent / truth["masks_file"])["masks"]
        assert masks.shape == cine.frames.shape[:3]


def test_echonet_layout_trains_like_the_classic_one(tmp_path: Path) -> None:
    import csv

    (filelist,) = generate_bmode(tmp_path, 1, 2, fmt="echonet", families=[FAST], progress=False)
    rows = list(csv.DictReader(filelist.open()))
    assert len(rows) == 1
    video = cv2.VideoCapture(str(tmp_path / "Videos" / f"{rows[0]['FileName']}.avi"))
    n = 0
    while True:
        ok, frame = video.read()
        if not ok:
            break
        assert frame.shape[:2] == (112, 112)
        n += 1
    assert n == int(rows[0]["NumberOfFrames"])
    traces = list(csv.DictReader((tmp_path / "VolumeTracings.csv").open()))
    assert len(traces) == 2 * 21  # ES and ED: long axis + 20 chords each
    assert all(0 <= float(t[k]) < 112 for t in traces for k in ("X1", "Y1", "X2", "Y2"))


def test_echonet_video_is_the_nodes_own_view_of_the_export() -> None:
    """The training video is what the node's preprocessing makes of the DICOM-style export:
    annotations outside the fan are gone, the fan fills the grid, and the traced LV sits on the
    dark cavity of the same frame."""
    from inference.phantom.bmode.export import exported_rgb
    from inference.phantom.bmode.network_view import network_view
    from inference.phantom.echonet import tracing_rows
    from inference.preprocess import PreprocessParams, preprocess_cine
    from inference.types import Cine

    rng = np.random.default_rng(4)
    b = simulate_bmode(rng, (FAST,), max_side_px=336)
    rgb = exported_rgb(b, rng, (["Adult TTE", "A4C"], ["HR 70 bpm", "Depth 16 cm"]))
    small, grid = network_view(rgb, b.plan.case.plan.frame_time_ms)
    assert small.shape == (len(rgb), 112, 112, 3) and small.dtype == np.uint8
    cine = Cine(rgb, b.plan.case.plan.frame_time_ms, "phantom", None, None, None, "x")
    node = preprocess_cine(cine, PreprocessParams((0.0,) * 3, (1.0,) * 3)).frames
    assert np.abs(node.transpose(0, 2, 3, 1) - small).max() <= 1.0  # the node's own pixels
    lit = small.max(axis=(0, 3)) > 0
    rows, cols = np.nonzero(lit)
    assert rows.max() - rows.min() >= 100 or cols.max() - cols.min() >= 100  # fan fills it
    frame = b.loop.beats[0].ed_frame
    trace = np.array(tracing_rows(b.loop, frame, grid))[1:, :4]  # the 20 chords
    inside = cv2.fillPoly(
        np.zeros((112, 112), np.uint8),
        [np.round(np.concatenate([trace[:, :2], trace[::-1, 2:]])).astype(np.int32)],
        1,
    ).astype(bool)
    grey = small[frame].mean(axis=2)
    ring = cv2.dilate(inside.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool) & ~inside
    assert grey[inside].mean() < grey[ring].mean()  # a dark cavity inside brighter walls
