"""Model presets: the shipped demo weights and EchoNet-Dynamic checkpoints at width 1.0."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from inference.checkpoints import CheckpointError, save_safetensors_fp16
from inference.networks import build_deeplabv3_resnet50, build_r2plus1d_18
from inference.phantom import generate_phantoms
from inference.presets import DEMO_DIR, compute_mean_std, load_preset
from inference.training.echonet_data import load_video, read_filelist
from inference.training.quick_eval import quick_evaluate

HELD_OUT_SEED = 777_001  # never used for the demo training data (see weights/demo/README.md)


def test_demo_preset_loads_strictly_and_says_it_is_demo() -> None:
    models = load_preset("demo")
    assert models.demo and models.preset == "demo"
    assert "demo" in models.description and "not for clinical use" in models.description
    assert models.ef_model is not None
    assert len(models.mean) == 3 and min(models.std) > 0
    assert not models.segmenter.training and not models.ef_model.training
    total_bytes = sum(p.stat().st_size for p in DEMO_DIR.glob("*.safetensors"))
    assert total_bytes <= 30 * 1024 * 1024
    assert models.seg_config["width"] < 1.0 and models.ef_config is not None
    with torch.inference_mode():
        logits = models.segmenter(torch.zeros(1, 3, 112, 112))
        ef = models.ef_model(torch.zeros(1, 3, 32, 112, 112))
    assert logits.shape == (1, 1, 112, 112) and ef.shape == (1, 1)


@pytest.mark.slow
def test_demo_preset_segments_and_estimates_ef_on_held_out_phantoms(tmp_path: Path) -> None:
    generate_phantoms(tmp_path, n=2, seed=HELD_OUT_SEED, fmt="echonet")
    torch.set_num_threads(2)
    scores = quick_evaluate(load_preset("demo"), tmp_path, start_stride=4)
    assert scores.videos == 2
    assert scores.dice_mean > 0.85, scores.per_video
    assert scores.ef is not None
    for row in scores.per_video:
        assert abs(float(row["ef_pred"]) - float(row["ef_true"])) < 10, row  # type: ignore[arg-type]


def test_demo_preset_refuses_paths_and_normalisation() -> None:
    with pytest.raises(ValueError, match="shipped weights"):
        load_preset("demo", seg_weights="x.pt")
    with pytest.raises(ValueError, match="stored with its weights"):
        load_preset("demo", mean=(0, 0, 0), std=(1, 1, 1))
    with pytest.raises(ValueError, match="unknown model preset"):
        load_preset("tiny")


def test_demo_preset_rejects_pairs_with_different_normalisation(tmp_path: Path) -> None:
    base = {"width": 0.0625, "std": [40.0, 40.0, 40.0]}
    save_safetensors_fp16(
        build_deeplabv3_resnet50(0.0625),
        tmp_path / "segmentation.safetensors",
        {**base, "architecture": "deeplabv3_resnet50", "mean": [30.0, 30.0, 30.0]},
    )
    save_safetensors_fp16(
        build_r2plus1d_18(0.0625),
        tmp_path / "ef.safetensors",
        {**base, "architecture": "r2plus1d_18", "mean": [20.0, 20.0, 20.0]},
    )
    with pytest.raises(ValueError, match="disagree on normalisation"):
        load_preset("demo", demo_dir=tmp_path)


def _reference_state(layout: list[list[Any]], seed: int) -> OrderedDict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for name, shape in layout:
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(7, dtype=torch.long)
        else:
            state[name] = torch.randn(shape, generator=generator)
    return state


def _echonet_file(path: Path, state: OrderedDict[str, torch.Tensor]) -> Path:
    """EchoNet-Dynamic's training scripts save DataParallel keys plus the training state."""
    torch.save(
        {
            "epoch": 45,
            "state_dict": OrderedDict((f"module.{k}", v) for k, v in state.items()),
            "best_loss": 0.07,
        },
        path,
    )
    return path


def test_echonet_preset_loads_torchvision_made_checkpoints(
    torchvision_reference: dict[str, Any], tmp_path: Path
) -> None:
    ref = torchvision_reference["models"]
    seg_state = _reference_state(ref["deeplabv3_resnet50_1class"]["state_dict"], 1)
    ef_state = _reference_state(ref["r2plus1d_18_1out"]["state_dict"], 2)
    seg_path = _echonet_file(tmp_path / "deeplabv3_resnet50_random.pt", seg_state)
    ef_path = _echonet_file(tmp_path / "r2plus1d_18_32_2_pretrained.pt", ef_state)

    models = load_preset(
        "echonet",
        seg_weights=seg_path,
        ef_weights=ef_path,
        mean=(32.5, 32.7, 33.0),
        std=(50.0, 50.2, 50.5),
    )
    assert not models.demo and models.preset == "echonet"
    assert models.mean == (32.5, 32.7, 33.0) and models.std == (50.0, 50.2, 50.5)
    assert models.ef_model is not None
    seg_loaded = models.segmenter.state_dict()
    assert all(torch.equal(seg_loaded[k], v) for k, v in seg_state.items())
    ef_loaded = models.ef_model.state_dict()
    assert all(torch.equal(ef_loaded[k], v) for k, v in ef_state.items())


def test_echonet_preset_needs_normalisation_and_fitting_weights(
    torchvision_reference: dict[str, Any], tmp_path: Path
) -> None:
    ref = torchvision_reference["models"]
    seg_path = _echonet_file(
        tmp_path / "seg.pt", _reference_state(ref["deeplabv3_resnet50_1class"]["state_dict"], 3)
    )
    with pytest.raises(ValueError, match="calibrate"):
        load_preset("echonet", seg_weights=seg_path)
    with pytest.raises(ValueError, match="segmentation weights"):
        load_preset("echonet", mean=(1, 1, 1), std=(1, 1, 1))
    with pytest.raises(ValueError, match="not found"):
        load_preset("echonet", seg_weights=tmp_path / "nope.pt", mean=(1, 1, 1), std=(1, 1, 1))
    # an EF file given as the segmentation weights names the misfit instead of half-loading
    ef_path = _echonet_file(
        tmp_path / "ef.pt", _reference_state(ref["r2plus1d_18_1out"]["state_dict"], 4)
    )
    with pytest.raises(CheckpointError, match="does not fit"):
        load_preset("echonet", seg_weights=ef_path, mean=(1, 1, 1), std=(1, 1, 1))
    models = load_preset("echonet", seg_weights=seg_path, mean=(1, 2, 3), std=(4, 5, 6))
    assert models.ef_model is None and "no EF weights" in models.description


def test_compute_mean_std_of_echonet_videos(tmp_path: Path) -> None:
    generate_phantoms(tmp_path, n=2, seed=HELD_OUT_SEED + 1, fmt="echonet")
    paths = [r.path for r in read_filelist(tmp_path)]
    mean, std = compute_mean_std(paths)
    pixels = np.concatenate([load_video(p).reshape(-1, 3) for p in paths]).astype(np.float64)
    assert np.allclose(mean, pixels.mean(axis=0)) and np.allclose(std, pixels.std(axis=0))
