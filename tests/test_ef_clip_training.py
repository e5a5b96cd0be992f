"""The EF network's training details that decide what it learns beyond the weights: the
batch-norm statistics it is exported with and the tone / tint randomisation of its clips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from inference.training.batch_norm import recompute_batch_norm_stats
from inference.training.common import item_generator
from inference.training.transforms import tone_tint_jitter


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
