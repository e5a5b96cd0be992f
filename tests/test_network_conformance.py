"""The project's networks against torchvision's recorded layout and outputs.

torchvision cannot be installed here, so ``shared/reference/torchvision_layout.json`` (recorded
from torchvision itself) is the stand-in: matching its state_dict layout proves published
checkpoints load, and matching its conformance outputs proves the arithmetic (strides, dilations,
padding, the (2+1)D mid-channel rule) is the same. See ``shared/reference/README.md``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from inference.networks import build_deeplabv3_resnet50, build_r2plus1d_18, scale_channels
from inference.networks.r2plus1d import midplanes, stem_midplanes

SEG_KEY = "deeplabv3_resnet50_1class"
EF_KEY = "r2plus1d_18_1out"
REL_TOL = 1e-6

BUILDERS: dict[str, Callable[..., nn.Module]] = {
    SEG_KEY: build_deeplabv3_resnet50,
    EF_KEY: build_r2plus1d_18,
}

@pytest.fixture(scope="module")
def reference(torchvision_reference: dict[str, Any]) -> dict[str, Any]:
    return torchvision_reference["models"]


def fill_deterministically(model: nn.Module) -> None:
    """The reference README's sin formula, applied in state_dict order."""
    with torch.no_grad():
        for index, (name, tensor) in enumerate(model.state_dict().items()):
            if name.endswith("num_batches_tracked"):
                continue
            n = tensor.numel()
            base = torch.sin(0.37 * torch.arange(n, dtype=torch.float64) + 0.11 * index)
            if name.endswith("running_var"):
                value = 1 + 0.25 * base.abs()
            elif name.endswith("running_mean"):
                value = 0.05 * base
            elif tensor.dim() == 1 and name.endswith("weight"):
                value = 1 + 0.1 * base
            elif name.endswith("bias"):
                value = 0.02 * base
            else:
                value = base * math.sqrt(3 / (n // tensor.shape[0]))
            tensor.copy_(value.reshape(tensor.shape))


@pytest.fixture(scope="module")
def full_models() -> dict[str, nn.Module]:
    """Width-1.0 models in float64 with the conformance weights, built once for the module."""
    models = {}
    for key, build in BUILDERS.items():
        model = build(width=1.0).double().eval()
        fill_deterministically(model)
        models[key] = model
    return models


def relative_error(got: float, want: float) -> float:
    return abs(got - want) / max(abs(want), 1e-300)


@pytest.mark.parametrize("key", [SEG_KEY, EF_KEY])
def test_state_dict_layout_matches_torchvision(
    key: str, reference: dict[str, Any], full_models: dict[str, nn.Module]
) -> None:
    got = [[name, list(t.shape)] for name, t in full_models[key].state_dict().items()]
    want = reference[key]["state_dict"]
    assert [n for n, _ in got] == [n for n, _ in want], "names or order differ"
    assert got == want


def test_segmentation_conformance_vector(
    reference: dict[str, Any], full_models: dict[str, nn.Module]
) -> None:
    spec = reference[SEG_KEY]["conformance"]
    x = torch.sin(0.013 * torch.arange(3 * 112 * 112, dtype=torch.float64)).reshape(1, 3, 112, 112)
    with torch.no_grad():
        out = full_models[SEG_KEY](x)
    assert list(out.shape) == spec["output_shape"]
    for position, want in spec["samples"].items():
        row, col = (int(v) for v in position.split(","))
        assert relative_error(out[0, 0, row, col].item(), want) < REL_TOL, position
    assert relative_error(out.mean().item(), spec["mean"]) < REL_TOL
    assert relative_error(out.std().item(), spec["std"]) < REL_TOL


@pytest.mark.slow
def test_ef_conformance_vector(
    reference: dict[str, Any], full_models: dict[str, nn.Module]
) -> None:
    spec = reference[EF_KEY]["conformance"]
    n = 3 * 32 * 112 * 112
    x = torch.sin(0.007 * torch.arange(n, dtype=torch.float64)).reshape(1, 3, 32, 112, 112)
    with torch.no_grad():
        out = full_models[EF_KEY](x)
    assert list(out.shape) == spec["output_shape"]
    assert relative_error(out.item(), spec["value"]) < REL_TOL


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_small_width_segmentation_runs_and_is_small() -> None:
    small = build_deeplabv3_resnet50(width=0.25).eval()
    with torch.no_grad():
        out = small(torch.rand(2, 3, 112, 112))
    assert out.shape == (2, 1, 112, 112)
    assert torch.isfinite(out).all()
    assert parameter_count(small) * 8 < parameter_count(build_deeplabv3_resnet50(width=1.0))


def test_small_width_ef_runs_and_is_small() -> None:
    small = build_r2plus1d_18(width=0.25).eval()
    with torch.no_grad():
        out = small(torch.rand(2, 3, 8, 64, 64))
    assert out.shape == (2, 1)
    assert torch.isfinite(out).all()
    assert parameter_count(small) * 8 < parameter_count(build_r2plus1d_18(width=1.0))


def test_small_width_trains_one_step() -> None:
    """BatchNorm in train mode (including ASPP's 1x1 pooled branch) must accept a batch of 2."""
    model = build_deeplabv3_resnet50(width=0.25).train()
    loss = model(torch.rand(2, 3, 64, 64)).mean()
    loss.backward()
    assert model.backbone.conv1.weight.grad is not None


def test_channel_rounding_rule() -> None:
    assert [scale_channels(c, 1.0) for c in (64, 128, 256, 512, 2048)] == [64, 128, 256, 512, 2048]
    assert [scale_channels(c, 0.25) for c in (64, 128, 256, 512)] == [16, 32, 64, 128]
    assert scale_channels(64, 0.01) == 8  # floor of 8
    assert scale_channels(64, 0.3) == 16  # 19.2 -> 2.4 eighths -> 2 -> 16
    assert stem_midplanes(64) == 45
    assert stem_midplanes(16) == 11
    assert midplanes(64, 128) == 230
    with pytest.raises(ValueError, match="width"):
        build_r2plus1d_18(width=0.0)


def test_small_width_layout_follows_the_rule() -> None:
    state = build_r2plus1d_18(width=0.25).state_dict()
    assert state["stem.0.weight"].shape == (11, 3, 1, 7, 7)
    assert state["layer2.0.conv1.0.0.weight"].shape == (midplanes(16, 32), 16, 1, 3, 3)
    assert state["fc.weight"].shape == (1, 128)
    seg = build_deeplabv3_resnet50(width=0.25).state_dict()
    assert seg["classifier.0.convs.0.0.weight"].shape == (64, 512, 1, 1)
    assert seg["classifier.4.weight"].shape == (1, 64, 1, 1)
