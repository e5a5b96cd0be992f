"""Analyses held from the test side, so a test can act while a job runs (kill the process that
runs it, kill its database connections) without a hook in the node's code.

``held_loader(release)`` loads the configured models as the node does, with a segmenter that
waits for ``release`` (a ``threading.Event`` the test sets) before its first batch; patch it in
as ``inference.model_cache.load_models`` (what ``ModelCache`` calls). Run as a script, this
file is ``echo-agent`` with every analysis held for good (the test kills the process):
``python tests/held_analysis.py worker``.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from inference import model_cache
from inference.model_cache import Models, ModelSettings

SCRIPT = Path(__file__).resolve()


class HeldSegmenter:
    """The real segmenter, entered only once ``release`` is set; ``entered`` is set when the
    first batch arrives (the job is analysing)."""

    def __init__(self, inner: model_cache.TorchSegmenter, release: threading.Event) -> None:
        self.inner = inner
        self.release = release
        self.entered = threading.Event()

    @property
    def batch_size(self) -> int:
        return self.inner.batch_size

    def segment(self, batch_112: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.release.wait()
        return self.inner.segment(batch_112)


def held_loader(
    release: threading.Event, load: Callable[[ModelSettings], Models] = model_cache.load_models
) -> Callable[[ModelSettings], Models]:
    """``load_models`` whose segmenter waits for ``release``."""

    def load_held(settings: ModelSettings) -> Models:
        models = load(settings)
        return dataclasses.replace(models, segmenter=HeldSegmenter(models.segmenter, release))

    return load_held


def command(*args: str) -> list[str]:
    """The command line of ``echo-agent ARGS`` with every analysis held for good."""
    return [sys.executable, str(SCRIPT), *args]


def main(argv: list[str]) -> int:
    from echo_agent.cli import main as echo_agent_main

    model_cache.load_models = held_loader(threading.Event())  # never set: held until killed
    return echo_agent_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
