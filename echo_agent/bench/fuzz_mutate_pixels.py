"""Fuzz mutation families on the pixel description: Rows, Columns, Number of Frames, Bits
Allocated, Samples per Pixel inconsistent with the pixel data, and transfer syntaxes that lie
about the bytes.
"""

from __future__ import annotations

import random

from echo_agent.bench.fuzz_draft import EITHER, REFUSE, Draft, draft_elements
from echo_agent.bench.fuzz_encoded import (
    PIXEL_DATA_TAG,
    U16,
    encode_element,
    even,
    insert_top,
    replace_value,
    splice,
    top_element,
)
from echo_agent.bench.fuzz_seeds import SeedObject
from pacs_agent.dicom import contexts

US_ATTRIBUTES = {
    "Rows": 0x00280010,
    "Columns": 0x00280011,
    "SamplesPerPixel": 0x00280002,
    "BitsAllocated": 0x00280100,
    "BitsStored": 0x00280101,
    "HighBit": 0x00280102,
    "PixelRepresentation": 0x00280103,
    "PlanarConfiguration": 0x00280006,
}
NUMBER_OF_FRAMES_TAG = 0x00280008
PHOTOMETRIC_TAG = 0x00280004
# fmt: off
IS_VALUES = (
    b"0 ", b"-1", b"abc ", b"1e3 ", b"", b"99999999999999999999", b"2\\3 ", b" 3", b"3.0 ",
    b"+3", b"2147483648", b"\x00\x00",
)
# fmt: on
REQUIRED_IMAGE_TAGS = {
    "NumberOfFrames": NUMBER_OF_FRAMES_TAG,
    "Rows": 0x00280010,
    "Columns": 0x00280011,
    "SamplesPerPixel": 0x00280002,
    "BitsAllocated": 0x00280100,
    "PixelData": PIXEL_DATA_TAG,
}


def mutate_pixel_size(rng: random.Random, seed: SeedObject, d: Draft) -> None:
    elements = draft_elements(seed, d)
    how = rng.choice(
        [
            "us_value",
            "us_value",
            "us_raw",
            "frames",
            "frames",
            "pixel_length",
            "photometric",
            "missing",
        ]
    )
    if how == "us_value":
        keyword = rng.choice(list(US_ATTRIBUTES))
        target = top_element(elements, US_ATTRIBUTES[keyword])
        if target is None:
            keyword, target = "Rows", top_element(elements, US_ATTRIBUTES["Rows"])
        assert target is not None
        old = U16.unpack_from(d.data, target.value_at)[0]
        value = rng.choice([0, 1, old + 1, max(0, old - 1), old * 2, 3, 12, 16, 32, 255, 65535])
        if value == old:
            value = old + 1
        d.data = replace_value(d.data, target, U16.pack(value), seed.implicit)
        d.detail = f"{keyword} {old} -> {value}"
        d.expect = _expect_pixel_change(seed, keyword, old, value)
    elif how == "us_raw":
        keyword = rng.choice(["Rows", "Columns", "SamplesPerPixel", "BitsAllocated"])
        target = top_element(elements, US_ATTRIBUTES[keyword])
        assert target is not None
        value = rng.choice([b"", b"\x08", b"\x08\x00\x08\x00", b"\x01\x00\x00"])
        d.data = replace_value(d.data, target, value, seed.implicit)
        d.detail = f"{keyword} value of {len(value)} bytes"
        d.expect = REFUSE if len(value) in (0, 1) else EITHER
    elif how == "frames":
        target = top_element(elements, NUMBER_OF_FRAMES_TAG)
        value = rng.choice((*IS_VALUES, b"1 ", b"2 ", b"4 ", b"1000"))
        if target is None:  # a still: give it a Number of Frames
            raw = encode_element(NUMBER_OF_FRAMES_TAG, b"IS", even(value), seed.implicit)
            d.data = insert_top(d.data, elements, NUMBER_OF_FRAMES_TAG, raw)
        else:
            d.data = replace_value(d.data, target, even(value), seed.implicit)
        d.detail = f"NumberOfFrames = {value!r}"
        if value.strip() in (b"0", b"-1", b"abc", b"1e3", b"99999999999999999999", b"1000"):
            d.expect = REFUSE
    elif how == "pixel_length" and not seed.encapsulated:
        target = top_element(elements, PIXEL_DATA_TAG)
        assert target is not None
        delta = rng.choice([-1, -2, -target.length // 2, -target.length, 1, 2, 100])
        value = d.data[target.value_at : target.stop]
        value = value[: len(value) + delta] if delta < 0 else value + b"\x7f" * delta
        d.data = replace_value(d.data, target, value, seed.implicit)
        d.detail = f"native pixel data {target.length} -> {len(value)} bytes"
        d.expect = REFUSE if delta < 0 else EITHER
    elif how == "photometric":
        target = top_element(elements, PHOTOMETRIC_TAG)
        assert target is not None
        value = rng.choice(
            [b"RGB ", b"MONOCHROME2 ", b"YBR_FULL_422", b"PALETTE COLOR ", b"", b"NONSENSE"]
        )
        d.data = replace_value(d.data, target, value, seed.implicit)
        d.detail = f"PhotometricInterpretation = {value!r}"
    else:
        keyword = rng.choice(list(REQUIRED_IMAGE_TAGS))
        target = top_element(elements, REQUIRED_IMAGE_TAGS[keyword])
        if target is None:
            keyword, target = "Rows", top_element(elements, REQUIRED_IMAGE_TAGS["Rows"])
        assert target is not None
        d.data = splice(d.data, target.start, target.stop)
        d.detail = f"{keyword} removed"
        d.expect = REFUSE


def _expect_pixel_change(seed: SeedObject, keyword: str, old: int, value: int) -> str:
    """Refusal is certain for an empty size, or native pixel data now too short."""
    if keyword in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated") and value == 0:
        return REFUSE
    grows = keyword in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated") and value > old
    if grows and not seed.encapsulated:
        return REFUSE
    if keyword in ("Rows", "Columns") and seed.syntax == contexts.JPEG_BASELINE:
        return REFUSE  # each frame's SOF declares the real size
    return EITHER


def mutate_syntax(rng: random.Random, seed: SeedObject, d: Draft) -> None:
    native = (contexts.EXPLICIT_VR_LITTLE_ENDIAN, contexts.IMPLICIT_VR_LITTLE_ENDIAN)
    if seed.encapsulated:
        options = [
            *native,
            contexts.JPEG_2000_LOSSLESS,
            contexts.JPEG_LS_LOSSLESS,
            contexts.JPEG_XL,
            contexts.JPEG_BASELINE,
            contexts.RLE_LOSSLESS,
        ]
    elif seed.image:
        options = [
            *native,
            contexts.JPEG_BASELINE,
            contexts.RLE_LOSSLESS,
            contexts.JPEG_2000_LOSSLESS,
        ]
    else:  # the node takes documents in the native syntaxes only
        options = list(native)
    declared = rng.choice([s for s in options if s != seed.syntax])
    d.syntax = declared
    d.detail = (
        f"{contexts.transfer_syntax_name(seed.syntax)} bytes declared as "
        f"{contexts.transfer_syntax_name(declared)}"
    )
    if declared in native and seed.syntax in native:
        d.expect = REFUSE  # explicit read as implicit or the other way round
    elif seed.image and (declared in native) != (seed.syntax in native):
        d.expect = REFUSE  # native pixel data in a compressed syntax or the other way round
    elif (
        seed.image
        and seed.syntax == contexts.JPEG_BASELINE
        and declared in (contexts.JPEG_2000_LOSSLESS, contexts.JPEG_XL, contexts.RLE_LOSSLESS)
    ):
        d.expect = REFUSE  # no frame starts with the declared syntax's marker
    elif seed.image and seed.syntax == contexts.RLE_LOSSLESS and declared != seed.syntax:
        d.expect = REFUSE
