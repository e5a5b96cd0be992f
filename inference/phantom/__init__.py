"""Synthetic apical four-chamber echo loops with exact ground truth.

No real echo data can be used here, so the networks train and the pipeline is tested on these:
DICOM studies as a cart would send them (with distractor views), or the EchoNet-Dynamic file
layout for training code. Every output is a deterministic function of the seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

FORMATS = ("dicom", "echonet")


def _check_args(outdir: Path, n: int, seed: int, fmt: str) -> None:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n must be a positive integer number of studies/videos, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if outdir.exists() and not outdir.is_dir():
        raise ValueError(f"output path {outdir} exists and is not a directory")


def generate_phantoms(
    outdir: Path, n: int, seed: int, fmt: str = "dicom", distractors: bool = True
) -> list[Path]:
    """Writes n studies (fmt="dicom") or n videos (fmt="echonet"); returns the paths written
    (the .dcm files, or the FileList.csv for echonet). Deterministic for a given seed. Raises
    ValueError with a clear message on bad arguments.

    Study/video i draws from its own child of SeedSequence(seed), so the first k outputs are
    the same whatever n is.
    """
    outdir = Path(outdir)
    _check_args(outdir, n, seed, fmt)
    outdir.mkdir(parents=True, exist_ok=True)
    root = np.random.SeedSequence(int(seed))
    if fmt == "echonet":
        from .echonet import write_echonet

        return [write_echonet(outdir, int(n), int(seed), root.spawn(int(n)))]

    from .study import write_study

    paths: list[Path] = []
    for i, ss in enumerate(root.spawn(int(n))):
        paths.extend(write_study(outdir, int(seed), i, ss, distractors))
    return paths


__all__ = ["FORMATS", "generate_phantoms"]
