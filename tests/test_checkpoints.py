"""Checkpoint loading: EchoNet-Dynamic ``.pt`` files and the fp16 safetensors demo weights.

The compatibility tests write checkpoints whose names and shapes come from the torchvision
reference layout, not from our own modules, so a pass means a torchvision-made file loads.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from inference.checkpoints import (
    CheckpointError,
    CheckpointInfo,
    load_echonet_checkpoint,
    load_safetensors,
    read_safetensors_config,
    save_safetensors_fp16,
)
from inference.networks import build_deeplabv3_resnet50, build_r2plus1d_18

BUILDERS = {
    "deeplabv3_resnet50_1class": build_deeplabv3_resnet50,
    "r2plus1d_18_1out": build_r2plus1d_18,
}

@pytest.fixture(scope="module")
def reference(torchvision_reference: dict[str, Any]) -> dict[str, Any]:
    return torchvision_reference["models"]


def echonet_payload(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """What EchoNet-Dynamic's training scripts save: DataParallel keys plus training state."""
    return {
        "epoch": 44,
        "state_dict": OrderedDict((f"module.{k}", v) for k, v in state.items()),
        "opt_dict": {
            "state": {0: {"momentum_buffer": torch.zeros(3)}},
            "param_groups": [{"lr": 1e-5, "momentum": 0.9, "weight_decay": 1e-4, "params": [0]}],
        },
        "scheduler_dict": {"step_size": 15, "gamma": 0.1, "base_lrs": [1e-4], "last_epoch": 45},
        "best_loss": 0.0713,
        "loss": 0.0802,
    }


def state_from_reference(layout: list[list[Any]]) -> dict[str, torch.Tensor]:
    """Distinct float32 values for every entry named in the reference layout."""
    generator = torch.Generator().manual_seed(1234)
    state: dict[str, torch.Tensor] = OrderedDict()
    for index, (name, shape) in enumerate(layout):
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(1000 + index, dtype=torch.long)
        else:
            state[name] = torch.randn(shape, generator=generator)
    return state


@pytest.mark.parametrize("key", list(BUILDERS))
def test_torchvision_made_echonet_checkpoint_loads(
    key: str, reference: dict[str, Any], tmp_path: Path
) -> None:
    state = state_from_reference(reference[key]["state_dict"])
    path = tmp_path / "best.pt"
    torch.save(echonet_payload(state), path)
    del state

    model = BUILDERS[key](width=1.0)
    info = load_echonet_checkpoint(path, model)

    assert info == CheckpointInfo(str(path), 44, 0.0713, len(reference[key]["state_dict"]))
    expected = state_from_reference(reference[key]["state_dict"])
    loaded = model.state_dict()
    for name, value in expected.items():
        assert torch.equal(loaded[name], value), name


def small_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def small_model() -> nn.Module:
    return build_r2plus1d_18(width=0.25)


@pytest.mark.parametrize(
    ("mutate", "label", "named"),
    [
        (lambda s: s.pop("layer3.1.conv2.0.3.weight"), "missing", "layer3.1.conv2.0.3.weight"),
        (lambda s: s.update({"fc.weight": torch.zeros(2, 128)}), "shape", "fc.weight"),
        (lambda s: s.update({"aux.weight": torch.zeros(1)}), "unexpected", "aux.weight"),
    ],
)
def test_mismatched_checkpoint_names_the_key(
    mutate: Any, label: str, named: str, small_model: nn.Module, tmp_path: Path
) -> None:
    state = small_state(small_model)
    mutate(state)
    path = tmp_path / "bad.pt"
    torch.save(echonet_payload(state), path)
    before = small_state(small_model)

    with pytest.raises(CheckpointError, match=label) as caught:
        load_echonet_checkpoint(path, small_model)

    assert named in str(caught.value)
    after = small_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "nothing may be half-loaded"


def test_bare_state_dict_and_missing_batch_counters_load(
    small_model: nn.Module, tmp_path: Path
) -> None:
    source = build_r2plus1d_18(width=0.25)
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "bare.pt"
    torch.save(state, path)

    info = load_echonet_checkpoint(path, small_model)

    assert info.epoch is None and info.best_loss is None
    assert torch.equal(small_model.state_dict()["fc.weight"], source.state_dict()["fc.weight"])


class _NotAWeight:
    """A pickled class: exactly what weights-only loading must refuse to construct."""


def test_checkpoint_with_arbitrary_objects_is_refused(
    small_model: nn.Module, tmp_path: Path
) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": small_model.state_dict(), "payload": _NotAWeight()}, path)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_echonet_checkpoint(path, small_model)


def test_garbage_file_is_a_checkpoint_error(small_model: nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError):
        load_echonet_checkpoint(path, small_model)


CONFIG = {
    "architecture": "deeplabv3_resnet50",
    "width": 0.25,
    "num_classes": 1,
    "mean": [32.1, 32.4, 32.9],
    "std": [49.8, 49.9, 50.2],
}


def test_fp16_safetensors_round_trip(tmp_path: Path) -> None:
    source = build_deeplabv3_resnet50(width=0.25)
    with torch.no_grad():
        source.backbone.bn1.running_mean.uniform_(-1, 1)
        source.backbone.bn1.num_batches_tracked.fill_(321)
    path = tmp_path / "seg.safetensors"
    save_safetensors_fp16(source, path, CONFIG)

    with safe_open(str(path), framework="pt") as handle:
        assert handle.get_tensor("backbone.conv1.weight").dtype == torch.float16
        assert handle.get_tensor("backbone.bn1.num_batches_tracked").dtype == torch.long
    assert read_safetensors_config(path) == CONFIG

    target = build_deeplabv3_resnet50(width=0.25)
    assert load_safetensors(path, target) == CONFIG
    loaded = target.state_dict()
    for name, value in source.state_dict().items():
        want = value.half().float() if value.is_floating_point() else value
        assert loaded[name].dtype == value.dtype, name
        assert torch.equal(loaded[name], want), name


def test_safetensors_into_wrong_width_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ef.safetensors"
    save_safetensors_fp16(build_r2plus1d_18(width=0.25), path, {**CONFIG, "width": 0.25})
    with pytest.raises(CheckpointError, match="shape"):
        load_safetensors(path, build_r2plus1d_18(width=0.5))


def test_safetensors_without_config_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match="metadata"):
        read_safetensors_config(path)


def test_fp16_overflow_is_refused(tmp_path: Path) -> None:
    model = build_r2plus1d_18(width=0.25)
    with torch.no_grad():
        model.stem[1].running_var.fill_(1e6)
    with pytest.raises(CheckpointError, match=r"stem\.1\.running_var"):
        save_safetensors_fp16(model, tmp_path / "x.safetensors", CONFIG)
