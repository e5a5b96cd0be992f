"""A4C selection on phantom loops and their distractors, the header rules on small synthetic
loops, and the bundled view classifier's accuracy on phantom seeds it was not trained on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from dicom_helpers import Ids, us_loop_dataset, write_instance
from orthanc_helpers import phantom_cache, phantom_studies, truth
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from inference.view_classifier import (
    A4C_LABEL,
    PHANTOM_WEIGHTS,
    TRAIN_SEED,
    ViewClassifierError,
    load_view_classifier,
    sample_frames,
)
from pacs_agent.config import SelectionConfig
from pacs_agent.selection import loop_timing, select_loop, view_from_metadata

SEED = 11  # four studies: every distractor kind, and A4C and PLAX loops without a description
HELD_OUT_SEEDS = (900001, 900002, 900003, 900004)
RULES = SelectionConfig()
REASON_START = {
    "PLAX": "view is not A4C",
    "still": "a still image",
    "color_doppler": "colour flow data present",
}


@pytest.fixture(scope="module")
def cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return phantom_cache(request.config, tmp_path_factory)


@pytest.fixture(scope="module")
def phantoms(cache: Path) -> list[Path]:
    return phantom_studies(cache, 4, SEED)


@pytest.fixture(scope="module")
def classifier():
    return load_view_classifier("phantom")


def of_view(phantoms: list[Path], view: str, described: bool | None = None) -> list[Path]:
    out = []
    for path in phantoms:
        t = truth(path)
        if t["view"] != view:
            continue
        if described is not None and bool(t["series_description"]) != described:
            continue
        out.append(path)
    return out


def rewritten(source: Path, target: Path, change) -> Path:
    ds = dcmread(source)
    change(ds)
    ds.save_as(target, enforce_file_format=True)
    return target


def test_every_phantom_loop_gets_the_right_verdict(phantoms, classifier) -> None:
    views = set()
    for path in phantoms:
        t = truth(path)
        views.add(t["view"])
        verdict = select_loop(path, RULES, classifier)
        if t["view"] == A4C_LABEL:
            assert verdict.eligible, (path.name, verdict)
            assert verdict.reason == ""
            expected_source = "metadata" if t["series_description"] else "classifier"
            assert verdict.view_source == expected_source, (path.name, verdict)
        else:
            assert not verdict.eligible, (path.name, verdict)
            assert verdict.reason.startswith(REASON_START[t["view"]]), (path.name, verdict)
    assert views == {"A4C", "PLAX", "still", "color_doppler"}


def test_without_a_classifier_an_undescribed_loop_is_view_unknown(phantoms) -> None:
    undescribed = of_view(phantoms, "A4C", described=False)
    assert undescribed, "the seed must give an A4C loop without a description"
    for path in undescribed:
        verdict = select_loop(path, RULES, None)
        assert not verdict.eligible
        assert verdict.reason.startswith("view unknown"), verdict
    for path in of_view(phantoms, "A4C", described=True):
        assert select_loop(path, RULES, None).eligible


def test_an_empty_description_leaves_the_view_to_the_classifier(
    phantoms, classifier, tmp_path
) -> None:
    def blank(ds: Dataset) -> None:
        ds.SeriesDescription = ""

    a4c = rewritten(of_view(phantoms, "A4C", described=True)[0], tmp_path / "a4c.dcm", blank)
    verdict = select_loop(a4c, RULES, classifier)
    assert verdict.eligible and verdict.view_source == "classifier", verdict
    assert "phantom-logreg: A4C" in verdict.view_detail

    plax = rewritten(of_view(phantoms, "PLAX", described=True)[0], tmp_path / "plax.dcm", blank)
    verdict = select_loop(plax, RULES, classifier)
    assert not verdict.eligible and verdict.view_source == "classifier", verdict
    assert verdict.reason.startswith("view is not A4C (classifier phantom-logreg: other")


def test_colour_pixels_are_caught_when_the_header_does_not_say_colour(phantoms, tmp_path) -> None:
    def hide_colour(ds: Dataset) -> None:
        ds.UltrasoundColorDataPresent = 0
        ds.SequenceOfUltrasoundRegions = Sequence(
            [r for r in ds.SequenceOfUltrasoundRegions if r.RegionDataType == 1]
        )
        ds.ImageType = ["ORIGINAL", "PRIMARY", "CHEST", "0001"]
        ds.SeriesDescription = "A4C"

    (colour,) = of_view(phantoms, "color_doppler")
    hidden = rewritten(colour, tmp_path / "colour.dcm", hide_colour)
    verdict = select_loop(hidden, RULES, None)
    assert not verdict.eligible
    assert verdict.reason.startswith("colour pixels in"), verdict


def small_loop(tmp_path: Path, name: str, frames: int = 40, **attrs: object) -> Path:
    ds = us_loop_dataset(Ids.new(), frames=frames, rows=32, columns=40)
    for key, value in attrs.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    return write_instance(tmp_path / f"{name}.dcm", ds)


@pytest.mark.parametrize(
    ("attrs", "rules", "expected"),
    [
        ({"HeartRate": 60}, RULES, ""),  # 39 x 33.3 ms = 1.30 s >= 1.00 s
        ({"HeartRate": 40}, RULES, "shorter than one cardiac cycle (1.30 s at 40 bpm"),
        ({}, RULES, ""),  # no heart rate: 1.30 s >= min_duration_s 1.0
        ({}, SelectionConfig(min_duration_s=2.0), "shorter than selection.min_duration_s"),
        ({"FrameTime": None}, RULES, "frame timing unknown"),
        ({"FrameTime": None, "CineRate": 30}, RULES, ""),
        ({"FrameTime": None, "CineRate": 60}, RULES, "shorter than selection.min_duration_s"),
        ({"Modality": "OT"}, RULES, "not an ultrasound image"),
        ({"UltrasoundColorDataPresent": 1}, RULES, "colour flow data present"),
        ({"ImageType": ["ORIGINAL", "PRIMARY", "", "0008"]}, RULES, "not a B-mode loop"),
        ({"SeriesDescription": "Subcostal 4 chamber"}, RULES, "view is not A4C"),
        ({"SeriesDescription": "LV"}, RULES, "view unknown"),
        ({"SeriesDescription": "Vue 4 cavités"}, SelectionConfig(view_patterns=["4 CAV"]), ""),
    ],
)
def test_header_rules(tmp_path, attrs, rules, expected) -> None:
    verdict = select_loop(small_loop(tmp_path, "loop", **attrs), rules, None)
    assert verdict.eligible == (expected == ""), verdict
    assert verdict.reason.startswith(expected), verdict


def test_a_single_frame_is_not_a_loop(tmp_path) -> None:
    verdict = select_loop(small_loop(tmp_path, "one", frames=1), RULES, None)
    assert verdict.reason == "a still image (one frame), not a cine loop"


def test_timing_from_frame_time_vector_and_cine_rate() -> None:
    ds = Dataset()
    ds.NumberOfFrames = 4
    ds.FrameTimeVector = [0, 20, 30, 50]
    timing = loop_timing(ds)
    assert timing is not None
    assert (timing.source, timing.duration_s, round(timing.frame_time_ms, 3)) == (
        "FrameTimeVector",
        0.1,
        33.333,
    )
    ds = Dataset()
    ds.NumberOfFrames = 31
    ds.CineRate = 50
    timing = loop_timing(ds)
    assert timing is not None
    assert (timing.source, timing.frame_time_ms, timing.duration_s) == ("CineRate", 20.0, 0.6)
    assert loop_timing(Dataset()) is None


def test_view_metadata_fields() -> None:
    patterns = RULES.view_patterns
    ds = Dataset()
    assert view_from_metadata(ds, patterns) == (None, "")
    ds.ProtocolName = "adult echo apical 4"
    assert view_from_metadata(ds, patterns) == (True, "Protocol Name 'adult echo apical 4'")
    ds = Dataset()
    item = Dataset()
    item.CodeMeaning = "Apical four chamber"
    ds.ViewCodeSequence = Sequence([item])
    assert view_from_metadata(ds, patterns)[0] is True
    ds = Dataset()
    ds.ImageComments = "plax zoom"
    assert view_from_metadata(ds, patterns) == (False, "Image Comments 'plax zoom'")


def test_the_classifier_separates_a4c_from_plax_on_held_out_seeds(cache, phantoms, classifier):
    loops = list(of_view(phantoms, "A4C")) + of_view(phantoms, "PLAX")
    for seed in HELD_OUT_SEEDS:
        assert not TRAIN_SEED <= seed < TRAIN_SEED + 100
        study = phantom_studies(cache, 1, seed)  # study 0 carries the PLAX distractor
        loops += [p for p in study if truth(p)["view"] in ("A4C", "PLAX")]
    truths = np.array([truth(p)["view"] == A4C_LABEL for p in loops])
    predicted = np.array([classifier.classify(sample_frames(p)).label == A4C_LABEL for p in loops])
    accuracy = float(np.mean(truths == predicted))
    assert truths.sum() >= 6 and (~truths).sum() >= 5
    assert accuracy >= 0.9, f"accuracy {accuracy:.2f} on {len(loops)} held-out loops"


def test_the_bundled_weights_are_small_and_the_name_is_checked() -> None:
    assert PHANTOM_WEIGHTS.stat().st_size < 1_000_000
    assert load_view_classifier("") is None
    with pytest.raises(ViewClassifierError):
        load_view_classifier("resnet-from-the-internet")
