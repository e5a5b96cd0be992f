"""The Storage SCP against real peers on loopback: dcmtk echoscu/storescu, pynetdicom SCUs.

Byte identity is checked on the dataset: the bytes after the File Meta group of the stored
file must equal those after the File Meta of the file that was sent (``dataset_bytes``). The
File Meta is the writer's own (implementation UID); the dataset is what travelled, so equal
bytes mean nothing was decoded, transcoded or re-encoded on the way in.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dicom_helpers import (
    Ids,
    dataset_bytes,
    echo,
    encode_dataset,
    fake_encapsulated,
    file_transfer_syntax,
    make_pki,
    require_tool,
    run_echoscu,
    run_storescu,
    scu_ae,
    send_files,
    send_raw,
    storescu_args,
    us_loop_dataset,
    wait_until,
    write_instance,
)
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    ComprehensiveSRStorage,
    EncapsulatedPDFStorage,
    EnhancedSRStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)

from pacs_agent.config import Config, DatabaseConfig, DicomConfig
from pacs_agent.db import make_engine, upgrade
from pacs_agent.db.models import Instance, Patient, Series, Study
from pacs_agent.dicom import StorageSCP, contexts, start_storage_scp, status
from pacs_agent.dicom.validate import InvalidInstanceError, inspect_dataset
from pacs_agent.startup import StartupError
from pacs_agent.store import INCOMING_DIR_NAME

HOST = "127.0.0.1"


@dataclass
class Node:
    """A running SCP with its own home, store and database."""

    scp: StorageSCP
    config: Config
    engine: sa.Engine

    @property
    def port(self) -> int:
        return self.scp.port

    def instances(self) -> list[Instance]:
        with sa.orm.Session(self.engine) as session:
            return list(session.scalars(sa.select(Instance).order_by(Instance.id)))

    def count(self, model: type) -> int:
        with sa.orm.Session(self.engine) as session:
            return int(session.scalar(sa.select(sa.func.count()).select_from(model)) or 0)

    def stored_files(self) -> list[Path]:
        root = self.config.store_path
        return sorted(p for p in root.rglob("*.dcm") if INCOMING_DIR_NAME not in p.parts)

    def partial_files(self) -> list[Path]:
        return sorted((self.config.store_path / INCOMING_DIR_NAME).iterdir())


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """Starts SCPs in this process on free ports; stops them after the test."""
    nodes: list[Node] = []

    def start(database_url: str | None = None, **dicom: Any) -> Node:
        home = tmp_path / f"home{len(nodes)}"
        url = database_url or f"sqlite:///{home / 'echo-agent.db'}"
        dicom.setdefault("min_free_disk_mb", 0)
        config = Config(
            home=str(home),
            dicom=DicomConfig(port=0, **dicom),
            database=DatabaseConfig(url=url),
        )
        upgrade(url)
        engine = make_engine(url)
        node = Node(start_storage_scp(config, engine), config, engine)
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        node.scp.shutdown(timeout_s=5)
        node.engine.dispose()


@pytest.fixture
def node(start_node: Callable[..., Node]) -> Node:
    return start_node()


def _good_file(tmp_path: Path, name: str = "good") -> Path:
    return write_instance(tmp_path / f"{name}.dcm", us_loop_dataset(Ids.new()))


def _assert_nothing_kept(node: Node) -> None:
    assert node.count(Instance) == 0
    assert node.stored_files() == []
    assert node.partial_files() == []


def _assert_still_serving(node: Node, tmp_path: Path) -> None:
    good = _good_file(tmp_path, f"after-{time.monotonic_ns()}")
    assert send_files(HOST, node.port, [good]) == [0]
    assert dataset_bytes(good) in {dataset_bytes(p) for p in node.stored_files()}


# --- C-ECHO and storing ----------------------------------------------------------------------


def test_echoscu_succeeds(node: Node) -> None:
    done = run_echoscu(HOST, node.port)
    assert done.returncode == 0, done.stderr


SYNTAX_CASES = [
    (ExplicitVRLittleEndian, "MONOCHROME2"),
    (ExplicitVRLittleEndian, "RGB"),
    (ImplicitVRLittleEndian, "MONOCHROME2"),
    (RLELossless, "RGB"),
    (JPEGBaseline8Bit, "RGB"),
    (JPEG2000Lossless, "MONOCHROME2"),
    (JPEGLSLossless, "MONOCHROME2"),
]


def test_storescu_instances_are_stored_byte_identical_in_every_syntax(
    node: Node, tmp_path: Path
) -> None:
    sent: dict[str, Path] = {}
    for syntax, photometric in SYNTAX_CASES:
        ds = us_loop_dataset(Ids.new(), photometric=photometric, frames=3)
        path = write_instance(tmp_path / f"{syntax}-{photometric}.dcm", ds, syntax)
        done = run_storescu(HOST, node.port, [path])
        assert done.returncode == 0, f"{syntax}: {done.stderr}"
        sent[str(ds.SOPInstanceUID)] = path

    rows = {row.sop_instance_uid: row for row in node.instances()}
    assert set(rows) == set(sent)
    for uid, original in sent.items():
        row = rows[uid]
        stored = node.config.store_path / row.file_path
        assert dataset_bytes(stored) == dataset_bytes(original), uid
        assert row.transfer_syntax_uid == file_transfer_syntax(original)
        assert file_transfer_syntax(stored) == row.transfer_syntax_uid
        assert row.sha256 == hashlib.sha256(stored.read_bytes()).hexdigest()
        assert row.file_size_bytes == stored.stat().st_size
        assert row.number_of_frames == 3
        assert row.calling_ae == "STORESCU"
        assert row.sop_class_uid == UltrasoundMultiFrameImageStorage
    assert node.partial_files() == []
    with sa.orm.Session(node.engine) as session:
        patient = session.scalars(sa.select(Patient)).one()
        assert (patient.patient_id, patient.name, patient.sex) == ("PAT-1", "Test^Patient", "F")
        study = session.scalars(sa.select(Study)).first()
        assert study is not None and study.status == "receiving"
        assert study.accession_number == "ACC-7"
        assert session.scalars(sa.select(Series)).first().modality == "US"  # type: ignore[union-attr]


def test_phantom_loops_are_stored_byte_identical(node: Node, phantom_studies: list[Path]) -> None:
    files = [p for p in phantom_studies if p.suffix == ".dcm"]
    by_syntax: dict[str, list[Path]] = {}
    photometric = set()
    for path in files:
        by_syntax.setdefault(file_transfer_syntax(path), []).append(path)
        photometric.add(str(dcmread(path, stop_before_pixels=True).PhotometricInterpretation))
    # the phantom's four encodings: JPEG baseline YBR, RLE RGB, explicit RGB and MONOCHROME2
    assert {JPEGBaseline8Bit, RLELossless, ExplicitVRLittleEndian} <= set(by_syntax)
    assert {"YBR_FULL_422", "RGB", "MONOCHROME2"} <= photometric
    for syntax, group in by_syntax.items():
        done = run_storescu(HOST, node.port, group)
        assert done.returncode == 0, f"{syntax}: {done.stderr}"

    stored = {row.sop_instance_uid: row for row in node.instances()}
    assert len(stored) == len(files)
    for path in files:
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        row = stored[uid]
        assert row.transfer_syntax_uid == file_transfer_syntax(path)
        assert dataset_bytes(node.config.store_path / row.file_path) == dataset_bytes(path)


ENCAPSULATED_FRAME_STARTS = {
    contexts.JPEG_BASELINE: b"\xff\xd8\xff\xe0",
    contexts.JPEG_EXTENDED: b"\xff\xd8\xff\xe0",
    contexts.JPEG_LOSSLESS: b"\xff\xd8\xff\xc3",
    contexts.JPEG_LOSSLESS_SV1: b"\xff\xd8\xff\xc3",
    contexts.JPEG_LS_LOSSLESS: b"\xff\xd8\xff\xf7",
    contexts.JPEG_LS_NEAR_LOSSLESS: b"\xff\xd8\xff\xf7",
    contexts.JPEG_2000_LOSSLESS: b"\xff\x4f\xff\x51",
    contexts.JPEG_2000: b"\xff\x4f\xff\x51",
    # one segment, starting right after the 64-byte RLE header (ingest checks the header)
    contexts.RLE_LOSSLESS: b"\x01\x00\x00\x00\x40\x00\x00\x00",
    # a JPEG XL SizeHeader of 64 x 80 (ISO/IEC 18181-1 D.2): ingest checks it against the header
    contexts.JPEG_XL_LOSSLESS: b"\xff\x0a\x8f\x01",
    contexts.JPEG_XL_JPEG_RECOMPRESSION: b"\xff\x0a\x8f\x01",
    contexts.JPEG_XL: b"\x00\x00\x00\x0cJXL \r\n\x87\n",
}


def _encapsulated_instance(
    syntax: str, frames: int, frames_present: int, ids: Ids | None = None
) -> tuple[Ids, bytes]:
    """A US loop whose encapsulated frames are stand-ins with the right start markers (the SCP
    stores what it gets and does not decode)."""
    ids = ids or Ids.new()
    ds = us_loop_dataset(ids, frames=frames)
    start = ENCAPSULATED_FRAME_STARTS[syntax]
    ds.PixelData = fake_encapsulated([start + bytes(60) for _ in range(frames_present)])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ids, encode_dataset(ds, ExplicitVRLittleEndian)


def test_every_transfer_syntax_is_negotiated_and_stored(node: Node, tmp_path: Path) -> None:
    sent = {}
    for syntax in contexts.ENCAPSULATED_TRANSFER_SYNTAXES:
        ids, data = _encapsulated_instance(syntax, frames=3, frames_present=3)
        result = send_raw(
            HOST, node.port, tmp_path, UltrasoundMultiFrameImageStorage, ids.sop, syntax, data
        )
        assert result == 0, contexts.transfer_syntax_name(syntax)
        sent[ids.sop] = (syntax, data)
    for row in node.instances():
        syntax, data = sent[row.sop_instance_uid]
        assert row.transfer_syntax_uid == syntax
        assert dataset_bytes(node.config.store_path / row.file_path) == data
    assert node.count(Instance) == len(contexts.ENCAPSULATED_TRANSFER_SYNTAXES)


def _document(sop_class: str, ids: Ids) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ids.sop
    ds.StudyInstanceUID = ids.study
    ds.SeriesInstanceUID = ids.series
    ds.PatientID = "PAT-1"
    ds.Modality = "SR" if "88" in sop_class else "DOC"
    if sop_class == EncapsulatedPDFStorage:
        ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
        ds.EncapsulatedDocument = b"%PDF-1.4 test\n"
    else:  # an SR needs its content tree (the SCP refuses one without)
        item = Dataset()
        item.RelationshipType = "CONTAINS"
        item.ValueType = "TEXT"
        item.TextValue = "test"
        ds.ValueType = "CONTAINER"
        ds.ContentSequence = [item]
    return ds


def test_other_echo_study_sop_classes_are_accepted(node: Node, tmp_path: Path) -> None:
    study = generate_uid()
    files = []
    for sop_class in (EnhancedSRStorage, ComprehensiveSRStorage, EncapsulatedPDFStorage):
        ds = _document(sop_class, Ids.new(study))
        files.append(write_instance(tmp_path / f"{sop_class}.dcm", ds))
    sc = us_loop_dataset(Ids.new(study), photometric="RGB", frames=2)
    sc.SOPClassUID = MultiFrameTrueColorSecondaryCaptureImageStorage
    files.append(write_instance(tmp_path / "sc-mf.dcm", sc))
    single = us_loop_dataset(Ids.new(study), frames=1)
    single.SOPClassUID = SecondaryCaptureImageStorage
    del single.NumberOfFrames
    files.append(write_instance(tmp_path / "sc.dcm", single))
    assert send_files(HOST, node.port, files) == [0] * len(files)
    assert node.count(Instance) == len(files)
    assert node.count(Study) == 1


# --- concurrency and duplicates --------------------------------------------------------------


def test_parallel_storescu_senders_store_every_instance_once(
    start_node: Callable[..., Node], database_url: str, tmp_path: Path
) -> None:
    node = start_node(database_url)
    study = generate_uid()
    batches = []
    for sender in range(5):
        batch = [
            write_instance(tmp_path / f"s{sender}" / f"{i}.dcm", us_loop_dataset(Ids.new(study)))
            for i in range(10)
        ]
        batches.append(batch)
    batches[1][:5] = batches[0][:5]  # the same five instances from two senders at once
    expected = {p for batch in batches for p in batch}
    processes = [
        subprocess.Popen(
            storescu_args(HOST, node.port, batch, calling_ae=f"SENDER{i}"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, batch in enumerate(batches)
    ]
    for process in processes:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err

    assert node.count(Instance) == len(expected) == 45
    assert len(node.stored_files()) == 45
    assert node.partial_files() == []
    assert node.count(Study) == 1
    stored = {dataset_bytes(p) for p in node.stored_files()}
    assert stored == {dataset_bytes(p) for p in expected}


def test_same_instance_from_several_associations_at_once_is_stored_once(
    start_node: Callable[..., Node], database_url: str, tmp_path: Path
) -> None:
    node = start_node(database_url)
    path = write_instance(
        tmp_path / "big.dcm", us_loop_dataset(Ids.new(), rows=256, columns=256, frames=30)
    )
    barrier = threading.Barrier(4)
    results: list[list[int]] = []

    def send() -> None:
        barrier.wait()
        results.append(send_files(HOST, node.port, [path]))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == [[0]] * 4
    assert node.count(Instance) == 1
    assert [dataset_bytes(p) for p in node.stored_files()] == [dataset_bytes(path)]
    assert node.partial_files() == []


def test_repeated_instance_is_acknowledged_without_a_second_copy(
    node: Node, tmp_path: Path
) -> None:
    path = _good_file(tmp_path)
    assert send_files(HOST, node.port, [path, path]) == [0, 0]
    assert run_storescu(HOST, node.port, [path]).returncode == 0
    assert node.count(Instance) == 1
    assert len(node.stored_files()) == 1


# --- bad input -------------------------------------------------------------------------------


def _native(ids: Ids, **kwargs: Any) -> Dataset:
    return us_loop_dataset(ids, **kwargs)


def _bad_non_dicom(ids: Ids) -> bytes:
    return b"this is a text file, not a DICOM dataset\n" * 50


def _bad_truncated_in_pixel_data(ids: Ids) -> bytes:
    data = encode_dataset(_native(ids), ExplicitVRLittleEndian)
    return data[: int(len(data) * 0.7)]


def _bad_truncated_in_header(ids: Ids) -> bytes:
    return encode_dataset(_native(ids), ExplicitVRLittleEndian)[:101]


def _bad_short_pixel_data(ids: Ids) -> bytes:
    ds = _native(ids, rows=64, columns=80, frames=4)
    ds.PixelData = ds.PixelData[: 64 * 80 * 3]  # three frames' worth for four frames
    return encode_dataset(ds, ExplicitVRLittleEndian)


def _bad_wrong_sop_class(ids: Ids) -> bytes:
    ds = _native(ids)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    return encode_dataset(ds, ExplicitVRLittleEndian)


def _bad_no_number_of_frames(ids: Ids) -> bytes:
    ds = _native(ids)
    del ds.NumberOfFrames
    return encode_dataset(ds, ExplicitVRLittleEndian)


def _bad_no_study_uid(ids: Ids) -> bytes:
    ds = _native(ids)
    del ds.StudyInstanceUID
    return encode_dataset(ds, ExplicitVRLittleEndian)


def _bad_implicit_sent_as_explicit(ids: Ids) -> bytes:
    return encode_dataset(_native(ids), ImplicitVRLittleEndian)


BAD_INPUT = {
    "non_dicom_bytes": (_bad_non_dicom, ExplicitVRLittleEndian, status.CANNOT_PARSE),
    "truncated_in_pixel_data": (
        _bad_truncated_in_pixel_data,
        ExplicitVRLittleEndian,
        status.PIXEL_DATA_INCOMPLETE,
    ),
    "truncated_in_header": (_bad_truncated_in_header, ExplicitVRLittleEndian, status.CANNOT_PARSE),
    "pixel_data_shorter_than_frames": (
        _bad_short_pixel_data,
        ExplicitVRLittleEndian,
        status.PIXEL_DATA_INCOMPLETE,
    ),
    "fewer_encapsulated_frames": (
        lambda ids: _encapsulated_instance(contexts.JPEG_BASELINE, 4, 2, ids)[1],
        JPEGBaseline8Bit,
        status.PIXEL_DATA_INCOMPLETE,
    ),
    "wrong_sop_class": (
        _bad_wrong_sop_class,
        ExplicitVRLittleEndian,
        status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
    ),
    "multiframe_without_number_of_frames": (
        _bad_no_number_of_frames,
        ExplicitVRLittleEndian,
        status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
    ),
    "no_study_uid": (
        _bad_no_study_uid,
        ExplicitVRLittleEndian,
        status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
    ),
    "implicit_bytes_under_explicit_syntax": (
        _bad_implicit_sent_as_explicit,
        ExplicitVRLittleEndian,
        status.CANNOT_PARSE,
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_refused_with_its_status_and_nothing_kept(
    node: Node, tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    build, syntax, expected = BAD_INPUT[case]
    ids = Ids.new()
    with caplog.at_level("WARNING", logger="echo_agent.dicom"):
        result = send_raw(
            HOST, node.port, tmp_path, UltrasoundMultiFrameImageStorage, ids.sop, syntax, build(ids)
        )
    assert result == expected, f"{case}: 0x{result:04X}"
    _assert_nothing_kept(node)
    refusals = [r for r in caplog.records if r.name == "echo_agent.dicom" and ids.sop in r.message]
    assert refusals, "the refusal is logged with the SOP instance UID"
    assert all("Test^Patient" not in r.getMessage() for r in caplog.records)
    _assert_still_serving(node, tmp_path)


def test_bad_file_sent_by_storescu_fails_and_nothing_is_kept(node: Node, tmp_path: Path) -> None:
    ids = Ids.new()
    bad = us_loop_dataset(ids)
    del bad.NumberOfFrames
    path = write_instance(tmp_path / "no-frames.dcm", bad)
    done = run_storescu(HOST, node.port, [path])
    assert done.returncode != 0
    assert "Error: DataSetDoesNotMatchSOPClass" in done.stderr
    _assert_nothing_kept(node)
    _assert_still_serving(node, tmp_path)


def _rejections(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if "rejected" in r.getMessage())


def test_unknown_calling_ae_is_rejected_at_association(
    start_node: Callable[..., Node], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = start_node(allowed_calling_aes=["PACS1", "CART2"])
    with caplog.at_level("WARNING", logger="echo_agent.dicom"):
        assert not echo(HOST, node.port, calling_ae="INTRUDER")
        wait_until(lambda: "INTRUDER" in _rejections(caplog))
    assert "not in dicom.allowed_calling_aes" in _rejections(caplog)
    assert run_echoscu(HOST, node.port, calling_ae="INTRUDER").returncode != 0
    path = _good_file(tmp_path)
    with pytest.raises(ConnectionError):
        send_files(HOST, node.port, [path], calling_ae="INTRUDER")
    _assert_nothing_kept(node)
    assert echo(HOST, node.port, calling_ae="PACS1")
    assert send_files(HOST, node.port, [path], calling_ae="CART2") == [0]
    assert node.instances()[0].calling_ae == "CART2"


def test_wrong_called_ae_is_rejected(
    start_node: Callable[..., Node], caplog: pytest.LogCaptureFixture
) -> None:
    checking = start_node()
    with caplog.at_level("WARNING", logger="echo_agent.dicom"):
        assert not echo(HOST, checking.port, called_ae="OTHERNODE")
        wait_until(lambda: "OTHERNODE" in _rejections(caplog))
    assert run_echoscu(HOST, checking.port, called_ae="OTHERNODE").returncode != 0
    assert echo(HOST, checking.port, called_ae="ECHOAGENT")
    lenient = start_node(check_called_ae=False)
    assert echo(HOST, lenient.port, called_ae="OTHERNODE")


def test_full_disk_is_refused_as_out_of_resources(
    start_node: Callable[..., Node], tmp_path: Path
) -> None:
    free_mb = shutil.disk_usage(tmp_path).free // (1024 * 1024)
    node = start_node(min_free_disk_mb=free_mb + 10_000)
    path = _good_file(tmp_path)
    assert send_files(HOST, node.port, [path]) == [status.OUT_OF_RESOURCES]
    _assert_nothing_kept(node)
    assert echo(HOST, node.port)


# --- TLS and limits --------------------------------------------------------------------------


def _client_tls(pki: Any, with_cert: bool) -> tuple[ssl.SSLContext, str]:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca_cert))
    if with_cert:
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return context, "localhost"


def test_tls_needs_a_client_certificate(start_node: Callable[..., Node], tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    node = start_node(
        tls_cert_file=str(pki.server_cert),
        tls_key_file=str(pki.server_key),
        tls_ca_file=str(pki.ca_cert),
    )
    assert echo(HOST, node.port, tls=_client_tls(pki, with_cert=True))
    assert not echo(HOST, node.port, tls=_client_tls(pki, with_cert=False))
    assert not echo(HOST, node.port)  # plain TCP
    # a client that connects and never handshakes does not block others
    with socket.create_connection((HOST, node.port)):
        assert echo(HOST, node.port, tls=_client_tls(pki, with_cert=True))
    path = _good_file(tmp_path)
    ae = scu_ae()
    ae.add_requested_context(UltrasoundMultiFrameImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate(HOST, node.port, ae_title="ECHOAGENT", tls_args=_client_tls(pki, True))
    assert assoc.is_established
    assert int(assoc.send_c_store(path).Status) == 0
    assoc.release()
    assert node.count(Instance) == 1


def test_association_beyond_max_associations_is_rejected(
    start_node: Callable[..., Node], caplog: pytest.LogCaptureFixture
) -> None:
    node = start_node(max_associations=2)
    ae = scu_ae()
    ae.add_requested_context("1.2.840.10008.1.1")
    open_ones = [ae.associate(HOST, node.port, ae_title="ECHOAGENT") for _ in range(2)]
    assert all(a.is_established for a in open_ones)
    with caplog.at_level("WARNING", logger="echo_agent.dicom"):
        extra = ae.associate(HOST, node.port, ae_title="ECHOAGENT")
        assert extra.is_rejected
        wait_until(lambda: "max_associations (2) reached" in _rejections(caplog))
    open_ones[0].release()
    wait_until(lambda: node.scp.active_associations() < 2)
    again = ae.associate(HOST, node.port, ae_title="ECHOAGENT")
    assert again.is_established
    again.release()
    open_ones[1].release()


def test_shutdown_stops_listening_and_aborts_idle_associations(
    start_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = start_node()
    ae = scu_ae()
    ae.add_requested_context("1.2.840.10008.1.1")
    idle = ae.associate(HOST, node.port, ae_title="ECHOAGENT")
    assert idle.is_established
    started = time.monotonic()
    node.scp.shutdown(timeout_s=0.5)
    assert time.monotonic() - started < 10
    wait_until(lambda: not idle.is_established)
    assert idle.is_aborted
    with pytest.raises(OSError):
        socket.create_connection((HOST, node.port), timeout=1).close()
    assert node.partial_files() == []


def test_shutdown_lets_a_sending_association_finish(
    start_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = start_node()
    files = [
        write_instance(
            tmp_path / f"{i}.dcm", us_loop_dataset(Ids.new(), rows=400, columns=400, frames=20)
        )
        for i in range(6)
    ]
    sender = subprocess.Popen(
        storescu_args(HOST, node.port, files), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    wait_until(lambda: node.scp.active_associations() > 0 or sender.poll() is not None)
    node.scp.shutdown(timeout_s=60)
    _, err = sender.communicate(timeout=60)
    assert sender.returncode == 0, err
    assert node.count(Instance) == len(files)
    assert node.partial_files() == []


def test_port_in_use_is_a_startup_error(start_node: Callable[..., Node], tmp_path: Path) -> None:
    node = start_node()
    config = Config(home=str(tmp_path / "other"), dicom=DicomConfig(port=node.port))
    upgrade(config.database_url)
    engine = make_engine(config.database_url)
    try:
        with pytest.raises(StartupError, match="already in use"):
            start_storage_scp(config, engine)
    finally:
        engine.dispose()


def test_echoscu_is_installed() -> None:
    require_tool("echoscu")
    require_tool("storescu")


# --- validation without the network ----------------------------------------------------------


def _inspect(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> Any:
    return inspect_dataset(
        encode_dataset(ds, syntax), syntax, str(ds.SOPClassUID), str(ds.SOPInstanceUID)
    )


def test_validation_reads_the_header_without_the_pixel_data() -> None:
    ids = Ids.new()
    header = _inspect(us_loop_dataset(ids, frames=5))
    assert (header.study_instance_uid, header.series_instance_uid) == (ids.study, ids.series)
    assert header.number_of_frames == 5
    assert header.pixel_data is not None and not header.pixel_data.encapsulated
    assert "Test^Patient" not in repr(header)  # identifying fields stay out of logs


def test_validation_walks_nested_undefined_length_sequences_in_implicit_vr() -> None:
    ds = us_loop_dataset(Ids.new())
    region = Dataset()
    region.RegionSpatialFormat = 1
    region.PhysicalDeltaX = 0.05
    ds.SequenceOfUltrasoundRegions = [region, region]
    ds["SequenceOfUltrasoundRegions"].is_undefined_length = True
    header = _inspect(ds, ImplicitVRLittleEndian)
    assert header.number_of_frames == 4


def test_validation_counts_native_ybr_full_422_at_two_samples_per_pixel() -> None:
    ds = us_loop_dataset(Ids.new(), rows=4, columns=4, frames=2, photometric="RGB")
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PixelData = bytes(4 * 4 * 2 * 2)
    assert _inspect(ds).number_of_frames == 2


def test_validation_refuses_an_offset_table_shorter_than_the_frames() -> None:
    ids = Ids.new()
    ds = us_loop_dataset(ids, frames=3)
    frames = [b"\xff\xd8\xff\xe0" + bytes(60)] * 3
    ds.PixelData = _with_offset_table(frames, entries=2)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    with pytest.raises(InvalidInstanceError) as caught:
        _inspect(ds, JPEGBaseline8Bit)
    assert caught.value.refusal.status == status.PIXEL_DATA_INCOMPLETE
    assert "Offset Table" in caught.value.refusal.reason


def _with_offset_table(frames: list[bytes], entries: int) -> bytes:
    import struct

    def item(value: bytes) -> bytes:
        return struct.pack("<HHI", 0xFFFE, 0xE000, len(value)) + value

    table = b"".join(struct.pack("<I", 0) for _ in range(entries))
    # no Sequence Delimitation Item: pydicom writes it after an undefined-length value, and a
    # second one would stand at the top level, which ingest refuses (bench fuzz)
    return item(table) + b"".join(item(f) for f in frames)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_validation_refuses_a_uid_that_is_not_a_uid() -> None:
    ds = us_loop_dataset(Ids.new())
    ds.SeriesInstanceUID = "../../etc"
    with pytest.raises(InvalidInstanceError) as caught:
        _inspect(ds)
    assert caught.value.refusal.status == status.DATASET_DOES_NOT_MATCH_SOP_CLASS


def test_storage_contexts_cover_the_echo_study() -> None:
    supported = {cx.abstract_syntax: cx.transfer_syntax for cx in contexts.storage_scp_contexts()}
    assert set(contexts.ENCAPSULATED_TRANSFER_SYNTAXES) <= set(
        supported[UltrasoundMultiFrameImageStorage]
    )
    assert contexts.VERIFICATION_SOP_CLASS in supported
    for uid in (EnhancedSRStorage, ComprehensiveSRStorage, EncapsulatedPDFStorage):
        assert uid in supported
    with pytest.raises(ValueError, match="128"):
        contexts.scu_contexts((generate_uid(), ExplicitVRLittleEndian) for _ in range(129))


def test_ingest_bench_runs_and_reports_both_receivers(tmp_path: Path) -> None:
    require_tool("storescp")
    from echo_agent.bench.ingest import LoopSpec, format_table, run_ingest_bench

    loops = (
        LoopSpec("rgb", ExplicitVRLittleEndian, 120, 160, 10, "RGB"),
        LoopSpec("jpeg", JPEGBaseline8Bit, 120, 160, 10, "YBR_FULL_422"),
    )
    result = run_ingest_bench(tmp_path, loops=loops, phantom_studies=0, repeats=1)
    assert result.node.files == result.storescp.files == 2
    assert result.node.mb_per_s > 0 and result.storescp.mb_per_s > 0
    table = format_table(result)
    assert "echo-agent node" in table and "dcmtk storescp" in table and "node / storescp" in table
