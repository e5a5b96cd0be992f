"""Fuzz mutation families on the encoding: element length fields, VRs, truncation,
undefined-length sequences and items, encapsulated fragments.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence

from echo_agent.bench.fuzz_draft import ACCEPT, EITHER, REFUSE, Draft, draft_elements
from echo_agent.bench.fuzz_encoded import (
    LONG_VRS,
    SHORT_VRS,
    TAG,
    U32,
    UNDEFINED_LENGTH,
    Element,
    encode_element,
    insert_top,
    splice,
    tag_text,
    uid_bytes,
    with_length,
)
from echo_agent.bench.fuzz_seeds import SEED_ROWS, SeedObject
from pacs_agent.dicom import contexts

BAD_VRS = (b"\x00\x00", b"zz", b"A1", b"  ", b"\xff\xff", b"Ob")


def mutate_length(rng: random.Random, seed: SeedObject, d: Draft) -> None:
    elements = draft_elements(seed, d)
    target = rng.choice(elements)
    remaining = len(d.data) - target.value_at
    choices = [
        0,
        target.length + 1,
        target.length - 1,
        target.length + 2,
        target.length * 2,
        rng.getrandbits(32),
        UNDEFINED_LENGTH,
        UNDEFINED_LENGTH - 1,
        remaining + 1,
        remaining - 1,
        0x7FFFFFFF,
    ]
    if target.length == UNDEFINED_LENGTH:
        choices += [0, 8, remaining, remaining - 8]
    length = rng.choice(choices) & (0xFFFFFFFF if target.length_bytes == 4 else 0xFFFF)
    if length == target.length:
        length = (length + 3) & (0xFFFFFFFF if target.length_bytes == 4 else 0xFFFF)
    d.data = with_length(d.data, target, length)
    d.detail = (
        f"{target.kind} {tag_text(target.tag)} depth {target.depth}: "
        f"length {target.length} -> {length}"
    )
    top_value = target.top_level and target.kind == "element"
    if top_value and length != UNDEFINED_LENGTH and length > remaining:
        d.expect = REFUSE  # a top-level value running past the end of the dataset


def mutate_vr(rng: random.Random, seed: SeedObject, d: Draft) -> None:
    elements = [e for e in draft_elements(seed, d) if e.vr]
    target = rng.choice(elements)
    pool = rng.choice([SHORT_VRS, tuple(sorted(LONG_VRS)), BAD_VRS])  # sorted: no hash order
    vr = rng.choice([v for v in pool if v != target.vr])
    d.data = splice(d.data, target.start + 4, target.start + 6, vr)
    d.detail = f"{tag_text(target.tag)} depth {target.depth}: VR {target.vr!r} -> {vr!r}"
    if vr in BAD_VRS and target.top_level:
        d.expect = REFUSE


def mutate_truncate(rng: random.Random, seed: SeedObject, d: Draft) -> None:
    elements = draft_elements(seed, d)
    boundaries = {e.start for e in elements if e.top_level} | {len(d.data)}
    how = rng.choice(["anywhere", "anywhere", "last_bytes", "boundary", "in_header"])
    if how == "last_bytes":
        cut = len(d.data) - rng.randint(1, 16)
    elif how == "boundary":
        cut = rng.choice(sorted(boundaries - {0, len(d.data)}))
    elif how == "in_header":
        target = rng.choice(elements)
        cut = target.start + rng.randint(1, max(1, target.value_at - target.start - 1))
    else:
        cut = rng.randint(1, len(d.data) - 1)
    d.detail = f"cut at byte {cut} ({how}) of {len(d.data)}"
    d.data = d.data[:cut]
    if cut not in boundaries:
        d.expect = REFUSE


def mutate_sequence(rng: random.Random, seed: SeedObject, d: Draft) -> None:
    elements = draft_elements(seed, d)
    undefined = [e for e in elements if e.kind == "sequence" and e.length == UNDEFINED_LENGTH]
    defined = [e for e in elements if e.kind == "sequence" and e.length != UNDEFINED_LENGTH]
    delimiters = [
        e
        for e in elements
        if e.kind in ("seq_end", "item_end") and not _in_defined_parent(e, elements)
    ]
    items = [e for e in elements if e.kind == "item"]
    options = ["deep_undefined", "deep_defined"]
    if delimiters:
        options += ["drop_delimiter", "drop_delimiter"]
    if undefined:
        options += ["cut_after_item"]
    if defined:
        options += ["defined_to_undefined", "defined_length_off"]
    if items:
        options += ["item_length_off", "item_tag_broken"]
    how = rng.choice(options)
    if how == "drop_delimiter":
        target = rng.choice(delimiters)
        d.data = splice(d.data, target.start, target.stop)
        d.detail = f"{target.kind} at byte {target.start} removed"
        d.expect = REFUSE
    elif how == "cut_after_item":
        target = rng.choice([e for e in items if _inside_any(e, undefined)] or items)
        d.data = d.data[: target.stop]
        d.detail = f"dataset ends after the item at byte {target.start}"
        d.expect = REFUSE
    elif how == "defined_to_undefined":
        target = rng.choice(defined)
        d.data = with_length(d.data, target, UNDEFINED_LENGTH)
        d.detail = (
            f"sequence {tag_text(target.tag)} of {target.length} bytes marked undefined "
            "length, no delimiter"
        )
        d.expect = REFUSE if target.top_level else EITHER
    elif how == "defined_length_off":
        target = rng.choice(defined)
        delta = rng.choice([-9, -8, -4, -1, 1, 4, 8, 9])
        d.data = with_length(d.data, target, max(0, target.length + delta))
        d.detail = f"sequence {tag_text(target.tag)} length {target.length} {delta:+d}"
    elif how == "item_length_off":
        target = rng.choice(items)
        delta = rng.choice([-8, -2, 2, 8, 1000])
        if target.length != UNDEFINED_LENGTH and rng.random() < 0.3:
            new = UNDEFINED_LENGTH
        else:
            new = (target.length + delta) & 0xFFFFFFFF
        d.data = with_length(d.data, target, new)
        d.detail = f"item at byte {target.start}: length {target.length} -> {new}"
    elif how == "item_tag_broken":
        target = rng.choice(items)
        tag = rng.choice([0xFFFEE001, 0xFFFFE000, 0x00080016, 0xFFFEE0DD, 0xFFFEE00D])
        d.data = splice(d.data, target.start, target.start + 4, TAG.pack(tag >> 16, tag & 0xFFFF))
        d.detail = f"item tag at byte {target.start} -> ({tag >> 16:04X},{tag & 0xFFFF:04X})"
        if not _in_defined_parent(target, elements) and tag != 0xFFFEE0DD:
            d.expect = REFUSE
    else:
        levels = rng.choice([2, 31, 33, 40, 64, 300, 3000])
        undefined_lengths = how == "deep_undefined"
        nested = _nested_sequence(levels, undefined_lengths, seed.implicit)
        d.data = insert_top(d.data, elements, 0x00081140, nested)
        d.detail = f"Referenced Image Sequence nested {levels} levels ({how})"
        if undefined_lengths and levels > 40:
            d.expect = REFUSE


def _in_defined_parent(target: Element, elements: Sequence[Element]) -> bool:
    return any(
        e.kind in ("sequence", "item")
        and e.length != UNDEFINED_LENGTH
        and e.value_at <= target.start < e.stop
        for e in elements
    )


def _inside_any(target: Element, parents: Sequence[Element]) -> bool:
    return any(p.value_at <= target.start < p.stop for p in parents)


def _nested_sequence(levels: int, undefined: bool, implicit: bool) -> bytes:
    """(0008,1140) holding one item holding (0008,1140) ... ``levels`` deep."""
    inner = encode_element(0x00081155, b"UI", uid_bytes("1.2.3.4"), implicit)
    for _ in range(levels):
        if undefined:
            item = TAG.pack(0xFFFE, 0xE000) + U32.pack(UNDEFINED_LENGTH) + inner
            item += TAG.pack(0xFFFE, 0xE00D) + U32.pack(0)
            seq_head = TAG.pack(0x0008, 0x1140)
            seq_head += (
                U32.pack(UNDEFINED_LENGTH)
                if implicit
                else b"SQ\x00\x00" + U32.pack(UNDEFINED_LENGTH)
            )
            inner = seq_head + item + TAG.pack(0xFFFE, 0xE0DD) + U32.pack(0)
        else:
            item = TAG.pack(0xFFFE, 0xE000) + U32.pack(len(inner)) + inner
            inner = encode_element(0x00081140, b"SQ", item, implicit)
    return inner


def mutate_fragments(rng: random.Random, seed: SeedObject, d: Draft) -> None:
    elements = draft_elements(seed, d)
    fragments = [e for e in elements if e.kind == "fragment"]
    table, frames = fragments[0], fragments[1:]
    delimiter = next(e for e in elements if e.kind == "seq_end" and e.start >= table.start)
    how = rng.choice(
        [
            "truncate_last",
            "oversize_last",
            "oversize",
            "undersize",
            "missing_item_tag",
            "drop_delimiter",
            "drop_offset_table",
            "short_offset_table",
            "long_offset_table",
            "drop_frame",
            "extra_frame",
            "split_frame",
            "empty_fragment",
            "odd_fragment",
            "undefined_fragment",
            "garbage_frame",
            "frame_header_size",
            "trailing_after_delimiter",
        ]
    )
    last = frames[-1]
    d.detail = how
    if how == "truncate_last":
        cut = rng.randint(last.value_at, last.stop - 1)
        d.data = d.data[:cut]
        d.expect = REFUSE
    elif how == "oversize_last":
        d.data = with_length(d.data, last, last.length + rng.choice([1, 2, 8, 9, 10_000]))
        d.expect = REFUSE
    elif how in ("oversize", "undersize"):
        target = rng.choice(frames)
        delta = rng.choice([1, 2, 4, 8]) * (1 if how == "oversize" else -1)
        d.data = with_length(d.data, target, max(0, target.length + delta))
        d.detail = f"{how} fragment at byte {target.start} by {delta:+d}"
    elif how == "missing_item_tag":
        target = rng.choice(fragments)
        tag = rng.choice([0x00000000, 0xFFFEE001, 0x7FE00010, 0xE000FFFE])
        d.data = splice(d.data, target.start, target.start + 4, TAG.pack(tag >> 16, tag & 0xFFFF))
        d.detail = f"item tag of fragment at byte {target.start} -> {tag:08X}"
        d.expect = REFUSE
    elif how == "drop_delimiter":
        d.data = splice(d.data, delimiter.start, delimiter.stop)
        d.expect = REFUSE
    elif how == "drop_offset_table":
        d.data = splice(d.data, table.start, table.stop)
        d.expect = REFUSE  # the first frame is taken for the table: a frame short
    elif how in ("short_offset_table", "long_offset_table"):
        count = len(frames) - 1 if how == "short_offset_table" else len(frames) + 2
        offsets = b"".join(U32.pack(i * 100) for i in range(count))
        item = TAG.pack(0xFFFE, 0xE000) + U32.pack(len(offsets)) + offsets
        d.data = splice(d.data, table.start, table.stop, item)
        if 0 < count < len(frames):
            d.expect = REFUSE
    elif how == "drop_frame":
        target = rng.choice(frames)
        d.data = splice(d.data, target.start, target.stop)
        d.expect = REFUSE
    elif how == "extra_frame":
        target = rng.choice(frames)
        d.data = splice(d.data, last.stop, last.stop, d.data[target.start : target.stop])
    elif how == "split_frame":
        target = rng.choice([f for f in frames if f.length >= 4])
        half = (target.length // 2) & ~1
        first = TAG.pack(0xFFFE, 0xE000) + U32.pack(half)
        first += d.data[target.value_at : target.value_at + half]
        second = TAG.pack(0xFFFE, 0xE000) + U32.pack(target.length - half)
        second += d.data[target.value_at + half : target.stop]
        d.data = splice(d.data, target.start, target.stop, first + second)
        if seed.syntax != contexts.RLE_LOSSLESS:
            d.expect = ACCEPT  # PS3.5 A.4: a frame may span fragments
    elif how == "empty_fragment":
        at = rng.choice(frames).start
        d.data = splice(d.data, at, at, TAG.pack(0xFFFE, 0xE000) + U32.pack(0))
    elif how == "odd_fragment":
        target = rng.choice(frames)
        d.data = with_length(d.data, target, target.length - 1)
        d.data = splice(d.data, target.stop - 1, target.stop)
    elif how == "undefined_fragment":
        target = rng.choice(frames)
        d.data = with_length(d.data, target, UNDEFINED_LENGTH)
        d.expect = REFUSE
    elif how == "garbage_frame":
        target = rng.choice(frames)
        garbage = bytes(rng.getrandbits(8) for _ in range(target.length))
        d.data = splice(d.data, target.value_at, target.stop, b"\x00" + garbage[1:])
        d.detail = f"frame at byte {target.start} overwritten with noise"
        # a JPEG frame without its start marker is a missing frame; an RLE header whose
        # segment count ends in a zero byte cannot name the 3 segments of an RGB frame
        d.expect = REFUSE
    elif how == "frame_header_size":
        target = rng.choice(frames)
        sof = d.data.find(b"\xff\xc0", target.value_at, target.stop)
        if seed.syntax == contexts.RLE_LOSSLESS or sof < 0:
            segments = rng.choice([0, 15, 255])
            d.data = splice(d.data, target.value_at, target.value_at + 4, U32.pack(segments))
            d.detail = f"RLE header of frame at byte {target.start}: {segments} segments"
            if seed.syntax == contexts.RLE_LOSSLESS:
                d.expect = REFUSE  # an RGB frame has 3 segments
        else:
            rows = rng.choice([1, SEED_ROWS + 1, 16000, 0])
            d.data = splice(d.data, sof + 5, sof + 7, struct.pack(">H", rows))
            d.detail = f"JPEG SOF of frame at byte {target.start} declares {rows} rows"
            d.expect = REFUSE
    else:
        junk = bytes(rng.getrandbits(8) for _ in range(rng.choice([2, 7, 8, 20])))
        d.data = d.data + junk
        d.detail = f"{len(junk)} bytes of noise after the sequence delimiter"
        if len(junk) < 8:
            d.expect = REFUSE
