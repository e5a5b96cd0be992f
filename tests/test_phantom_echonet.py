"""Phantoms in the EchoNet-Dynamic layout, read back the way EchoNet's own loader reads them."""

from __future__ import annotations

import collections
import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from inference.phantom import generate_phantoms
from inference.phantom.echonet import split_for

N_VIDEOS = 8
SEED = 5


def read_filelist(root: Path) -> list[dict[str, str]]:
    with (root / "FileList.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def read_tracings(root: Path):
    """EchoNet's convention: per file, frames in order of first appearance; per frame, rows."""
    frames: dict[str, list[int]] = collections.defaultdict(list)
    trace: dict[str, dict[int, list]] = collections.defaultdict(
        lambda: collections.defaultdict(list)
    )
    with (root / "VolumeTracings.csv").open() as fh:
        header = fh.readline().strip().split(",")
        assert header == ["FileName", "X1", "Y1", "X2", "Y2", "Frame"]
        for line in fh:
            filename, x1, y1, x2, y2, frame = line.strip().split(",")
            frame = int(frame)
            if frame not in trace[filename]:
                frames[filename].append(frame)
            trace[filename][frame].append((float(x1), float(y1), float(x2), float(y2)))
    return frames, {k: {f: np.array(v) for f, v in d.items()} for k, d in trace.items()}


def echonet_polygon_mask(t: np.ndarray, shape=(112, 112)) -> np.ndarray:
    """EchoNet builds the polygon from the chord endpoints, skipping the long-axis row."""
    x1, y1, x2, y2 = t[:, 0], t[:, 1], t[:, 2], t[:, 3]
    x = np.concatenate((x1[1:], np.flip(x2[1:])))
    y = np.concatenate((y1[1:], np.flip(y2[1:])))
    pts = np.stack([np.rint(x), np.rint(y)], axis=1).astype(np.int32)
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [pts], 1)
    return mask.astype(bool)


def read_video(path: Path) -> np.ndarray:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return np.stack(frames)


@pytest.fixture(scope="module")
def echonet_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("echonet")
    written = generate_phantoms(out, N_VIDEOS, SEED, fmt="echonet")
    assert written == [out / "FileList.csv"]
    return out


@pytest.mark.slow
def test_csv_headers_are_exactly_echonets(echonet_dir):
    first = (echonet_dir / "FileList.csv").read_text().splitlines()[0]
    assert first == "FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split"
    first = (echonet_dir / "VolumeTracings.csv").read_text().splitlines()[0]
    assert first == "FileName,X1,Y1,X2,Y2,Frame"


@pytest.mark.slow
def test_filelist_rows(echonet_dir):
    rows = read_filelist(echonet_dir)
    assert len(rows) == N_VIDEOS
    assert len({r["FileName"] for r in rows}) == N_VIDEOS
    for i, r in enumerate(rows):
        assert "." not in r["FileName"]  # EchoNet appends .avi itself
        assert (echonet_dir / "Videos" / f"{r['FileName']}.avi").exists()
        ef, esv, edv = float(r["EF"]), float(r["ESV"]), float(r["EDV"])
        assert ef == pytest.approx(100.0 * (edv - esv) / edv, abs=1e-9)
        assert 15.0 <= ef <= 80.0
        assert 50.0 <= edv <= 250.0 and 0 < esv < edv
        assert r["FrameHeight"] == r["FrameWidth"] == "112"
        assert 30 <= int(r["FPS"]) <= 80
        assert r["Split"] == split_for(i)
    assert {r["Split"] for r in rows} == {"TRAIN", "VAL", "TEST"}
    assert [r["Split"] for r in rows].count("TRAIN") == 6


@pytest.mark.slow
def test_videos_have_the_listed_frames(echonet_dir):
    for r in read_filelist(echonet_dir):
        video = read_video(echonet_dir / "Videos" / f"{r['FileName']}.avi")
        assert video.shape == (int(r["NumberOfFrames"]), 112, 112, 3)
        assert int(r["NumberOfFrames"]) >= 64
        # grey in three channels, fan bright enough to see, black corners
        assert np.abs(video[..., 0].astype(int) - video[..., 2].astype(int)).mean() < 3
        assert video.mean() > 8 and video[:, :5, :5].mean() < 5


@pytest.mark.slow
def test_tracings_fill_a_plausible_lv(echonet_dir):
    frames, trace = read_tracings(echonet_dir)
    rows = {f"{r['FileName']}.avi": r for r in read_filelist(echonet_dir)}
    assert set(frames) == set(rows)
    for name, r in rows.items():
        assert len(frames[name]) == 2
        small_f, large_f = frames[name][0], frames[name][-1]
        small, large = trace[name][small_f], trace[name][large_f]
        assert small.shape == large.shape == (21, 4)
        # ED precedes ES within the traced beat; ES is written first, as EchoNet expects
        assert large_f < small_f < int(r["NumberOfFrames"])
        m_small, m_large = echonet_polygon_mask(small), echonet_polygon_mask(large)
        for m in (m_small, m_large):
            assert 0.02 <= m.mean() <= 0.25, (name, m.mean())
        assert m_large.sum() > m_small.sum()
        # area ratio tracks the listed volumes (V ~ A^1.5 for similar shapes)
        ratio = float(r["ESV"]) / float(r["EDV"])
        area_ratio = m_small.sum() / m_large.sum()
        assert area_ratio**1.5 == pytest.approx(ratio, abs=0.12)
        # first row is the long axis: its length matches the chords' extent along it
        ax = large[0]
        length = np.hypot(ax[2] - ax[0], ax[3] - ax[1])
        unit = (ax[2:] - ax[:2]) / length
        mids = (large[1:, :2] + large[1:, 2:]) / 2
        assert (mids[-1] - mids[0]) @ unit == pytest.approx(length * 19 / 20, rel=0.01)
        # chords are perpendicular to the long axis
        chords = large[1:, 2:] - large[1:, :2]
        assert np.abs(chords @ unit).max() < 0.01 * length


@pytest.mark.slow
def test_tracings_cover_dark_blood_in_the_video(echonet_dir):
    frames, trace = read_tracings(echonet_dir)
    for r in read_filelist(echonet_dir):
        name = f"{r['FileName']}.avi"
        video = read_video(echonet_dir / "Videos" / name)[..., 0].astype(float)
        for f in frames[name]:
            m = echonet_polygon_mask(trace[name][f])
            inner = cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            ring = cv2.dilate(m.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & ~m
            assert video[f][inner].mean() + 30 < video[f][ring].mean(), (name, f)


@pytest.mark.slow
def test_echonet_is_deterministic(echonet_dir, tmp_path):
    generate_phantoms(tmp_path, 2, SEED, fmt="echonet")
    first = read_filelist(echonet_dir)[:2]
    assert read_filelist(tmp_path) == [{**r, "Split": split_for(i)} for i, r in enumerate(first)]
    for r in first:
        name = f"{r['FileName']}.avi"
        assert (tmp_path / "Videos" / name).read_bytes() == (
            echonet_dir / "Videos" / name
        ).read_bytes()
