"""The EF network's training details that decide what it learns beyond the weights: the
batch-norm statistics it is exported with and the tone / tint and zoom randomisation of its
clips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from inference.training.batch_norm import recompute_batch_norm_stats
from inference.training.common import item_generator
from inference.training.transforms import ZOOM_RANGE, tone_tint_jitter, zoom_jitter


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())


def test_batch_norm_statistics_become_the_average_over_every_batch() -> None:
    net = _net().eval()
    batches = [torch.randn(4, 3, 8, 8) * s + m for s, m in ((1.0, 0.0), (2.0, 3.0), (0.5, -1.0))]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert recompute_batch_norm_stats(net, iter(batches)) == 3
    bn = net[1]
    with torch.no_grad():
        per_batch = [net[0](x) for x in batches]
    expected_mean = torch.stack([y.mean(dim=(0, 2, 3)) for y in per_batch]).mean(0)
    expected_var = torch.stack([y.var(dim=(0, 2, 3), unbiased=True) for y in per_batch]).mean(0)
    assert torch.allclose(bn.running_mean, expected_mean, atol=1e-5)
    assert torch.allclose(bn.running_var, expected_var, atol=1e-4)
    # the learned weights, the momentum and the mode are as they were
    assert torch.equal(net[0].weight, before["0.weight"]) and torch.equal(
        bn.weight, before["1.weight"]
    )
    assert bn.momentum == 0.1 and not net.training


def test_no_batches_is_an_error_and_keeps_the_statistics() -> None:
    net = _net()
    net(torch.randn(4, 3, 8, 8) + 5.0)  # training mode: running stats move
    mean = net[1].running_mean.clone()
    with pytest.raises(ValueError, match="no batches"):
        recompute_batch_norm_stats(net, iter([]))
    assert torch.equal(net[1].running_mean, mean) and net[1].momentum == 0.1


def test_tone_tint_jitter_is_monotone_keeps_black_and_tints_colour_only() -> None:
    ramp = np.tile(np.arange(256, dtype=np.uint8), (3, 2, 1))  # (C, rows, 256 greys)
    curves = set()
    for i in range(20):
        out = tone_tint_jitter(ramp, item_generator(7, 0, i))
        assert out.shape == ramp.shape and out.dtype == np.uint8
        assert not out[:, :, 0].any()  # black stays black
        assert (np.diff(out.astype(int), axis=-1) >= 0).all()  # no grey order reversed
        curves.add(out[:, 0, 128].tobytes() + out[:, 0, 40].tobytes())
    assert len(curves) == 20  # every sample draws its own curve and tint
    # one grey channel: a curve, no tint; the same draw as the colour sample's curve
    grey = tone_tint_jitter(ramp[:1], item_generator(7, 0, 3))
    colour = tone_tint_jitter(ramp, item_generator(7, 0, 3))
    assert grey[0, 0, 255] == 255 and len({int(v) for v in colour[:, 0, 255]}) > 1
    assert np.array_equal(colour, tone_tint_jitter(ramp, item_generator(7, 0, 3)))  # seeded


def _square_clip(side_px: int = 112) -> np.ndarray:
    """(C=3, T=4, H, W): a bright 32-px square at the centre, brightest in the last frame."""
    clip = np.zeros((3, 4, side_px, side_px), np.uint8)
    for t in range(4):
        clip[:, t, 40:72, 40:72] = 150 + 30 * t
    return clip


def test_zoom_jitter_scales_about_the_centre_alike_on_every_frame() -> None:
    clip = _square_clip()
    low, high = ZOOM_RANGE
    factors = []
    for i in range(40):
        out = zoom_jitter(clip, item_generator(11, 0, i))
        assert out.shape == clip.shape and out.dtype == np.uint8
        # each frame's square at half its own grey (the frames differ in brightness)
        bright = out > (clip.max(axis=(2, 3), keepdims=True) // 2)
        # the square's size changes by one factor for every frame and channel of the sample
        areas = {int(bright[c, t].sum()) for c in range(3) for t in range(4)}
        assert len(areas) == 1
        factor = float(np.sqrt(areas.pop() / 32**2))
        assert low - 0.05 <= factor <= high + 0.05
        ys, xs = np.nonzero(bright[0, 0])
        assert abs(ys.mean() - 55.5) <= 1.0 and abs(xs.mean() - 55.5) <= 1.0  # stays centred
        assert out[0, 3][bright[0, 3]].mean() > out[0, 0][bright[0, 0]].mean()  # frames kept apart
        factors.append(factor)
    # both ways: smaller hearts (deeper, wider sectors) and larger ones (zoomed views)
    assert min(factors) < 0.8 and max(factors) > 1.1
    assert np.array_equal(
        zoom_jitter(clip, item_generator(11, 0, 5)), zoom_jitter(clip, item_generator(11, 0, 5))
    )


def test_zoom_out_fills_black_and_zoom_in_keeps_the_grid() -> None:
    clip = np.full((1, 2, 112, 112), 200, np.uint8)  # a frame filled edge to edge
    shrunk = grown = None
    for i in range(40):
        out = zoom_jitter(clip, item_generator(3, 0, i))
        filled = int((out[0, 0] > 0).sum())
        if filled < 112 * 112 * 0.8:
            shrunk = out
        elif filled == 112 * 112:
            grown = out
    assert shrunk is not None and grown is not None
    assert not shrunk[0, 0, 0].any() and not shrunk[0, 0, :, 0].any()  # uncovered edges black
    assert (grown == 200).all()  # a zoom-in crops: no black edge, no new grey


def test_segmentation_sample_and_mask_take_one_zoom() -> None:
    from inference.training.train_seg import TracedFrames

    images = np.zeros((6, 112, 112, 3), np.uint8)
    masks = np.zeros((6, 112, 112), bool)
    images[:, 30:80, 45:70] = 180  # the "cavity" drawn bright so it can be found again
    masks[:, 30:80, 45:70] = True
    plain = TracedFrames(images, masks, seed=2, max_shift_px=4)
    zoomed = TracedFrames(images, masks, seed=2, max_shift_px=4, zoom_augment=True)
    sizes = set()
    for i in range(6):
        image, mask = (t.numpy() for t in zoomed[i])
        lit = image[0] > 90
        inside = mask > 0.5
        assert (lit ^ inside).sum() <= 0.05 * inside.sum()  # the outline follows its image
        sizes.add(int(inside.sum()))
        assert int((plain[i][1].numpy() > 0.5).sum()) == 50 * 25  # without it: no zoom
    assert len(sizes) > 3  # each sample its own zoom
