"""Phantom DICOM studies: valid files, decodable pixels, exact and self-consistent truth."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.pixels import pixel_array
from pydicom.tag import Tag
from support import need_tool

from inference.disks import disks_volume_ml
from inference.phantom import generate_phantoms
from inference.phantom.cases import EF_TARGET_PERCENT, Layout, sample_a4c_case
from inference.phantom.study import layout_for

N_STUDIES = 4
SEED = 1234  # the seed of the shared phantom_studies fixture (conftest)
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
US_SINGLE = "1.2.840.10008.5.1.4.1.1.6.1"
ALL_SYNTAXES = {
    "1.2.840.10008.1.2.4.50": "YBR_FULL_422",
    "1.2.840.10008.1.2.5": "RGB",
    "1.2.840.10008.1.2.1": None,  # RGB or MONOCHROME2
}
REQUIRED_TRUTH = (
    "ef_percent",
    "edv_ml",
    "esv_ml",
    "heart_rate_bpm",
    "ed_frames",
    "es_frames",
    "view",
)


def load_truth(dcm: Path) -> dict:
    return json.loads(dcm.with_suffix(".json").read_text())


def mask_volume_ml(mask: np.ndarray, apex_px, mid_px, spacing_cm: float) -> float:
    """The disks volume of the largest outline in a mask, the way measurement code would."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    outline = max(contours, key=cv2.contourArea)[:, 0, :].astype(float)
    return disks_volume_ml(
        outline * spacing_cm, np.asarray(apex_px) * spacing_cm, np.asarray(mid_px) * spacing_cm
    )


@pytest.fixture(scope="module")
def study_dir(phantom_studies) -> tuple[Path, list[Path]]:
    return phantom_studies[0].parent, phantom_studies


@pytest.fixture(scope="module")
def paths(study_dir) -> list[Path]:
    return study_dir[1]


@pytest.fixture(scope="module")
def a4c_paths(paths) -> list[Path]:
    return [p for p in paths if load_truth(p)["view"] == "A4C"]


@pytest.mark.slow
def test_one_a4c_and_at_least_one_distractor_per_study(study_dir, paths):
    out, _ = study_dir
    assert all(p.suffix == ".dcm" and p.exists() for p in paths)
    assert sorted(paths) == sorted(out.glob("*.dcm"))
    for i in range(N_STUDIES):
        mine = [p for p in paths if p.name.startswith(f"study_{i:04d}_")]
        views = [load_truth(p)["view"] for p in mine]
        assert views.count("A4C") == 1, mine
        assert len(views) >= 2
    # the distractor kinds cycle
    kinds = {load_truth(p)["view"] for p in paths} - {"A4C"}
    assert kinds == {"PLAX", "still", "color_doppler"}


@pytest.mark.slow
def test_files_stay_under_100_mb(paths):
    for p in paths:
        assert p.stat().st_size < 100 * 1024 * 1024, p


@pytest.mark.slow
def test_dciodvfy_reports_no_errors(paths):
    exe = need_tool("dciodvfy", "dicom3tools")
    for p in paths:
        res = subprocess.run([exe, str(p)], capture_output=True, text=True, timeout=120)
        lines = (res.stdout + res.stderr).splitlines()
        errors = [ln for ln in lines if ln.startswith("Error")]
        assert not errors, f"{p.name}: {errors}"


@pytest.mark.slow
def test_dcmdump_reads_every_file(paths):
    exe = need_tool("dcmdump", "dcmtk")
    for p in paths:
        res = subprocess.run([exe, "-M", str(p)], capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, f"{p.name}: {res.stderr}"
        assert "(7fe0,0010)" in res.stdout.lower()


@pytest.mark.slow
def test_all_four_encodings_and_pixels_decode(a4c_paths, paths):
    seen = set()
    for p in paths:
        ds = pydicom.dcmread(p)
        truth = load_truth(p)
        ts = str(ds.file_meta.TransferSyntaxUID)
        assert ts == truth["transfer_syntax_uid"]
        assert ds.PhotometricInterpretation == truth["photometric_interpretation"]
        if ALL_SYNTAXES.get(ts):
            assert ds.PhotometricInterpretation == ALL_SYNTAXES[ts]
        if p in a4c_paths:
            seen.add((ts, ds.PhotometricInterpretation))
        raw = pixel_array(ds, raw=True)  # every frame, no colour conversion: fast
        n = int(ds.get("NumberOfFrames", 1))
        expect = (ds.Rows, ds.Columns) if ds.SamplesPerPixel == 1 else (ds.Rows, ds.Columns, 3)
        assert raw.shape == ((n, *expect) if n > 1 else expect)
        assert n == truth["n_frames"]
        assert raw.dtype == np.uint8 and raw.max() > 100
        rgb = pixel_array(ds, index=0) if n > 1 else pixel_array(ds)
        assert rgb.shape == expect
    assert seen == {
        ("1.2.840.10008.1.2.4.50", "YBR_FULL_422"),
        ("1.2.840.10008.1.2.5", "RGB"),
        ("1.2.840.10008.1.2.1", "RGB"),
        ("1.2.840.10008.1.2.1", "MONOCHROME2"),
    }


@pytest.mark.slow
def test_a4c_headers_describe_the_loop(a4c_paths):
    for p in a4c_paths:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        t = load_truth(p)
        assert ds.SOPClassUID == US_MULTIFRAME
        assert ds.Modality == "US"
        assert ds.Manufacturer == "echo-agent phantom"
        assert float(ds.FrameTime) == pytest.approx(t["frame_time_ms"], abs=1e-9)
        assert ds.FrameIncrementPointer == Tag(0x0018, 0x1063)
        assert int(ds.CineRate) == round(1000.0 / t["frame_time_ms"])
        assert int(ds.RecommendedDisplayFrameRate) == int(ds.CineRate)
        assert int(ds.HeartRate) == t["heart_rate_bpm"]
        assert int(ds.NumberOfFrames) == t["n_frames"] == len(t["volumes_ml"])
        assert ds.SOPInstanceUID == t["sop_instance_uid"]
        assert ds.StudyInstanceUID == t["study_instance_uid"]
        assert ds.get("SeriesDescription") == t["series_description"]
        assert ds.LossyImageCompression == (
            "01" if ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50" else "00"
        )
        if ds.LossyImageCompression == "01":
            assert ds.LossyImageCompressionMethod == "ISO_10918_1"
            assert float(ds.LossyImageCompressionRatio) > 1.0
        for key in (
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "PatientSex",
            "StudyDate",
            "StudyTime",
            "AccessionNumber",
            "SeriesInstanceUID",
        ):
            assert str(ds.get(key, "")), key

        region = ds.SequenceOfUltrasoundRegions[0]
        assert region.RegionSpatialFormat == 1 and region.RegionDataType == 1
        assert region.PhysicalUnitsXDirection == 3 and region.PhysicalUnitsYDirection == 3
        assert region.PhysicalDeltaX == pytest.approx(t["spacing_cm"][1])
        assert region.PhysicalDeltaY == pytest.approx(t["spacing_cm"][0])
        assert 0 <= region.RegionLocationMinX0 < region.RegionLocationMaxX1 < ds.Columns
        assert 0 <= region.RegionLocationMinY0 < region.RegionLocationMaxY1 < ds.Rows
        # the reference pixel is the transducer, i.e. the fan's apex
        apex_col = region.RegionLocationMinX0 + region.ReferencePixelX0
        apex_row = region.RegionLocationMinY0 + region.ReferencePixelY0
        assert abs(apex_col - t["sector"]["apex_col"]) <= 1
        assert abs(apex_row - t["sector"]["apex_row"]) <= 1
        # depth spans the region's height
        height_cm = (region.RegionLocationMaxY1 - apex_row) * region.PhysicalDeltaY
        assert height_cm == pytest.approx(t["depth_cm"], abs=2 * region.PhysicalDeltaY)


@pytest.mark.slow
def test_study_identity_is_shared_and_uids_unique(paths):
    by_study: dict[str, list] = {}
    sops, series = set(), set()
    for p in paths:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        by_study.setdefault(p.name[:10], []).append(ds)
        sops.add(ds.SOPInstanceUID)
        series.add(ds.SeriesInstanceUID)
    assert len(sops) == len(paths) and len(series) == len(paths)
    study_uids = set()
    for items in by_study.values():
        for key in ("StudyInstanceUID", "PatientID", "PatientName", "AccessionNumber"):
            assert len({str(d.get(key)) for d in items}) == 1, key
        study_uids.add(items[0].StudyInstanceUID)
    assert len(study_uids) == N_STUDIES


@pytest.mark.slow
def test_truth_is_complete_and_self_consistent(a4c_paths):
    for p in a4c_paths:
        t = load_truth(p)
        for key in REQUIRED_TRUTH:
            assert key in t, key
        assert t["view"] == "A4C"
        assert t["ef_percent"] == 100.0 * (t["edv_ml"] - t["esv_ml"]) / t["edv_ml"]
        assert 15.0 <= t["ef_percent"] <= 80.0
        assert 45 <= t["heart_rate_bpm"] <= 110
        assert 30.0 <= 1000.0 / t["frame_time_ms"] <= 80.0
        assert 13.0 <= t["depth_cm"] <= 20.0
        assert 50.0 <= t["edv_ml"] <= 250.0
        beats = t["beats"]
        assert len(beats) >= 2
        assert np.mean([b["edv_ml"] for b in beats]) == pytest.approx(t["edv_ml"], rel=1e-12)
        assert np.mean([b["esv_ml"] for b in beats]) == pytest.approx(t["esv_ml"], rel=1e-12)
        vols = np.array(t["volumes_ml"])
        for b in beats:
            assert b["ed_frame"] < b["es_frame"]
            assert b["ed_frame"] in t["ed_frames"] and b["es_frame"] in t["es_frames"]
            assert vols[b["ed_frame"]] == b["edv_ml"] and vols[b["es_frame"]] == b["esv_ml"]
            # ED is the largest and ES the smallest LV of the beat
            beat_vols = vols[b["ed_frame"] : b["es_frame"] + 1]
            assert beat_vols.max() == b["edv_ml"] and beat_vols.min() == b["esv_ml"]
        # beats are about one RR interval apart
        rr = 60.0 / t["heart_rate_bpm"] * 1000.0 / t["frame_time_ms"]
        assert np.all(np.abs(np.diff(t["ed_frames"]) - rr) <= 1.0)
        assert t["spacing_cm"][0] == t["spacing_cm"][1]


@pytest.mark.slow
def test_masks_match_frames_and_volumes(a4c_paths):
    for p in a4c_paths:
        t = load_truth(p)
        with np.load(p.parent / t["masks_file"]) as z:
            masks = z["masks"]
            apex, mid = z["apex_px"], z["mv_mid_px"]
            assert masks.dtype == bool
            assert masks.shape == (t["n_frames"], t["rows"], t["cols"])
            np.testing.assert_array_equal(z["volumes_ml"], t["volumes_ml"])
        areas = masks.reshape(len(masks), -1).sum(1)
        assert min(areas[t["ed_frames"]]) > max(areas[t["es_frames"]])
        spacing = t["spacing_cm"][0]
        for b in t["beats"]:
            for frame, truth_ml in ((b["ed_frame"], b["edv_ml"]), (b["es_frame"], b["esv_ml"])):
                got = mask_volume_ml(masks[frame], apex[frame], mid[frame], spacing)
                assert got == pytest.approx(truth_ml, rel=0.03), (p.name, frame)
        # the LV lies inside the fan
        x0, y0, x1, y1 = t["sector"]["bbox_px"]
        outside = masks.copy()
        outside[:, y0 : y1 + 1, x0 : x1 + 1] = False
        assert not outside.any()


@pytest.mark.slow
def test_lv_is_dark_and_walls_bright_in_the_pixels(a4c_paths):
    for p in a4c_paths:
        t = load_truth(p)
        ds = pydicom.dcmread(p)
        f = t["ed_frames"][0]
        img = pixel_array(ds, index=f)
        grey = img if img.ndim == 2 else img.mean(-1)
        with np.load(p.parent / t["masks_file"]) as z:
            m = z["masks"][f]
        ring = cv2.dilate(m.astype(np.uint8), np.ones((25, 25), np.uint8)).astype(bool) & ~m
        inner = cv2.erode(m.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
        assert grey[inner].mean() + 40 < grey[ring].mean(), p.name


@pytest.mark.slow
def test_annotations_are_burned_in_outside_the_fan(a4c_paths):
    for p in a4c_paths:
        t = load_truth(p)
        ds = pydicom.dcmread(p)
        img = pixel_array(ds, index=0)
        x0, y0, _, y1 = t["sector"]["bbox_px"]
        # text in the top corners and an ECG under the fan
        assert img[: y0 + 60, : x0 + 40].max() > 150
        assert img[y1 + 2 :, :].max() > 150


@pytest.mark.slow
def test_ecg_r_wave_marks_end_diastole(a4c_paths):
    """On the RGB exports: the ECG's R peaks sit at the cursor positions of the ED frames."""
    for p in a4c_paths:
        t = load_truth(p)
        if t["photometric_interpretation"] != "RGB":
            continue
        ds = pydicom.dcmread(p)
        img = pixel_array(ds, index=0).astype(int)
        y1 = t["sector"]["bbox_px"][3]
        strip = img[y1 + 2 :]
        green = (strip[..., 1] > 120) & (strip[..., 0] < 120) & (strip[..., 2] < 140)
        cols_with = np.flatnonzero(green.any(0))
        top = np.full(img.shape[1], strip.shape[0])
        top[cols_with] = green[:, cols_with].argmax(0)
        cols = img.shape[1]
        x0, x1 = int(0.06 * cols), int(0.94 * cols)
        n = t["n_frames"]
        peak_level = np.sort(top[cols_with])[:3].max() + 3
        for f in t["ed_frames"]:
            x = round(x0 + (x1 - x0) * f / (n - 1))
            window = top[max(0, x - 6) : x + 7]
            assert window.min() <= peak_level, (p.name, f)


@pytest.mark.slow
def test_distractors_are_labelled_and_shaped_as_such(paths, a4c_paths):
    a4c_study = {p.name[:10]: pydicom.dcmread(p, stop_before_pixels=True) for p in a4c_paths}
    for p in paths:
        t = load_truth(p)
        if t["view"] == "A4C":
            continue
        assert t["ef_percent"] is None and t["edv_ml"] is None and t["esv_ml"] is None
        assert t["masks_file"] is None
        ds = pydicom.dcmread(p)
        ref = a4c_study[p.name[:10]]
        assert ds.StudyInstanceUID == ref.StudyInstanceUID
        assert ds.SeriesInstanceUID != ref.SeriesInstanceUID
        if t["view"] == "still":
            assert ds.SOPClassUID == US_SINGLE
            assert "NumberOfFrames" not in ds and "FrameTime" not in ds
        else:
            assert ds.SOPClassUID == US_MULTIFRAME
            assert int(ds.NumberOfFrames) > 10
        if t["view"] == "color_doppler":
            assert ds.UltrasoundColorDataPresent == 1
            assert ds.SamplesPerPixel == 3
            kinds = [r.RegionDataType for r in ds.SequenceOfUltrasoundRegions]
            assert kinds == [1, 2]
            flow = ds.SequenceOfUltrasoundRegions[1]
            frames = pixel_array(ds).astype(int)
            box = frames[
                :,
                flow.RegionLocationMinY0 : flow.RegionLocationMaxY1 + 1,
                flow.RegionLocationMinX0 : flow.RegionLocationMaxX1 + 1,
            ]
            chroma = np.abs(box[..., 0] - box[..., 2])
            assert (chroma > 80).mean() > 0.01  # saturated red/blue flow pixels
        else:
            assert ds.UltrasoundColorDataPresent == 0


@pytest.mark.slow
def test_same_seed_same_bytes_other_seed_differs(study_dir, tmp_path):
    out, _ = study_dir
    # each study and each loop in it has its own random stream, so study 0's A4C loop alone
    # must come out byte for byte as in the full run
    again = generate_phantoms(tmp_path / "again", 1, SEED, distractors=False)
    assert [p.name for p in again] == ["study_0000_a4c.dcm"]
    for name in ("study_0000_a4c.dcm", "study_0000_a4c.json", "study_0000_a4c_masks.npz"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name
    other = generate_phantoms(tmp_path / "other", 1, SEED + 1, distractors=False)
    assert other[0].read_bytes() != (out / "study_0000_a4c.dcm").read_bytes()
    first = load_truth(out / "study_0000_a4c.dcm")
    assert load_truth(other[0])["ef_percent"] != first["ef_percent"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0, "seed": 1}, "n must be"),
        ({"n": 2.5, "seed": 1}, "n must be"),
        ({"n": 1, "seed": -3}, "seed must be"),
        ({"n": 1, "seed": 1, "fmt": "png"}, "fmt must be"),
    ],
)
def test_bad_arguments_raise_value_error(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_phantoms(tmp_path / "x", **kwargs)


def test_output_path_that_is_a_file_is_rejected(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        generate_phantoms(f, 1, 1)


def test_case_sampler_spreads_ef_sizes_and_poses():
    """Many cases without rendering: EF roughly uniform over the range, realistic LV sizes."""
    layout = layout_for(480, 640)
    efs, lengths, angles = [], [], []
    for seed in range(160):
        case = sample_a4c_case(np.random.default_rng(seed), layout, max_frames=160)
        efs.append(case.ef_target_percent)
        lengths.append(case.anatomy.lv_length_cm)
        angles.append(case.pose.angle_rad)
        assert case.sector.depth_cm <= 20.0 and case.sector.depth_cm >= 13.0
        assert 30.0 <= case.plan.frame_rate_hz <= 80.0
        assert case.plan.n_frames <= 160
    lo, hi = EF_TARGET_PERCENT
    counts, _ = np.histogram(efs, bins=4, range=(lo, hi))
    assert counts.min() >= 25  # of 160: no quarter of the range is starved
    assert min(lengths) >= 7.0 and max(lengths) <= 10.0
    assert np.ptp(np.rad2deg(angles)) > 20.0


def test_native_layout_sector_fills_its_image():
    sector = Layout(rows=None, cols=None, sector_height_px=100).sector(15.0, np.deg2rad(40))
    x0, y0, x1, y1 = sector.bbox()
    assert (x0, y0) == (0, 0) and x1 == sector.cols - 1 and y1 == sector.rows - 1
