"""Training on the EchoNet-Dynamic layout: the reader, a few steps of each network, resume."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 -- conventional alias

from inference.checkpoints import read_safetensors_config
from inference.networks import build_deeplabv3_resnet50, build_r2plus1d_18
from inference.phantom import generate_phantoms
from inference.presets import load_preset
from inference.training.common import TrainOptions, make_optimizer
from inference.training.echonet_data import (
    clip_starts,
    read_filelist,
    read_tracings,
    seg_samples,
    take_clip,
    traced_videos,
)
from inference.training.metrics import clip_batch, dice_scores
from inference.training.train_ef import RandomClips, train_ef
from inference.training.train_seg import train_segmentation
from inference.training.transforms import normalise

TINY_WIDTH = 0.0625
N_VIDEOS = 8


@pytest.fixture(scope="module")
def echonet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("echonet")
    generate_phantoms(out, n=N_VIDEOS, seed=31, fmt="echonet")
    return out


def options(data: Path, out: Path, **kw: object) -> TrainOptions:
    base: dict[str, object] = {
        "data_dir": data,
        "out_dir": out,
        "epochs": 2,
        "width": TINY_WIDTH,
        "seed": 5,
        "batch_size": 4,
        "threads": 2,
        "progress_every": 1,
        "max_train_videos": 4,
        "log": io.StringIO(),
    }
    base.update(kw)
    return TrainOptions(**base)  # type: ignore[arg-type]


def test_reader_counts_splits_and_trace_order(echonet_dir: Path) -> None:
    records = read_filelist(echonet_dir)
    assert len(records) == N_VIDEOS
    assert [r.split for r in records].count("TRAIN") == 6
    assert len(read_filelist(echonet_dir, ["train"])) == 6  # case-insensitive split names

    videos = traced_videos(echonet_dir)
    assert len(videos) == N_VIDEOS
    samples = seg_samples(videos)
    assert [s.phase for s in samples] == ["ES", "ED"] * N_VIDEOS
    for es, ed, video in zip(samples[::2], samples[1::2], videos, strict=True):
        assert es.image.shape == (112, 112, 3) and es.image.dtype == np.uint8
        es_area, ed_area = es.mask.sum(), ed.mask.sum()
        # an LV on the 112 grid covers a few percent of it, and is smaller at end-systole
        assert 0.01 * 112**2 < es_area < ed_area < 0.35 * 112**2
        ratio = 1 - es_area / ed_area
        assert 0.05 < ratio < 0.9, video.record.name
        # the mask is dark blood pool: darker inside than in a ring around it
        ring = cv2.dilate(es.mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
        assert es.image[es.mask].mean() < es.image[ring & ~es.mask].mean()


def test_reader_handles_the_real_files_quirks(echonet_dir: Path, tmp_path: Path) -> None:
    """FileName with or without .avi, lower-case split, ES first / ED last in file order."""
    shutil.copytree(echonet_dir / "Videos", tmp_path / "Videos")
    with (echonet_dir / "FileList.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    rows[0]["FileName"] += ".avi"
    rows[1]["Split"] = rows[1]["Split"].lower()
    with (tmp_path / "FileList.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    shutil.copy(echonet_dir / "VolumeTracings.csv", tmp_path / "VolumeTracings.csv")

    records = read_filelist(tmp_path)
    assert len(records) == N_VIDEOS
    assert records[0].name == rows[0]["FileName"][:-4]
    assert records[1].split == rows[1]["Split"].upper()
    traces = read_tracings(tmp_path)
    first = traces[records[0].name]
    assert len(first) == 2 and all(len(t.x1) == 21 for t in first)
    videos = traced_videos(tmp_path)
    assert videos[0].es.frame == first[0].frame and videos[0].ed.frame == first[-1].frame


def test_clip_indices_cover_every_start_and_pad_short_videos() -> None:
    starts = clip_starts(100)
    assert starts[0] == 0 and starts[-1] + 31 * 2 == 99 and len(starts) == 38
    video = np.arange(100, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 1), np.uint8)
    clip, valid = take_clip(video, 5)
    assert valid.all() and list(clip[:, 0, 0, 0]) == list(range(5, 68, 2))

    short = video[:40]
    assert list(clip_starts(40)) == [0]
    clip, valid = take_clip(short, 0)
    assert valid.sum() == 20 and not valid[20:].any() and (clip[20:] == 0).all()


def test_random_clips_are_deterministic_per_epoch(echonet_dir: Path) -> None:
    records = read_filelist(echonet_dir)[:2]
    from inference.training.echonet_data import load_video

    videos = [load_video(r.path) for r in records]
    ds = RandomClips(videos, [r.ef_percent for r in records], seed=3, max_shift_px=8)
    a = ds[1][0]
    assert a.shape == (3, 32, 112, 112) and a.dtype == torch.uint8
    assert torch.equal(a, ds[1][0])
    ds.set_epoch(1)
    assert not torch.equal(a, ds[1][0])


def test_random_clips_sample_each_video_at_its_own_period() -> None:
    # frame numbers as pixel values: the clip shows which frames were taken
    video = np.arange(100, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 1), np.uint8)
    ds = RandomClips([video, video], [50.0, 50.0], seed=0, max_shift_px=0, periods=[1, 3])
    for i, period in enumerate((1, 3)):
        frames = ds[i][0][0, :, 2, 2].numpy().astype(int)
        valid = ds[i][1].numpy()
        assert np.all(np.diff(frames[valid]) == period), (period, frames)
    with pytest.raises(ValueError, match="clip periods"):
        RandomClips([video], [50.0], seed=0, max_shift_px=0, periods=[1, 2])


def test_segmentation_loss_falls_on_a_fixed_batch(echonet_dir: Path) -> None:
    torch.manual_seed(0)
    samples = seg_samples(traced_videos(echonet_dir)[:2])
    x = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2)
    x = normalise(x, torch.full((3,), 30.0), torch.full((3,), 45.0))
    y = torch.from_numpy(np.stack([s.mask for s in samples])).float()
    model = build_deeplabv3_resnet50(TINY_WIDTH)
    opt, _ = make_optimizer(model, options(echonet_dir, echonet_dir, lr=3e-3), 1)
    losses = []
    for _ in range(6):
        loss = F.binary_cross_entropy_with_logits(model(x)[:, 0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


def test_ef_loss_falls_on_a_fixed_batch(echonet_dir: Path) -> None:
    torch.manual_seed(0)
    from inference.training.echonet_data import load_video

    records = read_filelist(echonet_dir)[:2]
    clips = np.stack([take_clip(load_video(r.path), 0)[0] for r in records])
    x = clip_batch(
        clips,
        np.ones(clips.shape[:2], bool),
        torch.full((3,), 30.0),
        torch.full((3,), 45.0),
        torch.device("cpu"),
    )
    x = x[:, :, :16, 24:88, 24:88]  # a fully convolutional net: a smaller clip trains alike
    y = torch.tensor([r.ef_percent for r in records], dtype=torch.float32)
    model = build_r2plus1d_18(TINY_WIDTH).to(memory_format=torch.channels_last_3d)
    opt, _ = make_optimizer(model, options(echonet_dir, echonet_dir, lr=0.05), 1)
    losses = []
    for _ in range(6):
        loss = F.mse_loss(model(x)[:, 0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_segmentation_training_resumes_exactly_and_writes_loadable_weights(
    echonet_dir: Path, tmp_path: Path
) -> None:
    straight = train_segmentation(options(echonet_dir, tmp_path / "a", command="echo-agent x"))
    assert straight.epochs_done == 2 and len(straight.history) == 2
    assert straight.history[1]["train_loss"] < straight.history[0]["train_loss"]

    first = train_segmentation(options(echonet_dir, tmp_path / "b", stop_after_epochs=1))
    assert first.epochs_done == 1
    resumed = train_segmentation(options(echonet_dir, tmp_path / "b", resume=True))
    assert resumed.epochs_done == 2
    a, b = _weights(straight.weights_path), _weights(resumed.weights_path)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)

    config = read_safetensors_config(straight.weights_path)
    assert config["architecture"] == "deeplabv3_resnet50" and config["width"] == TINY_WIDTH
    assert len(config["mean"]) == 3 and len(config["std"]) == 3 and min(config["std"]) > 0
    assert config["command"] == "echo-agent x"
    assert config["train_data"]["phantom_seed"] == 31 and config["train_data"]["videos"] == 4
    assert np.allclose(config["mean"], straight.mean)


@pytest.mark.slow
def test_ef_training_resumes_exactly_and_the_pair_loads_as_a_preset(
    echonet_dir: Path, tmp_path: Path
) -> None:
    kw = {"max_train_videos": 2, "batch_size": 2}
    straight = train_ef(options(echonet_dir, tmp_path / "a", **kw))
    train_ef(options(echonet_dir, tmp_path / "b", stop_after_epochs=1, **kw))
    resumed = train_ef(options(echonet_dir, tmp_path / "b", resume=True, **kw))
    a, b = _weights(straight.weights_path), _weights(resumed.weights_path)
    assert all(torch.equal(a[k], b[k]) for k in a)
    config = read_safetensors_config(straight.weights_path)
    assert config["architecture"] == "r2plus1d_18"
    assert config["clip_length_frames"] == 32 and config["clip_period_frames"] == 2
    assert config["clip_sample_interval_ms"] == 40.0
    assert "val_mae" in straight.history[-1]

    # a seg + EF pair trained on the same folder is a complete demo-style preset
    seg = train_segmentation(options(echonet_dir, tmp_path / "a", epochs=1, max_train_videos=2))
    assert seg.mean == straight.mean
    models = load_preset("demo", demo_dir=tmp_path / "a")
    assert models.demo and models.mean == straight.mean
    assert models.ef_model is not None


def test_resume_without_a_checkpoint_is_a_clear_error(echonet_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no checkpoint\.pt"):
        train_segmentation(options(echonet_dir, tmp_path, resume=True))


def test_bad_options_are_value_errors(echonet_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--epochs"):
        options(echonet_dir, tmp_path, epochs=0)
    with pytest.raises(ValueError, match="not a directory"):
        options(tmp_path / "missing", tmp_path)


def test_dice_scores() -> None:
    a = np.zeros((2, 4, 4), bool)
    a[:, :2] = True
    b = a.copy()
    b[1] = False
    s = dice_scores(a, b)
    assert s.per_frame == (1.0, 0.0) and s.pooled == pytest.approx(2 * 8 / 24)


def test_init_weights_must_match_the_network(echonet_dir: Path, tmp_path: Path) -> None:
    from inference.checkpoints import save_safetensors_fp16

    path = tmp_path / "seg.safetensors"
    config = {"architecture": "deeplabv3_resnet50", "width": TINY_WIDTH}
    save_safetensors_fp16(build_deeplabv3_resnet50(TINY_WIDTH), path, config)
    with pytest.raises(ValueError, match="--init"):
        train_segmentation(options(echonet_dir, tmp_path / "o", width=0.125, init_weights=path))
    with pytest.raises(ValueError, match="--init"):
        train_ef(options(echonet_dir, tmp_path / "o", init_weights=path, max_train_videos=1))


def test_intensity_jitter_keeps_black_and_shape_and_varies_per_sample() -> None:
    from inference.training.common import item_generator
    from inference.training.transforms import intensity_jitter

    clip = np.random.default_rng(0).integers(0, 256, size=(3, 4, 112, 112), dtype=np.uint8)
    clip[..., :10, :] = 0  # outside the fan
    a = intensity_jitter(clip, item_generator(1, 0, 0))
    b = intensity_jitter(clip, item_generator(1, 0, 1))
    assert a.shape == clip.shape and a.dtype == np.uint8
    assert not a[..., :10, :].any()  # black stays black (blur never reaches in from 0-rows)
    assert not np.array_equal(a, b) and not np.array_equal(a, clip)
    assert np.array_equal(a, intensity_jitter(clip, item_generator(1, 0, 0)))  # seeded


def test_several_data_folders_train_on_their_union(echonet_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    generate_phantoms(other, n=4, seed=32, fmt="echonet")
    from inference.training.echonet_data import read_filelists, traced_videos_in

    union = read_filelists([echonet_dir, other], ["TRAIN"])
    assert [r.name for r in union] == [
        r.name for r in read_filelist(echonet_dir, ["TRAIN"]) + read_filelist(other, ["TRAIN"])
    ]
    assert len(traced_videos_in([echonet_dir, other])) == N_VIDEOS + 4
    opts = options(
        echonet_dir,
        tmp_path / "seg",
        extra_data_dirs=(other,),
        epochs=1,
        max_train_videos=None,
        intensity_augment=True,
        stop_after_epochs=1,
    )
    result = train_segmentation(opts)
    from inference.checkpoints import read_safetensors_config

    config = read_safetensors_config(result.weights_path)
    assert config["train_data"]["dir"] == [str(echonet_dir), str(other)]
    assert "intensity jitter" in config["augmentation"]
    with pytest.raises(ValueError, match="is not a directory"):
        options(echonet_dir, tmp_path / "x", extra_data_dirs=(tmp_path / "missing",))
