"""``echo-agent train {seg,ef}``: train the segmentation or EF network on an EchoNet-layout
folder (the real dataset, or ``echo-agent phantom DIR --format echonet``).

torch and the training code are imported only when the command runs, so the rest of the
command line stays quick to start.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

DEFAULTS: dict[str, dict[str, Any]] = {
    # the demo preset's settings (see inference/weights/demo/README.md)
    "seg": {"width": 0.25, "epochs": 8, "batch_size": 16, "lr": 2e-3},
    "ef": {"width": 0.125, "epochs": 3, "batch_size": 4, "lr": 1e-3},
}


def add_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Adds ``train`` with the ``seg``, ``ef`` and ``llm`` actions to the top-level subparsers."""
    train = subparsers.add_parser("train", help="train the networks on an EchoNet-layout folder")
    actions = train.add_subparsers(dest="train_command", required=True, metavar="NETWORK")
    for name, what in (("seg", "LV segmentation (DeepLabV3)"), ("ef", "EF (R(2+1)D-18)")):
        d = DEFAULTS[name]
        p = actions.add_parser(name, help=f"train {what}")
        p.add_argument(
            "--data",
            type=Path,
            required=True,
            nargs="+",
            help="EchoNet-Dynamic layout folder(s); several train on their union, in order",
        )
        p.add_argument("--out", type=Path, required=True, help="checkpoint and weights folder")
        p.add_argument("--epochs", type=int, default=d["epochs"])
        p.add_argument("--width", type=float, default=d["width"], help="channel width multiplier")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--batch-size", type=int, default=d["batch_size"])
        p.add_argument("--lr", type=float, default=d["lr"], help="AdamW peak learning rate")
        p.add_argument("--threads", type=int, default=2, help="CPU threads (ignored on CUDA)")
        p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
        p.add_argument(
            "--max-videos", type=int, default=None, help="use only the first N TRAIN videos"
        )
        p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
        p.add_argument(
            "--init",
            type=Path,
            default=None,
            help="start from these weights (.safetensors of the same network and width)",
        )
        p.add_argument(
            "--intensity-aug",
            action="store_true",
            help="random gamma, gain and blur per sample (scanner and lab differences)",
        )
        p.add_argument(
            "--tone-tint-aug",
            action="store_true",
            help="EF: random S / inverse-S tone curve and colour tint per sample",
        )
        p.add_argument(
            "--zoom-aug",
            action="store_true",
            help="random zoom about the grid's centre per sample (depth and sector angle)",
        )
        p.set_defaults(func=cmd_train, needs_config=False)
    from echo_agent.commands.llm import add_llm_train_parser

    add_llm_train_parser(actions)  # needs the configuration: model cache and models preset
    return train


def cmd_train(args: argparse.Namespace, _config: object = None) -> int:
    from inference.training.common import TrainOptions
    from inference.training.train_ef import train_ef
    from inference.training.train_seg import train_segmentation

    if args.max_videos is not None and args.max_videos < 1:
        raise ValueError("--max-videos must be at least 1")
    if args.threads < 1:
        raise ValueError("--threads must be at least 1")
    options = TrainOptions(
        data_dir=args.data[0],
        extra_data_dirs=tuple(args.data[1:]),
        intensity_augment=args.intensity_aug,
        tone_tint_augment=args.tone_tint_aug,
        zoom_augment=args.zoom_aug,
        out_dir=args.out,
        epochs=args.epochs,
        width=args.width,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        resume=args.resume,
        threads=args.threads,
        device=args.device,
        command=shlex.join(["echo-agent", *sys.argv[1:]]),
        max_train_videos=args.max_videos,
        init_weights=args.init,
    )
    run = train_segmentation if args.train_command == "seg" else train_ef
    result = run(options)
    last = result.history[-1] if result.history else {}
    print(" ".join([str(result.weights_path), *(f"{k}={v:.4g}" for k, v in last.items())]))
    return 0
