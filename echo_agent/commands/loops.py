"""``echo-agent phantom`` and ``calibrate``: writing synthetic loops, and measuring a lab's own."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pacs_agent.config import Config

if TYPE_CHECKING:
    pass


def add_phantom_parser(sub: Any) -> None:
    """Adds ``phantom``."""
    phantom = sub.add_parser("phantom", help="write synthetic A4C loops with ground truth")
    phantom.add_argument("outdir", type=Path)
    phantom.add_argument("--n", type=int, default=4, help="studies (dicom) or videos (echonet)")
    phantom.add_argument("--seed", type=int, default=0)
    phantom.add_argument("--format", choices=("dicom", "echonet"), default="dicom")
    phantom.add_argument(
        "--no-distractors", action="store_true", help="dicom: only the A4C loop per study"
    )
    phantom.add_argument(
        "--negative",
        action="store_true",
        help="dicom: N loops with no EF to publish (blank, noise, non_cardiac, wrong_view, "
        "lv_cut_off in turn), truth JSON with negative_class",
    )
    phantom.add_argument(
        "--style",
        choices=("classic", "bmode"),
        default="classic",
        help="bmode: simulated B-mode imaging with randomised scanner/lab styles (A4C loops "
        "only, one per study)",
    )
    phantom.add_argument(
        "--families",
        default="",
        help="bmode: comma-separated style families to draw from (default: every unsealed one)",
    )
    phantom.add_argument(
        "--exclude-families", default="", help="bmode: comma-separated families never drawn"
    )
    phantom.set_defaults(func=cmd_phantom, needs_config=False)


def add_calibrate_parser(sub: Any) -> None:
    """Adds ``calibrate``."""
    calibrate = sub.add_parser(
        "calibrate",
        help="input mean/std of a lab's own loops, for weights that carry none (EchoNet .pt)",
    )
    calibrate.add_argument("folder", type=Path, help="DICOM loops (*.dcm) or EchoNet *.avi")
    calibrate.add_argument("--limit", type=int, default=200, help="use at most N loops")
    calibrate.set_defaults(func=cmd_calibrate, needs_config=False)


def cmd_phantom(args: argparse.Namespace, _config: Config | None) -> int:
    from inference.phantom import generate_phantoms  # numpy/opencv only when asked for

    if args.n < 1:
        raise ValueError("--n must be at least 1")
    if args.style == "bmode":
        if args.negative:
            raise ValueError("--negative writes classic loops only: drop --style bmode")
        from inference.phantom.bmode import generate_bmode

        written = generate_bmode(
            args.outdir,
            n=args.n,
            seed=args.seed,
            fmt=args.format,
            families=[f for f in args.families.split(",") if f.strip()] or None,
            exclude_families=[f for f in args.exclude_families.split(",") if f.strip()] or None,
        )
        print(json.dumps({"outdir": str(args.outdir), "files": [str(p) for p in written]}))
        return 0
    if args.families or args.exclude_families:
        raise ValueError("--families/--exclude-families need --style bmode")
    if args.negative:
        if args.format != "dicom" or args.no_distractors:
            raise ValueError("--negative writes DICOM loops only: drop --format/--no-distractors")
        from inference.phantom.negatives import generate_negatives

        written = generate_negatives(args.outdir, n=args.n, seed=args.seed)
    else:
        written = generate_phantoms(
            args.outdir,
            n=args.n,
            seed=args.seed,
            fmt=args.format,
            distractors=not args.no_distractors,
        )
    print(json.dumps({"outdir": str(args.outdir), "files": [str(p) for p in written]}))
    return 0


def cmd_calibrate(args: argparse.Namespace, _config: Config | None) -> int:
    """Prints the [models] mean/std lines to paste into the configuration."""
    from inference.presets import compute_mean_std

    if not args.folder.is_dir():
        raise ValueError(f"{args.folder} is not a folder")
    files = sorted([*args.folder.rglob("*.dcm"), *args.folder.rglob("*.avi")])[: args.limit]
    if not files:
        raise ValueError(f"{args.folder}: no *.dcm or *.avi loops found")
    mean, std = compute_mean_std(files)
    print(f"# from {len(files)} loops in {args.folder}")
    print("[models]")
    print(f"mean = [{', '.join(f'{v:.4f}' for v in mean)}]")
    print(f"std = [{', '.join(f'{v:.4f}' for v in std)}]")
    return 0
