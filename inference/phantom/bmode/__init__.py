"""B-mode ultrasound simulation with randomised scanner/lab styles (issue #16, items 1-2, 4).

The classic phantom (`inference.phantom.render`) paints grey levels and multiplies speckle on
top; models trained on it learned that generator. This one simulates how a scanner forms the
image (tissue scatterers that move with the heart, a depth-dependent beam PSF in polar
coordinates, envelope detection, TGC, log compression, scan conversion, artefacts) and draws
every loop's look from a named style family, so whole families can be held out to test
generalisation. The LV geometry and motion are the classic phantom's, so the truth is exact.
Select it with `echo-agent phantom OUT --style bmode [--families ...] [--exclude-families ...]`.

Style-held-out validation protocol (issue #16 item 4; HELD_OUT_FAMILY = wide_blue_coarse: a
wide, deep, off-centre sector, the inverted-S grey map, a blue tint and coarse, sparse speckle
that no other family has):

    # training set, held-out family never drawn (EchoNet layout for `echo-agent train`)
    echo-agent phantom data/bmode_train --style bmode --format echonet --n 1000 --seed 1000 \
        --exclude-families wide_blue_coarse
    # own-style test split: the training families, other seeds
    echo-agent phantom data/bmode_test_own --style bmode --n 24 --seed 1001 \
        --exclude-families wide_blue_coarse
    # held-out-style test split: only the family never trained on
    echo-agent phantom data/bmode_test_heldout --style bmode --n 24 --seed 1002 \
        --families wide_blue_coarse
    echo-agent evaluate --data data/bmode_test_own --out evaluation/bmode_own
    echo-agent evaluate --data data/bmode_test_heldout --out evaluation/bmode_heldout

A retrained model must beat the current demo models on both splits (report both).

SEALED_FAMILY (narrow_violet_fine) is drawn only when named; it was added after the shipped
models and gate limits were fixed, as a blind second held-out look (see families.py):

    echo-agent phantom data/bmode_test_sealed --style bmode --n 48 --seed 1006 \
        --families narrow_violet_fine
"""

from __future__ import annotations

from pathlib import Path

from .. import _check_args
from .export import write_bmode
from .families import FAMILIES, HELD_OUT_FAMILY, SEALED_FAMILY, select_families

__all__ = ["FAMILIES", "HELD_OUT_FAMILY", "SEALED_FAMILY", "generate_bmode", "select_families"]


def generate_bmode(
    outdir: Path,
    n: int,
    seed: int,
    fmt: str = "dicom",
    families: list[str] | None = None,
    exclude_families: list[str] | None = None,
    progress: bool = True,
) -> list[Path]:
    """Writes n A4C loops (dicom: one study each, no distractors) or n EchoNet videos; returns
    the .dcm paths or [FileList.csv]. Deterministic for (seed, allowed families)."""
    outdir = Path(outdir)
    _check_args(outdir, n, seed, fmt)
    allowed = select_families(families, exclude_families)
    outdir.mkdir(parents=True, exist_ok=True)
    return write_bmode(outdir, int(n), int(seed), fmt, allowed, progress)
