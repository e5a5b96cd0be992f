"""The mutation engine of ``echo-agent bench fuzz``: small valid phantom objects and seeded
mutations of them, as encoded bytes ready to travel in a C-STORE.

The seeds are the phantom generator's own Ultrasound objects, made small (3 frames of 24 x 32
pixels) in each pixel encoding it writes (JPEG Baseline YBR, RLE RGB, native RGB and
MONOCHROME2, the MONOCHROME2 loop in Implicit VR, a single-frame still), and a Comprehensive SR
(undefined-length sequences) and an Encapsulated PDF of the same study. Each case is one
mutation of one seed, made on the encoded dataset with an index of where every element, item,
delimiter and fragment sits (``index_elements``), so the bytes that travel are exactly the
broken ones: pydicom would refuse to write most of them.

Families: element length fields; VRs; truncation; undefined-length sequences and items cut
short, nesting; encapsulated fragments truncated, oversized, without item tags or delimiter,
Basic Offset Tables that lie, frame headers that contradict Rows and Columns; UIDs empty,
invalid, oversized or other than the request's; Rows, Columns, Number of Frames, Bits
Allocated, Samples per Pixel inconsistent with the pixel data; transfer syntaxes that lie about
the bytes; stray command, File Meta and item tags, order, trailing bytes, flipped bits; odd text
and number values. Each mutant says what the node must do with it where that is certain
(``expect``): refuse (a value running past the end, an invalid UID), accept (a private element,
a frame split over two fragments), or either.

Case ``index`` of seed ``seed`` is a pure function of both (``Mutator.case``), so a case that a
run reports is replayed alone.

The engine is split by job: ``fuzz_seeds`` (the objects), ``fuzz_encoded`` (the element index
and byte edits), ``fuzz_draft`` (a case), and the families in ``fuzz_mutate_encoding``,
``fuzz_mutate_pixels`` and ``fuzz_mutate_content``; this module builds the cases and
re-exports what the bench and the tests use.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from pydicom.uid import generate_uid

from echo_agent.bench.fuzz_draft import ACCEPT, EITHER, REFUSE, Draft, Mutant, MutationFn
from echo_agent.bench.fuzz_encoded import (
    SERIES_INSTANCE_UID_TAG,
    SOP_INSTANCE_UID_TAG,
    encode_element,
    index_elements,
    replace_value,
    top_element,
    uid_bytes,
)
from echo_agent.bench.fuzz_mutate_content import mutate_structure, mutate_uid, mutate_values
from echo_agent.bench.fuzz_mutate_encoding import (
    mutate_fragments,
    mutate_length,
    mutate_sequence,
    mutate_truncate,
    mutate_vr,
)
from echo_agent.bench.fuzz_mutate_pixels import mutate_pixel_size, mutate_syntax
from echo_agent.bench.fuzz_seeds import DEFAULT_SEED, SeedObject, make_seeds

__all__ = [
    "ACCEPT",
    "DEFAULT_SEED",
    "EITHER",
    "FAMILIES",
    "GOOD_EVERY",
    "REFUSE",
    "Mutant",
    "Mutator",
    "SeedObject",
    "encode_element",
    "index_elements",
    "make_seeds",
    "mutant_for",
]


# every GOOD_EVERY-th case is an unmodified instance that must be stored
GOOD_EVERY = 5
# one mutation family per case in turn (see the module docstring)
# fmt: off
FAMILIES = (
    "length", "vr", "truncate", "sequence", "fragments", "uid", "pixel_size", "syntax_lie",
    "structure", "values",
)
# fmt: on


class Mutator:
    """Builds case ``index`` of a run from the seeds: a pure function of (seed, index)."""

    def __init__(self, seeds: Sequence[SeedObject], seed: int) -> None:
        self.seeds = list(seeds)
        self.seed = seed
        self._families: dict[str, MutationFn] = {
            "length": mutate_length,
            "vr": mutate_vr,
            "truncate": mutate_truncate,
            "sequence": mutate_sequence,
            "fragments": mutate_fragments,
            "uid": mutate_uid,
            "pixel_size": mutate_pixel_size,
            "syntax_lie": mutate_syntax,
            "structure": mutate_structure,
            "values": mutate_values,
        }

    def case(self, index: int, good_every: int = GOOD_EVERY) -> Mutant:
        rng = random.Random(f"echo-agent-fuzz:{self.seed}:{index}")
        entropy = ["echo-agent-fuzz", str(self.seed), str(index)]
        sop_uid = generate_uid(entropy_srcs=entropy)
        series_uid = generate_uid(entropy_srcs=[*entropy, "series"])
        if good_every and index % good_every == 0:
            seed = self.seeds[(index // good_every) % len(self.seeds)]
            data = self.fresh(seed, sop_uid, series_uid)
            return Mutant(
                index=index, family="good", detail="unmodified", seed=seed.name, data=data,
                syntax=seed.syntax, sop_class=seed.sop_class, sop_instance=sop_uid, expect=ACCEPT,
            )  # fmt: skip
        # the families in turn over the mutants (the unmodified cases left out of the count)
        mutant_number = index - (index // good_every + 1 if good_every else 0)
        family = FAMILIES[mutant_number % len(FAMILIES)]
        seed = rng.choice(self._seeds_for(family))
        draft = Draft(self.fresh(seed, sop_uid, series_uid), seed.syntax, seed.sop_class, sop_uid)
        self._families[family](rng, seed, draft)
        return Mutant(
            index=index, family=family, detail=draft.detail, seed=seed.name, data=draft.data,
            syntax=draft.syntax, sop_class=draft.sop_class, sop_instance=draft.sop_instance,
            expect=draft.expect,
        )  # fmt: skip

    def fresh(self, seed: SeedObject, sop_uid: str, series_uid: str) -> bytes:
        """The seed as a new instance in a series of its own: a mutant that moves its series
        to another study (a valid Study Instance UID of its own) must not take the next
        unmodified instances' series with it, which the node would then quarantine."""
        data = seed.data
        for tag, uid in ((SERIES_INSTANCE_UID_TAG, series_uid), (SOP_INSTANCE_UID_TAG, sop_uid)):
            element = top_element(index_elements(data, seed.implicit), tag)
            assert element is not None
            data = replace_value(data, element, uid_bytes(uid), seed.implicit)
        return data

    def _seeds_for(self, family: str) -> list[SeedObject]:
        if family == "vr":
            return [s for s in self.seeds if not s.implicit]
        if family == "fragments":
            return [s for s in self.seeds if s.encapsulated]
        if family == "pixel_size":
            return [s for s in self.seeds if s.image]
        return self.seeds  # every seed has a sequence (regions, codes, SR content)


def mutant_for(seeds: Sequence[SeedObject], seed: int, index: int) -> Mutant:
    """Case ``index`` of a run with ``seed``: replays one case of a report alone."""
    return Mutator(seeds, seed).case(index)
