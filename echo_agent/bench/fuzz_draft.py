"""One fuzz case while it is built (``Draft``) and when done (``Mutant``), with what the node
must do with it where that is certain (accept, refuse or either).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from echo_agent.bench.fuzz_encoded import Element, index_elements
from echo_agent.bench.fuzz_seeds import SeedObject

ACCEPT = "accept"
REFUSE = "refuse"
EITHER = "either"


@dataclass(frozen=True)
class Mutant:
    """One case: the bytes that travel, the syntax and UIDs the request names, and what the
    node must do with it when that is certain (``expect``: accept, refuse or either)."""

    index: int
    family: str
    detail: str
    seed: str
    data: bytes
    syntax: str
    sop_class: str
    sop_instance: str
    expect: str

    @property
    def good(self) -> bool:
        return self.family == "good"


@dataclass
class Draft:
    """A mutant being built: bytes and request fields; ``expect`` as far as known."""

    data: bytes
    syntax: str
    sop_class: str
    sop_instance: str
    detail: str = ""
    expect: str = EITHER


MutationFn = Callable[[random.Random, SeedObject, Draft], None]


def draft_elements(seed: SeedObject, draft: Draft) -> list[Element]:
    return index_elements(draft.data, seed.implicit)
