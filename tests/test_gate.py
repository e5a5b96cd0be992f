"""The validity gate: a value the evidence does not support is withheld with its reason, and
loops with nothing to measure (blank, noise) publish no number through the real demo models."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from inference.analyze import Networks, analyse
from inference.gate import (
    FLAG_EF_DISAGREEMENT,
    FLAG_HEART_RATE_DISAGREES,
    FLAG_LV_NOT_IDENTIFIED,
    FLAG_OUT_OF_DISTRIBUTION,
    GateSettings,
    GateThresholds,
    apply_gate,
    gather_evidence,
    quality_score,
    validity_of,
)
from inference.measure import measure_loop
from inference.ood import (
    FEATURE_NAMES,
    FEATURE_WORDS,
    build_reference,
    loop_features,
    ood_score,
)
from inference.presets import load_preset
from inference.types import GATED_KEYS, Cine, GateEvidence, Measurements, Validity

THRESHOLDS = GateThresholds()


def _ellipse_masks(n: int = 100, frame_time_ms: float = 33.3) -> np.ndarray:
    """An LV-like ellipse whose area beats at 60 /min: two and more full cycles."""
    yy, xx = np.mgrid[0:120, 0:100]
    t = np.arange(n) * frame_time_ms / 1000.0
    scale = 0.8 + 0.2 * np.cos(2 * np.pi * t)  # ED at t = 0, 1, 2 s
    return np.stack([((xx - 50) / (18 * s)) ** 2 + ((yy - 60) / (40 * s)) ** 2 <= 1 for s in scale])


@pytest.fixture(scope="module")
def measured() -> Measurements:
    m = measure_loop(
        _ellipse_masks(),
        frame_time_ms=33.3,
        spacing_cm=(0.05, 0.05),
        clip_ef=lambda starts: np.full(len(starts), 55.0),
    )
    assert m.ef_percent == pytest.approx(55.0) and m.edv_ml is not None
    return m


def _evidence(**changes: object) -> GateEvidence:
    good = GateEvidence(
        n_frames=30,
        lv_frames=30,
        segmentation_confidence=0.95,
        area_consistency=1.0,
        ef_disagreement_points=2.0,
        heart_rate_disagreement_fraction=0.02,
        ood_score=1.0,
    )
    return dataclasses.replace(good, **changes)  # type: ignore[arg-type]


def test_good_evidence_publishes_every_value_with_a_high_quality_score(measured) -> None:
    gated = apply_gate(measured, _evidence(), THRESHOLDS)
    for key in GATED_KEYS:
        assert getattr(gated, key) == getattr(measured, key)
        assert gated.validity[key].state is Validity.MEASURED
    assert gated.flags == measured.flags
    assert 0.5 < gated.quality_score <= 1.0


def test_lv_not_identified_withholds_every_lv_value_with_the_reason(measured) -> None:
    gated = apply_gate(measured, _evidence(lv_frames=0), THRESHOLDS)
    for key in ("ef_percent", "ef_disks_percent", "edv_ml", "esv_ml"):
        assert getattr(gated, key) is None
        assert gated.validity[key].state is Validity.NOT_MEASURABLE
        assert gated.validity[key].reason == "LV not identified on 30 of 30 frames"
    # the heart rate came from the LV area curve's cycles: no LV, no cycles
    assert gated.heart_rate_bpm is None
    assert FLAG_LV_NOT_IDENTIFIED in gated.flag_codes
    message = next(f.message for f in gated.flags if f.code == FLAG_LV_NOT_IDENTIFIED)
    assert message == "LV not identified on 30 of 30 frames; manual measurement required."
    # no per-beat number survives either, nor the SD or clip EFs the mean came from
    assert all(b.ef_percent is None and b.edv_ml is None for b in gated.beats)
    assert gated.ef_sd_percent is None and gated.ef_clips_percent == ()
    assert gated.quality_score < 0.5
    # what is stored and printed keeps the ruling
    back = Measurements.from_json(json.loads(json.dumps(gated.to_json())))
    assert back.validity == gated.validity and back.gate == gated.gate
    assert back.ef_percent is None


def test_ef_disagreement_withholds_both_efs_but_keeps_the_volumes(measured) -> None:
    gated = apply_gate(measured, _evidence(ef_disagreement_points=22.0), THRESHOLDS)
    assert gated.ef_percent is None and gated.ef_disks_percent is None
    assert gated.edv_ml == measured.edv_ml and gated.esv_ml == measured.esv_ml
    assert FLAG_EF_DISAGREEMENT in gated.flag_codes
    # the reason names the limit, never the withheld numbers; nor does any flag
    assert "55" not in gated.validity["ef_percent"].reason
    assert not any("55" in f.message for f in gated.flags)
    assert gated.quality_score < 0.5


def test_heart_rate_disagreement_withholds_the_beat_timed_values(measured) -> None:
    gated = apply_gate(measured, _evidence(heart_rate_disagreement_fraction=0.3), THRESHOLDS)
    assert FLAG_HEART_RATE_DISAGREES in gated.flag_codes
    assert gated.heart_rate_bpm is None and gated.edv_ml is None
    assert gated.ef_percent == measured.ef_percent


def test_out_of_distribution_withholds_and_no_reference_skips_the_check(measured) -> None:
    gated = apply_gate(measured, _evidence(ood_score=25.0), THRESHOLDS)
    assert gated.ef_percent is None and FLAG_OUT_OF_DISTRIBUTION in gated.flag_codes
    assert "trained on" in gated.validity["ef_percent"].reason
    unchecked = apply_gate(measured, _evidence(ood_score=None), THRESHOLDS)
    assert unchecked.ef_percent == measured.ef_percent


def test_quality_score_sits_at_one_half_on_a_threshold() -> None:
    on_edge = _evidence(lv_frames=27)  # coverage 0.9 == min_lv_coverage
    assert quality_score(on_edge, THRESHOLDS) == pytest.approx(0.5)
    assert quality_score(_evidence(lv_frames=26), THRESHOLDS) < 0.5


def test_values_the_measurement_step_could_not_make_say_why(measured) -> None:
    bare = dataclasses.replace(measured, edv_ml=None, esv_ml=None)
    bare = dataclasses.replace(bare, flags=(*bare.flags,))
    gated = apply_gate(bare, _evidence(), THRESHOLDS)
    assert gated.validity["edv_ml"].state is Validity.NOT_MEASURABLE
    assert gated.validity["edv_ml"].reason
    # measurements stored before the gate existed still answer
    old = dataclasses.replace(measured, validity={})
    assert validity_of(old, "ef_percent").measured
    assert not validity_of(bare, "edv_ml").measured


def test_thresholds_refuse_nonsense() -> None:
    with pytest.raises(ValueError, match="min_lv_coverage"):
        GateThresholds(min_lv_coverage=1.5)
    with pytest.raises(ValueError, match="max_ood_score"):
        GateThresholds(max_ood_score=0.0)


def test_evidence_from_probabilities_counts_frames_with_one_plausible_lv(measured) -> None:
    fan = np.zeros((112, 112), bool)
    fan[10:110, 6:106] = True
    p = np.zeros((30, 112, 112), np.float32)
    p[:20, 40:70, 45:65] = 1.0  # one LV on 20 frames
    p[20:25, 20:30, 20:30] = 1.0  # two blobs on 5 frames
    p[20:25, 80:90, 80:90] = 1.0
    p[25:, 10:110, 6:106] = 1.0  # the whole fan "is LV" on 5 frames: not plausible
    network_input = np.zeros((30, 3, 112, 112), np.float32)
    m = dataclasses.replace(measured, lv_area_px=tuple(float(a) for a in p.sum(axis=(1, 2))))
    evidence = gather_evidence(m, p, fan, network_input, None, None)
    assert evidence.n_frames == 30 and evidence.lv_frames == 20
    assert evidence.segmentation_confidence == pytest.approx(1.0)
    assert evidence.ood_score is None and evidence.heart_rate_disagreement_fraction is None


def test_ood_reference_scores_training_like_loops_low_and_others_high() -> None:
    rng = np.random.default_rng(0)
    fan = np.zeros((112, 112), bool)
    fan[8:104, 8:104] = True

    def loop(gain: float) -> np.ndarray:
        frames = rng.gamma(2.0, gain, size=(8, 1, 112, 112)).astype(np.float32)
        return np.repeat(frames, 3, axis=1)

    prob = np.zeros((8, 112, 112), np.float32)
    prob[:, 40:70, 40:60] = 1.0
    training = np.stack([loop(0.5 + 0.02 * i) for i in range(12)])
    features = np.stack([loop_features(x, fan, prob) for x in training])
    assert features.shape == (12, len(FEATURE_NAMES))
    reference = build_reference(features, "test")
    near = ood_score(loop_features(loop(0.55), fan, prob), reference)
    far = ood_score(loop_features(loop(3.0), fan, np.zeros_like(prob)), reference)
    assert near < 3.0 < far


def test_the_out_of_distribution_flag_names_what_differs_most(measured) -> None:
    """A lab whose loops are all withheld as out of distribution is told which property of its
    images is furthest from the training loops: here a tint on loops trained on grey."""
    rng = np.random.default_rng(1)
    fan = np.zeros((112, 112), bool)
    fan[8:104, 8:104] = True
    prob = np.zeros((8, 112, 112), np.float32)
    prob[:, 40:70, 40:60] = 1.0

    def grey_loop() -> np.ndarray:
        return np.repeat(rng.gamma(2.0, 0.5, size=(8, 1, 112, 112)).astype(np.float32), 3, axis=1)

    reference = build_reference(
        np.stack([loop_features(grey_loop(), fan, prob) for _ in range(12)]), "test"
    )
    tinted = grey_loop() * np.array([1.0, 0.7, 1.2], np.float32)[None, :, None, None]
    m = dataclasses.replace(measured, lv_area_px=tuple(float(a) for a in prob.sum(axis=(1, 2))))
    evidence = gather_evidence(m, prob, fan, tinted, None, reference)
    assert evidence.ood_score is not None and evidence.ood_score > THRESHOLDS.max_ood_score
    assert evidence.ood_furthest_feature == "chroma"
    gated = apply_gate(measured, evidence, THRESHOLDS)
    assert gated.ef_percent is None
    (message,) = [f.message for f in gated.flags if f.code == FLAG_OUT_OF_DISTRIBUTION]
    assert f"most of all in {FEATURE_WORDS['chroma']}" in message
    assert FEATURE_WORDS["chroma"] in gated.validity["ef_percent"].reason
    # a grey loop is near the reference; evidence stored before the feature was named reads
    # back without it, and its flag simply leaves the clause out
    near = gather_evidence(m, prob, fan, grey_loop(), None, reference)
    assert near.ood_score is not None and near.ood_score < THRESHOLDS.max_ood_score
    old = {k: v for k, v in evidence.to_json().items() if k != "ood_furthest_feature"}
    restored = GateEvidence.from_json(old)
    assert restored.ood_furthest_feature is None
    (message,) = [
        f.message
        for f in apply_gate(measured, restored, THRESHOLDS).flags
        if f.code == FLAG_OUT_OF_DISTRIBUTION
    ]
    assert "most of all" not in message and "trained on" in message
    assert GateEvidence.from_json(evidence.to_json()).ood_furthest_feature == "chroma"


@pytest.fixture(scope="module")
def demo():
    return load_preset("demo")


def _loop(frames: np.ndarray) -> Cine:
    return Cine(
        frames=frames,
        frame_time_ms=33.3,
        frame_time_source="FrameTime",
        spacing_cm=(0.05, 0.05),
        tissue_region=None,
        heart_rate_bpm=None,
        sop_instance_uid="1.2.3",
    )


def _sector_loop(values: np.ndarray) -> np.ndarray:
    """A fan-shaped region of ``values`` (frames, rows, cols) on black, as RGB frames."""
    _n, rows, cols = values.shape
    yy, xx = np.mgrid[0:rows, 0:cols]
    angle = np.arctan2(xx - cols / 2, yy + 1)
    fan = (np.abs(angle) < 0.6) & (np.hypot(xx - cols / 2, yy) < rows - 4)
    frames = np.where(fan, values, 0).astype(np.uint8)
    return np.repeat(frames[..., None], 3, axis=-1)


@pytest.mark.parametrize("kind", ["noise", "blank_fan"])
def test_loops_with_nothing_to_measure_publish_no_number(demo, kind) -> None:
    """The issue's case: uniform noise frames got an EF of 36 %."""
    from inference.model_cache import TorchEFModel, TorchSegmenter
    from inference.preprocess import PreprocessParams

    rng = np.random.default_rng(7)
    if kind == "noise":
        values = rng.integers(0, 256, size=(40, 160, 200))
    else:  # a fan of flat grey with faint speckle: nothing that looks like a chamber
        values = 60 + rng.integers(0, 8, size=(40, 160, 200))
    cine = _loop(_sector_loop(values))
    params = PreprocessParams(mean=demo.mean, std=demo.std)
    networks = Networks(
        TorchSegmenter(demo.segmenter), TorchEFModel(demo.ef_model), params, GateSettings()
    )
    analysis = analyse(cine, networks).analysis
    m = analysis.measurements
    for key in ("ef_percent", "ef_disks_percent", "edv_ml", "esv_ml"):
        assert getattr(m, key) is None, (kind, key, analysis.ungated)
        assert m.validity[key].state is Validity.NOT_MEASURABLE and m.validity[key].reason
    assert m.quality_score is not None and m.quality_score < 0.5


@pytest.fixture(scope="module")
def negative_loops(tmp_path_factory) -> list:
    from inference.phantom.negatives import generate_negatives

    out = tmp_path_factory.mktemp("negatives")
    generate_negatives(out, n=5, seed=4242, matrix=(160, 214), max_frames=64)
    return sorted(out.glob("*.dcm"))


def test_the_negative_set_publishes_nothing_through_the_node_analysis(negative_loops) -> None:
    """Every class of ``echo-agent phantom --negative`` (blank, noise, non-cardiac, wrong view,
    LV cut off by the sector) through the node's own analysis with the shipped demo models,
    thresholds and OOD reference: no EF and no volume, each with a reason."""
    from inference.analyze import analyse
    from inference.model_cache import load_models
    from inference.preprocess import PreprocessError
    from pacs_agent.analysis import model_settings
    from pacs_agent.config import Config

    models = load_models(model_settings(Config()))
    assert models.gate.ood_reference is not None  # the shipped reference is in use
    classes = set()
    for path in negative_loops:
        classes.add(json.loads(path.with_suffix(".json").read_text())["negative_class"])
        try:
            m = analyse(path, models).analysis.measurements
        except PreprocessError:  # no fan at all: nothing measured, nothing to publish
            continue
        for key in ("ef_percent", "ef_disks_percent", "edv_ml", "esv_ml"):
            assert getattr(m, key) is None, (path.name, key)
            assert m.validity[key].reason, (path.name, key)
        assert all(b.ef_percent is None and b.edv_ml is None for b in m.beats), path.name
    assert classes == {"blank", "noise", "non_cardiac", "wrong_view", "lv_cut_off"}
