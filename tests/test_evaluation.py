"""Agreement metrics and the Bland-Altman plot, checked against values worked out by hand."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from inference.evaluation import agreement, dice, roc_auc
from inference.plots import bland_altman_png


def test_dice_of_known_overlaps() -> None:
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:, :4] = True  # 40 pixels
    b[:, 2:6] = True  # 40 pixels, 20 shared
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a) == 1.0
    assert dice(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0


def test_agreement_matches_hand_computation() -> None:
    truth = [30.0, 50.0, 60.0, 70.0]
    measured = [32.0, 47.0, 61.0, 70.0]  # errors +2, -3, +1, 0
    stats = agreement(measured, truth)
    assert stats.n == 4
    assert stats.mae == pytest.approx(1.5)
    assert stats.rmse == pytest.approx(np.sqrt((4 + 9 + 1 + 0) / 4))
    assert stats.bias == pytest.approx(0.0)
    ss_tot = sum((t - 52.5) ** 2 for t in truth)
    assert stats.r2 == pytest.approx(1 - 14 / ss_tot)
    # EF < 40: only the first case; it has the lowest measured EF, so perfect ranking
    assert stats.auc["40"] == 1.0
    assert stats.auc["70"] == 1.0  # 70 itself is not < 70; the other three rank below it


def test_missing_values_are_dropped_and_all_missing_is_an_error() -> None:
    assert agreement([None, 50.0], [40.0, 52.0]).n == 1  # type: ignore[list-item]
    with pytest.raises(ValueError):
        agreement([None], [40.0])  # type: ignore[list-item]


def test_roc_auc_counts_ties_half_and_needs_both_classes() -> None:
    assert roc_auc(np.array([True, False]), np.array([1.0, 1.0])) == 0.5
    assert roc_auc(np.array([True, False, False]), np.array([0.0, 1.0, 2.0])) == 0.0
    assert roc_auc(np.array([True, True]), np.array([1.0, 2.0])) is None


def test_bland_altman_png_is_written(tmp_path) -> None:
    path = bland_altman_png(
        [("regression", [31, 49, 62], [30, 50, 60]), ("disks", [30, 51, None], [30, 50, 60])],
        tmp_path / "ba.png",
    )
    image = cv2.imread(str(path))
    assert image is not None and image.shape == (560, 900, 3)
    assert (image < 250).any(), "something was drawn"


def test_a_split_where_the_gate_published_no_ef_is_reported_not_an_error() -> None:
    from echo_agent.commands.evaluate import _published_agreement, format_summary

    truth = [40.0, 60.0, 70.0]
    assert _published_agreement([None, None, None], truth) is None
    disks = _published_agreement([41.0, None, 68.0], truth)
    assert disks is not None and disks["n"] == 2 and disks["mae"] == 1.5
    summary = {
        "models": "demo", "cases": 3, "ef_regression": None, "ef_disks": disks,
        "dice": {"ed": 0.8, "es": 0.7, "overall": 0.75},
    }
    text = format_summary(summary)
    assert "| MAE (points) | none published | 1.500 |" in text
    assert "withheld that EF on all 3 loops" in text
