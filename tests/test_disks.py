"""Method of disks against shapes whose volume is known in closed form."""

from __future__ import annotations

import numpy as np
import pytest

from inference.disks import disk_chords, disks_volume_ml, ejection_fraction_percent


def ellipse_contour(a_cm: float, b_cm: float, n: int = 2000) -> tuple[np.ndarray, ...]:
    """Ellipse with its long axis (semi-axis a) vertical, apex at the top (y = -a)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    pts = np.stack([b_cm * np.sin(t), -a_cm * np.cos(t)], axis=1)
    return pts, np.array([0.0, -a_cm]), np.array([0.0, a_cm])


def rigid(points: np.ndarray, angle_rad: float, shift: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return points @ np.array([[c, s], [-s, c]]) + shift


def test_prolate_spheroid_volume_within_one_percent():
    a, b = 4.5, 2.2
    contour, apex, base = ellipse_contour(a, b)
    expected = 4.0 / 3.0 * np.pi * a * b * b
    assert disks_volume_ml(contour, apex, base) == pytest.approx(expected, rel=0.01)


def test_more_disks_converge_to_the_spheroid():
    a, b = 4.0, 2.5
    contour, apex, base = ellipse_contour(a, b, n=8000)
    expected = 4.0 / 3.0 * np.pi * a * b * b
    err20 = abs(disks_volume_ml(contour, apex, base, 20) - expected)
    err200 = abs(disks_volume_ml(contour, apex, base, 200) - expected)
    assert err200 < err20
    assert err200 / expected < 1e-3


def test_rigid_motion_does_not_change_volume():
    contour, apex, base = ellipse_contour(4.0, 2.0)
    ref = disks_volume_ml(contour, apex, base)
    for angle in (0.3, -1.1, 2.5):
        shift = np.array([3.0, -7.5])
        moved = disks_volume_ml(
            rigid(contour, angle, shift),
            rigid(apex[None], angle, shift)[0],
            rigid(base[None], angle, shift)[0],
        )
        assert moved == pytest.approx(ref, rel=1e-9)


def test_cylinder_from_a_rectangle():
    # a 2 x 6 cm rectangle with the axis along its length: a cylinder of radius 1 and length 6
    length, radius = 6.0, 1.0
    contour = np.array([[-radius, 0.0], [radius, 0.0], [radius, length], [-radius, length]])
    vol = disks_volume_ml(contour, np.array([0.0, 0.0]), np.array([0.0, length]))
    assert vol == pytest.approx(np.pi * radius**2 * length, rel=1e-9)


def test_orientation_and_closing_point_do_not_matter():
    contour, apex, base = ellipse_contour(3.0, 1.5, n=500)
    ref = disks_volume_ml(contour, apex, base)
    assert disks_volume_ml(contour[::-1], apex, base) == pytest.approx(ref, rel=1e-12)
    closed = np.concatenate([contour, contour[:1]])
    assert disks_volume_ml(closed, apex, base) == pytest.approx(ref, rel=1e-12)


def test_volume_scales_with_length_and_square_of_width():
    contour, apex, base = ellipse_contour(4.0, 2.0)
    ref = disks_volume_ml(contour, apex, base)
    stretched = contour * np.array([1.5, 1.2])
    vol = disks_volume_ml(stretched, apex * [1.5, 1.2], base * [1.5, 1.2])
    assert vol == pytest.approx(ref * 1.5**2 * 1.2, rel=1e-9)


def test_units_are_millilitres_for_centimetre_input():
    # 1 cm radius, 1 cm long cylinder = pi mL; in mm the same shape would be 1000x larger
    contour = np.array([[-1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [-1.0, 1.0]])
    assert disks_volume_ml(contour, [0, 0], [0, 1]) == pytest.approx(np.pi)


def test_chords_lie_on_the_contour_and_sides_are_consistent():
    contour, apex, base = ellipse_contour(4.0, 2.0, n=4000)
    ch = disk_chords(contour, apex, base, 20)
    assert ch.side_a.shape == (20, 2) and ch.side_b.shape == (20, 2)
    # every endpoint satisfies the ellipse equation
    for pts in (ch.side_a, ch.side_b):
        r = (pts[:, 0] / 2.0) ** 2 + (pts[:, 1] / 4.0) ** 2
        np.testing.assert_allclose(r, 1.0, atol=1e-3)
    # axis points down (y-down image): side_a is the viewer's left (smaller x)
    assert np.all(ch.side_a[:, 0] < ch.side_b[:, 0])
    # chord levels are the slab middles, apex to base
    np.testing.assert_allclose(ch.side_a[:, 1], -4.0 + (np.arange(20) + 0.5) * 0.4, atol=1e-9)
    np.testing.assert_allclose(ch.diameters, np.hypot(*(ch.side_b - ch.side_a).T))


def test_nonconvex_contour_uses_extreme_crossings():
    # a U-shaped (notched) rectangle: width is the outer extent, notch ignored
    contour = np.array(
        [[-2, 0], [2, 0], [2, 4], [0.5, 4], [0.5, 2], [-0.5, 2], [-0.5, 4], [-2, 4]], float
    )
    ch = disk_chords(contour, [0, 0], [0, 4], 4)
    np.testing.assert_allclose(ch.diameters, 4.0)


@pytest.mark.parametrize(
    ("contour", "apex", "base"),
    [
        (np.zeros((2, 2)), [0, 0], [0, 1]),
        (np.zeros((5, 3)), [0, 0], [0, 1]),
        (np.ones((5, 2)), [0, 0], [0, 0]),
        (np.array([[0, 0], [1, 0], [np.nan, 1]]), [0, 0], [0, 1]),
    ],
)
def test_bad_input_raises(contour, apex, base):
    with pytest.raises(ValueError):
        disks_volume_ml(contour, np.asarray(apex, float), np.asarray(base, float))


def test_bad_disk_count_raises():
    contour, apex, base = ellipse_contour(3.0, 1.0)
    with pytest.raises(ValueError):
        disks_volume_ml(contour, apex, base, 0)


def test_ejection_fraction():
    assert ejection_fraction_percent(120.0, 48.0) == pytest.approx(60.0)
    with pytest.raises(ValueError):
        ejection_fraction_percent(0.0, 0.0)
