"""Shared helpers for DICOM tests: small instances in any syntax, real dcmtk and pynetdicom
peers, byte-level comparison of stored files, and a throwaway PKI for TLS.

Instances are made here with pydicom rather than taken from the phantom generator when a test
needs control over one detail (a syntax the phantom does not write, a broken header, a short
pixel data element).
"""

from __future__ import annotations

import contextlib
import io
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.presentation import build_context
from support import need_tool, require_or_skip

from echo_agent.bench.dcmtk import SHADOWED_BY_PYNETDICOM, dcmtk_path, find_dcmtk_tool

STORESCU = "storescu"
ECHOSCU = "echoscu"
STORESCP = "storescp"
PEER_AET = "PEERSCP"  # the AE title of the storescp peer tests export to
PREAMBLE = b"\x00" * 128 + b"DICM"

# dcmtk storescu option that proposes a file's own (compressed) syntax besides the uncompressed
STORESCU_PROPOSE = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}


def require_tool(name: str) -> str:
    """dcmtk's binary at its absolute path (``/usr/bin/storescu``, ``echo_agent.bench.dcmtk``),
    never pynetdicom's same-named script that comes first on PATH in the venv; other tools
    (openssl) from PATH."""
    if name in SHADOWED_BY_PYNETDICOM:
        try:
            return find_dcmtk_tool(name)
        except FileNotFoundError:
            require_or_skip(f"{dcmtk_path(name)} is not installed (apt-get install dcmtk)")
    return need_tool(name, "dcmtk")


# --- instances -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ids:
    """The UIDs of one test instance; fresh ones by default."""

    study: str
    series: str
    sop: str

    @staticmethod
    def new(study: str | None = None, series: str | None = None) -> Ids:
        return Ids(study or generate_uid(), series or generate_uid(), generate_uid())


def us_loop_dataset(
    ids: Ids,
    *,
    rows: int = 64,
    columns: int = 80,
    frames: int = 4,
    photometric: str = "MONOCHROME2",
    patient_name: str = "Test^Patient",
    patient_id: str = "PAT-1",
) -> Dataset:
    """An Ultrasound Multi-frame Image with native pixel data (a moving gradient)."""
    samples = 1 if photometric == "MONOCHROME2" else 3
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = UltrasoundMultiFrameImageStorage
    ds.SOPInstanceUID = ids.sop
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC-7"
    ds.Modality = "US"
    ds.ReferringPhysicianName = "Ref^Doc"
    ds.StudyDescription = "Echo"
    ds.SeriesDescription = "A4C"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19600501"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = ids.study
    ds.SeriesInstanceUID = ids.series
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063
    ds.FrameTime = 33.3
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    shape = (frames, rows, columns, samples) if samples == 3 else (frames, rows, columns)
    grid = np.indices(shape).sum(axis=0)
    ds.PixelData = (grid * 7 % 256).astype(np.uint8).tobytes()
    return ds


def with_meta(ds: Dataset, transfer_syntax: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta = meta
    return ds


def write_instance(path: Path, ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> Path:
    """Writes ``ds`` in ``transfer_syntax``; compressed syntaxes are encoded with pydicom (RLE,
    JPEG-LS, JPEG 2000) or Pillow (JPEG baseline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = with_meta(ds, ExplicitVRLittleEndian)
    if transfer_syntax == JPEGBaseline8Bit:
        _jpeg_baseline(ds)
    elif transfer_syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        ds.compress(transfer_syntax)
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.save_as(path, enforce_file_format=True)
    return path


def _jpeg_baseline(ds: Dataset) -> None:
    from PIL import Image

    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns, -1)
    encoded = []
    for frame in frames:
        image = Image.fromarray(frame.squeeze(-1) if frame.shape[-1] == 1 else frame)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=90, subsampling=1)  # 4:2:2, as YBR_FULL_422 says
        encoded.append(out.getvalue())
    if ds.SamplesPerPixel == 3:
        ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PixelData = encapsulate(encoded)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True


def fake_encapsulated(frames: Sequence[bytes]) -> bytes:
    """Encapsulated pixel data value (items + delimiter) around the given frame bytes."""
    return encapsulate(list(frames))


def encode_dataset(ds: Dataset, transfer_syntax: str) -> bytes:
    """The dataset encoded as it would travel in a C-STORE (no File Meta)."""
    implicit = transfer_syntax == ImplicitVRLittleEndian
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = implicit
    from pydicom.filewriter import write_dataset

    write_dataset(buffer, ds)
    return buffer.getvalue()


def write_raw_file(path: Path, sop_class: str, sop_instance: str, syntax: str, data: bytes) -> Path:
    """A file whose File Meta is valid and whose dataset is ``data``, whatever it holds."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = generate_uid()
    buffer = DicomBytesIO()
    buffer.write(PREAMBLE)
    write_file_meta_info(buffer, meta, enforce_standard=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue() + data)
    return path


def dataset_offset(file_bytes: bytes) -> int:
    """Where the dataset starts: after preamble, prefix and the File Meta group, whose length is
    the value of (0002,0000) File Meta Information Group Length (PS3.10 7.1)."""
    if file_bytes[128:132] != b"DICM":
        raise ValueError("not a DICOM file (no DICM prefix)")
    group, element, vr, _length = struct.unpack_from("<HH2sH", file_bytes, 132)
    if (group, element, vr) != (0x0002, 0x0000, b"UL"):
        raise ValueError("File Meta does not start with its group length")
    (group_length,) = struct.unpack_from("<I", file_bytes, 140)
    return 144 + group_length


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset of a DICOM file, without preamble and File Meta.

    Two files hold byte-identical instances when these bytes are equal: the File Meta is the
    writer's own (implementation UID, source AE), the dataset is what travelled.
    """
    data = path.read_bytes()
    return data[dataset_offset(data) :]


def file_transfer_syntax(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


# --- peers -----------------------------------------------------------------------------------


def storescu_args(
    host: str,
    port: int,
    files: Sequence[Path],
    *,
    calling_ae: str = "STORESCU",
    called_ae: str = "ECHOAGENT",
    syntax: str | None = None,
) -> list[str]:
    """A storescu command line proposing ``syntax`` (default: the first file's own).

    storescu stops at the first failed C-STORE with a non-zero exit status, and ``-v`` prints
    each response status ("Received Store Response (Error: ...)").
    """
    syntax = syntax or file_transfer_syntax(files[0])
    return [
        require_tool(STORESCU),
        "-aet",
        calling_ae,
        "-aec",
        called_ae,
        STORESCU_PROPOSE.get(syntax, "-xe"),
        "-R",
        "-v",
        host,
        str(port),
        *(str(f) for f in files),
    ]


def run_storescu(
    host: str, port: int, files: Sequence[Path], timeout_s: float = 120, **kwargs: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        storescu_args(host, port, files, **kwargs),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def run_echoscu(
    host: str, port: int, *, calling_ae: str = "ECHOSCU", called_ae: str = "ECHOAGENT"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool(ECHOSCU), "-aet", calling_ae, "-aec", called_ae, host, str(port)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def scu_ae(calling_ae: str = "PYSCU") -> AE:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = 10
    ae.dimse_timeout = 30
    ae.network_timeout = 10
    return ae


def send_files(
    host: str,
    port: int,
    files: Sequence[Path],
    *,
    calling_ae: str = "PYSCU",
    called_ae: str = "ECHOAGENT",
    raw: bool = True,
) -> list[int]:
    """Sends files with pynetdicom and returns each C-STORE status (-1: no response).

    ``raw`` sends the bytes after each file's File Meta unchanged (pynetdicom's chunked send),
    so broken datasets travel exactly as written.
    """
    pairs = []
    for path in files:
        meta = _read_meta(path)
        pairs.append((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
    ae = scu_ae(calling_ae)
    contexts = [build_context(sop, ts) for sop, ts in dict.fromkeys(pairs)]
    assoc = ae.associate(host, port, contexts=contexts, ae_title=called_ae)
    if not assoc.is_established:
        raise ConnectionError(f"association rejected or failed ({host}:{port})")
    statuses = []
    try:
        with _chunked_send(raw):
            for path in files:
                status = assoc.send_c_store(path)
                statuses.append(int(status.Status) if "Status" in status else -1)
    finally:
        assoc.release()
    return statuses


def send_raw(
    host: str,
    port: int,
    tmp_dir: Path,
    sop_class: str,
    sop_instance: str,
    syntax: str,
    data: bytes,
    **kwargs: str,
) -> int:
    """C-STOREs ``data`` as the dataset of ``sop_instance``; returns the status."""
    path = write_raw_file(
        tmp_dir / f"{sop_instance}.raw.dcm", sop_class, sop_instance, syntax, data
    )
    return send_files(host, port, [path], **kwargs)[0]


def _read_meta(path: Path) -> FileMetaDataset:
    from pydicom.filereader import read_file_meta_info

    return read_file_meta_info(path)


@contextlib.contextmanager
def _chunked_send(enabled: bool) -> Iterator[None]:
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = enabled
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def echo(
    host: str,
    port: int,
    *,
    calling_ae: str = "PYSCU",
    called_ae: str = "ECHOAGENT",
    tls: object = None,
) -> bool:
    """C-ECHO with pynetdicom; False when the association is rejected or fails."""
    ae = scu_ae(calling_ae)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate(host, port, ae_title=called_ae, tls_args=tls)  # type: ignore[arg-type]
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return "Status" in status and int(status.Status) == 0
    finally:
        assoc.release()


def free_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s} s")


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.05)


# --- TLS -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A throwaway CA with a server and a client certificate (PEM files)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_pki(folder: Path) -> Pki:
    """Creates the CA and two certificates with the openssl command line (no Python crypto)."""
    openssl = require_tool("openssl")
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=folder, check=True, capture_output=True, timeout=60)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    )
    ext = folder / "san.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
        )
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            f"{name}.pem",
        )
    return Pki(
        ca_cert=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
    )


@contextlib.contextmanager
def storescp(port: int, outdir: Path) -> Iterator[Path]:
    """dcmtk's storage SCP as the PACS the node exports to: AE ``PEER_AET``, every syntax it
    knows, what it receives written to ``outdir``."""
    outdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [require_tool(STORESCP), "-aet", PEER_AET, "+xa", "-od", str(outdir), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port("127.0.0.1", port)
        yield outdir
    finally:
        proc.terminate()
        proc.wait(timeout=10)
