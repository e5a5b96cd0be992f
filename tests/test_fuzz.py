"""Malformed DICOM against the node's listener: ``echo_agent.bench.fuzz`` on loopback.

520 cases (every 5th an unmodified phantom object) go over real pynetdicom associations to the
listener in a process of its own: no crash (it still runs and answers C-ECHO after every case,
and answers every C-STORE), no partial file (every file has its row and every row its file,
nothing left in .incoming, no row for a refused instance), no lost good instance, a failure
status for every refused one, and every accepted mutant is stored byte for byte and read back
whole by pydicom. The larger run is ``echo-agent bench fuzz`` (README).

Then the ingest bugs the fuzz found, one test each, straight through ``inspect_dataset``: File
Meta, command and item tags in a dataset, values pydicom cannot decode, sequences nested too
deep with defined lengths, numbers beyond the IS range (a 0x0110 with a traceback before), and
JPEG frames sent as RLE.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from collections import Counter

import pytest
from dicom_helpers import Ids, encode_dataset, fake_encapsulated, us_loop_dataset
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage
from pynetdicom.status import code_to_category

from echo_agent.bench.fuzz import NOT_SENT, REFUSED, STORED, format_table, run_fuzz
from echo_agent.bench.fuzz_mutations import (
    FAMILIES,
    GOOD_EVERY,
    encode_element,
    index_elements,
)
from pacs_agent.dicom import contexts, status
from pacs_agent.dicom.validate import InvalidInstanceError, inspect_dataset

CASES = 520
SEED = 1
# generous: 520 cases take about 40 s on two idle cores, a few minutes on busy ones
RUN_LIMIT_S = 600.0


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory):
    return run_fuzz(tmp_path_factory.mktemp("fuzz"), CASES, SEED)


def test_the_node_survives_every_case_and_keeps_nothing_partial(report) -> None:
    table = format_table(report)
    answered = [c for c in report.cases if c.outcome in (STORED, REFUSED)]
    assert len(answered) >= 500, table  # "not sent" cases do not count
    assert report.seconds < RUN_LIMIT_S, table
    assert report.crashes == [], table
    assert report.node_restarts == 0
    assert report.partial == [], table
    assert report.processing_failures == [], table
    assert report.node_log_tracebacks == 0, table


def test_every_good_instance_is_stored(report) -> None:
    goods = report.goods
    assert len(goods) == CASES // GOOD_EVERY + (CASES % GOOD_EVERY > 0)
    assert report.lost_good == [], format_table(report)
    assert all(c.outcome == STORED and c.row and c.file_ok for c in goods)


def test_every_refused_instance_got_a_failure_status(report) -> None:
    refused = [c for c in report.mutants if c.outcome not in (STORED, NOT_SENT)]
    assert len(refused) > 150  # the mutations do break things
    for case in refused:
        assert case.status is not None, case
        assert code_to_category(case.status) == "Failure", case  # not success, not a warning
        assert not case.row


def test_accepted_mutants_are_valid_stored_objects(report) -> None:
    stored = [c for c in report.mutants if c.outcome == STORED]
    assert len(stored) > 50  # enough to make the read-back mean something
    assert all(c.row and c.file_ok for c in stored)
    assert report.unreadable == [], format_table(report)
    assert report.wrongly_stored == [], format_table(report)
    assert report.wrongly_refused == [], format_table(report)


def test_every_mutation_family_is_exercised(report) -> None:
    by_family = Counter(c.family for c in report.mutants)
    assert set(by_family) == set(FAMILIES)
    assert min(by_family.values()) >= 40
    refused_families = {c.family for c in report.mutants if c.outcome == REFUSED}
    assert refused_families == set(FAMILIES)


_DIGEST_OF_CASES = """
import hashlib, sys, tempfile
from pathlib import Path
from echo_agent.bench.fuzz_mutations import Mutator, make_seeds
seed = int(sys.argv[1])
digest = hashlib.sha256()
with tempfile.TemporaryDirectory() as folder:
    mutator = Mutator(make_seeds(Path(folder), seed), seed)
    for index in range(300):
        case = mutator.case(index)
        digest.update(repr((case.family, case.detail, case.syntax, case.sop_class,
                            case.sop_instance, case.expect)).encode() + case.data)
print(digest.hexdigest())
"""


def _digest_of_cases(seed: int, hash_seed: str) -> str:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    done = subprocess.run(
        [sys.executable, "-c", _DIGEST_OF_CASES, str(seed)],
        capture_output=True, text=True, timeout=300, check=True, env=env,
    )  # fmt: skip
    return done.stdout.strip()


def test_a_case_is_a_pure_function_of_seed_and_index() -> None:
    """Across processes (string hashing differs), so a reported case is replayed alone."""
    first = _digest_of_cases(SEED, "1")
    assert first == _digest_of_cases(SEED, "2")
    assert first != _digest_of_cases(SEED + 1, "1")


# --- what the fuzz found ---------------------------------------------------------------------


def _loop() -> tuple[Ids, bytes]:
    ids = Ids.new()
    return ids, encode_dataset(us_loop_dataset(ids, rows=8, columns=8, frames=2),
                               ExplicitVRLittleEndian)  # fmt: skip


def _inspect(ids: Ids, data: bytes, syntax: str = ExplicitVRLittleEndian):
    return inspect_dataset(data, syntax, UltrasoundMultiFrameImageStorage, ids.sop)


def _refusal(ids: Ids, data: bytes, syntax: str = ExplicitVRLittleEndian) -> tuple[int, str]:
    with pytest.raises(InvalidInstanceError) as caught:
        _inspect(ids, data, syntax)
    return caught.value.refusal.status, caught.value.refusal.reason


def _top(data: bytes, tag: int):
    return next(e for e in index_elements(data, False) if e.top_level and e.tag == tag)


@pytest.mark.parametrize(
    ("tag", "vr", "value"),
    [
        (0x00020010, b"UI", b"1.2.840.10008.1.2\x00"),  # a reader took it for the file's syntax
        (0x00020000, b"UL", b"\x00\x00\x00\x00"),
        (0x00000900, b"US", b"\x00\x00"),
    ],
)
def test_file_meta_and_command_elements_in_a_dataset_are_refused(
    tag: int, vr: bytes, value: bytes
) -> None:
    ids, data = _loop()
    got, reason = _refusal(ids, encode_element(tag, vr, value, False) + data)
    assert got == status.CANNOT_PARSE and "does not belong" in reason


def test_an_item_tag_after_the_pixel_data_is_refused() -> None:
    ids, data = _loop()
    _inspect(ids, data)  # the loop itself is fine
    got, _ = _refusal(ids, data + struct.pack("<HHI", 0xFFFE, 0xE000, 0))
    assert got == status.CANNOT_PARSE


@pytest.mark.parametrize(
    ("tag", "vr"),
    [(0x00280011, b"FD"), (0x00100010, b"FL"), (0x00181088, b"SL")],  # Columns, name, HR
)
def test_a_value_pydicom_cannot_decode_is_refused_without_quoting_it(tag: int, vr: bytes) -> None:
    ids = Ids.new()
    ds = us_loop_dataset(ids, rows=8, columns=8, frames=2, patient_name="Doe^Jane")
    ds.HeartRate = 72
    data = encode_dataset(ds, ExplicitVRLittleEndian)
    element = _top(data, tag)
    if element.length % 4 == 0:  # make the length fit no 4- or 8-byte value
        data = data[: element.start] + encode_element(
            tag, vr, data[element.value_at : element.stop] + b"  ", False
        ) + data[element.stop :]  # fmt: skip
    else:
        data = data[: element.start + 4] + vr + data[element.start + 6 :]
    got, reason = _refusal(ids, data)
    assert got == status.CANNOT_PARSE
    assert "cannot be decoded" in reason and "Doe" not in reason and "Jane" not in reason


def _nested(levels: int) -> bytes:
    """(0008,1140) in an item in (0008,1140) ... ``levels`` deep, every length defined."""
    inner = encode_element(0x00081155, b"UI", b"1.2.3.4\x00", False)
    for _ in range(levels):
        item = struct.pack("<HHI", 0xFFFE, 0xE000, len(inner)) + inner
        inner = encode_element(0x00081140, b"SQ", item, False)
    return inner


def _with_top_element(data: bytes, tag: int, raw: bytes) -> bytes:
    after = next(e for e in index_elements(data, False) if e.top_level and e.tag > tag)
    return data[: after.start] + raw + data[after.start :]


def test_sequences_nested_too_deep_with_defined_lengths_are_refused() -> None:
    ids, data = _loop()
    _inspect(ids, _with_top_element(data, 0x00081140, _nested(8)))
    got, reason = _refusal(ids, _with_top_element(data, 0x00081140, _nested(40)))
    assert got == status.CANNOT_PARSE and "nested deeper" in reason


@pytest.mark.filterwarnings("ignore:.*VR of IS:UserWarning", "ignore:.*for VR IS:UserWarning")
def test_numbers_beyond_the_is_range_are_dropped_or_refused() -> None:
    ids = Ids.new()
    ds = us_loop_dataset(ids, rows=8, columns=8, frames=2)
    ds.SeriesNumber = "99999999999999999999"  # a 0x0110 and a traceback at the insert before
    ds.InstanceNumber = "2147483648"
    header = _inspect(ids, encode_dataset(ds, ExplicitVRLittleEndian))
    assert header.series_number is None and header.instance_number is None
    ds.NumberOfFrames = "99999999999999999999"
    got, reason = _refusal(ids, encode_dataset(ds, ExplicitVRLittleEndian))
    assert got == status.DATASET_DOES_NOT_MATCH_SOP_CLASS and "NumberOfFrames" in reason


def test_pixel_data_that_is_neither_ob_nor_ow_is_refused() -> None:
    """UN of undefined length reads as a sequence: an RLE loop whose pixel data said UN was
    stored and could not be read back."""
    ids, data = _rle_loop([struct.pack("<16I", 1, 64, *([0] * 14)) + bytes(64)] * 2)
    pixel = _top(data, 0x7FE00010)
    _inspect(ids, data, contexts.RLE_LOSSLESS)
    for vr in (b"UN", b"OW"):
        changed = data[: pixel.start + 4] + vr + data[pixel.start + 6 :]
        if vr == b"OW":
            _inspect(ids, changed, contexts.RLE_LOSSLESS)
        else:
            got, reason = _refusal(ids, changed, contexts.RLE_LOSSLESS)
            assert got == status.CANNOT_PARSE and "not OB or OW" in reason


def _rle_loop(frames: list[bytes]) -> tuple[Ids, bytes]:
    ids = Ids.new()
    ds = us_loop_dataset(ids, rows=8, columns=8, frames=len(frames))
    ds.PixelData = fake_encapsulated(frames)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ids, encode_dataset(ds, ExplicitVRLittleEndian)


def test_rle_frames_must_carry_an_rle_header() -> None:
    header = struct.pack("<16I", 1, 64, *([0] * 14))  # one segment, right after the header
    ids, data = _rle_loop([header + b"\x3f" + bytes(64)] * 2)
    _inspect(ids, data, contexts.RLE_LOSSLESS)
    jpeg_like = b"\xff\xd8\xff\xe0" + bytes(80)
    for frames in ([jpeg_like] * 2, [struct.pack("<16I", 3, 64, 80, 96, *([0] * 12))] * 2):
        ids, data = _rle_loop(frames)
        got, reason = _refusal(ids, data, contexts.RLE_LOSSLESS)
        assert got == status.CANNOT_PARSE and "frame 1" in reason
