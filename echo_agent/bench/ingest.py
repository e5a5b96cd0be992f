"""``echo-agent bench ingest``: how fast the node takes in loops, next to dcmtk's storescp.

The same files go, with the same sender (dcmtk ``storescu``, proposing each file's own transfer
syntax so nothing is transcoded), once to the node's Storage SCP and once to ``storescp`` in
bit-preserving mode, both on loopback. The node does more per instance than storescp (it
validates, fsyncs the file and its folder, and commits a database row before it answers), so
the figure to watch is the ratio; the goal is at least half of storescp's throughput.
"""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from echo_agent.bench.dcmtk import find_dcmtk_tool
from pacs_agent.config import Config, DatabaseConfig, DicomConfig
from pacs_agent.db import make_engine, upgrade
from pacs_agent.dicom import contexts
from pacs_agent.dicom.scp import start_storage_scp

BYTES_PER_MB = 1_000_000
# dcmtk storescu flag that proposes a syntax (and the uncompressed ones) without transcoding
STORESCU_PROPOSE = {
    contexts.EXPLICIT_VR_LITTLE_ENDIAN: "-xe",
    contexts.IMPLICIT_VR_LITTLE_ENDIAN: "-xi",
    contexts.JPEG_BASELINE: "-xy",
    contexts.RLE_LOSSLESS: "-xr",
}
SEND_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class LoopSpec:
    """One synthetic loop of the bench set (sizes of a typical cart export)."""

    name: str
    transfer_syntax_uid: str
    rows: int
    columns: int
    frames: int
    photometric: str  # RGB (native) or YBR_FULL_422 (JPEG)


DEFAULT_LOOPS: tuple[LoopSpec, ...] = (
    LoopSpec("large_rgb", contexts.EXPLICIT_VR_LITTLE_ENDIAN, 600, 800, 60, "RGB"),
    LoopSpec("large_rgb_2", contexts.EXPLICIT_VR_LITTLE_ENDIAN, 600, 800, 60, "RGB"),
    LoopSpec("mono", contexts.EXPLICIT_VR_LITTLE_ENDIAN, 600, 800, 90, "MONOCHROME2"),
    LoopSpec("jpeg_1", contexts.JPEG_BASELINE, 600, 800, 60, "YBR_FULL_422"),
    LoopSpec("jpeg_2", contexts.JPEG_BASELINE, 600, 800, 60, "YBR_FULL_422"),
)


@dataclass(frozen=True)
class TargetResult:
    """One receiver's best run: ``seconds`` is the wall time of all storescu runs together."""

    name: str
    files: int
    megabytes: float
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.megabytes / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class BenchResult:
    node: TargetResult
    storescp: TargetResult
    repeats: int
    phantom_files: int

    @property
    def ratio(self) -> float:
        """Node throughput over storescp throughput (1.0: as fast; goal: at least 0.5)."""
        return self.node.mb_per_s / self.storescp.mb_per_s


def run_ingest_bench(
    workdir: Path,
    *,
    loops: Sequence[LoopSpec] = DEFAULT_LOOPS,
    phantom_studies: int = 2,
    repeats: int = 3,
    seed: int = 7,
    one_buffer_pdu_reads: bool = True,
) -> BenchResult:
    """Writes the bench files under ``workdir``, sends them to both receivers ``repeats``
    times (a fresh node home and storescp folder each time, so nothing is a duplicate), and
    returns the best time of each. Needs dcmtk's ``storescu`` and ``storescp`` on PATH.
    ``one_buffer_pdu_reads`` is the node's ``dicom.one_buffer_pdu_reads``.
    """
    for tool in ("storescu", "storescp"):
        find_dcmtk_tool(tool)  # before writing any file, not after
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    workdir = Path(workdir)
    input_dir = workdir / "input"
    files = [
        write_loop(input_dir / f"{spec.name}.dcm", spec, seed + i) for i, spec in enumerate(loops)
    ]
    phantoms = _phantom_files(input_dir / "phantom", phantom_studies, seed)
    files.extend(phantoms)
    groups = _group_by_syntax(files)
    megabytes = sum(f.stat().st_size for f in files) / BYTES_PER_MB

    node_times: list[float] = []
    scp_times: list[float] = []
    for run in range(repeats):
        node_times.append(_time_node(workdir / f"node-{run}", groups, one_buffer_pdu_reads))
        scp_times.append(_time_storescp(workdir / f"storescp-{run}", groups))
        shutil.rmtree(workdir / f"node-{run}", ignore_errors=True)
        shutil.rmtree(workdir / f"storescp-{run}", ignore_errors=True)
    return BenchResult(
        node=TargetResult("echo-agent node", len(files), megabytes, min(node_times)),
        storescp=TargetResult("dcmtk storescp", len(files), megabytes, min(scp_times)),
        repeats=repeats,
        phantom_files=len(phantoms),
    )


def format_table(result: BenchResult) -> str:
    """A markdown table of both receivers and the ratio."""
    lines = [
        "| receiver | files | MB | seconds | MB/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for target in (result.node, result.storescp):
        lines.append(
            f"| {target.name} | {target.files} | {target.megabytes:.1f} | "
            f"{target.seconds:.2f} | {target.mb_per_s:.1f} |"
        )
    verdict = "meets" if result.ratio >= 0.5 else "misses"
    lines.append("")
    lines.append(
        f"node / storescp = {result.ratio:.2f} ({verdict} the goal of 0.5; best of "
        f"{result.repeats} runs, {result.phantom_files} phantom files included)"
    )
    return "\n".join(lines)


# --- the files -------------------------------------------------------------------------------


def write_loop(path: Path, spec: LoopSpec, seed: int) -> Path:
    """A synthetic Ultrasound Multi-frame loop: moving speckle over a gradient, like B-mode."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import generate_uid

    rng = np.random.default_rng(seed)
    samples = 1 if spec.photometric == "MONOCHROME2" else 3
    ds = Dataset()
    ds.SOPClassUID = contexts.US_MULTIFRAME
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["echo-agent-bench", spec.name, str(seed)])
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["echo-agent-bench", "study", str(seed)])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["echo-agent-bench", spec.name, "series"])
    ds.Modality = "US"
    ds.PatientID = "BENCH"
    ds.PatientName = "Bench^Phantom"
    ds.StudyDate = "20240101"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = spec.rows, spec.columns
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = spec.photometric
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.NumberOfFrames = spec.frames
    ds.FrameIncrementPointer = 0x00181063
    ds.FrameTime = 20.0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    base = np.linspace(0, 160, spec.columns, dtype=np.float32)[None, :]
    frames = []
    for index in range(spec.frames):
        speckle = rng.gamma(2.0, 20.0, size=(spec.rows, spec.columns)).astype(np.float32)
        frame = np.clip(base + speckle + 10 * np.sin(index / 5), 0, 255).astype(np.uint8)
        frames.append(np.repeat(frame[..., None], samples, axis=2) if samples == 3 else frame)
    if spec.transfer_syntax_uid == contexts.JPEG_BASELINE:
        ds.PixelData = encapsulate([_jpeg(frame) for frame in frames])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = np.stack(frames).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = spec.transfer_syntax_uid
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _jpeg(frame: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(frame).save(out, format="JPEG", quality=90, subsampling=1)  # 4:2:2
    return out.getvalue()


def _phantom_files(folder: Path, studies: int, seed: int) -> list[Path]:
    """The phantom generator's loops, when it is installed (it is part of the same project)."""
    if studies < 1:
        return []
    from inference.phantom import generate_phantoms

    return [p for p in generate_phantoms(folder, studies, seed, fmt="dicom") if p.suffix == ".dcm"]


def _group_by_syntax(files: Sequence[Path]) -> dict[str, list[Path]]:
    from pydicom import dcmread

    groups: dict[str, list[Path]] = {}
    for path in files:
        syntax = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        if syntax not in STORESCU_PROPOSE:
            raise ValueError(f"{path.name}: no storescu option proposes {syntax}")
        groups.setdefault(syntax, []).append(path)
    return groups


# --- the receivers ---------------------------------------------------------------------------


def _time_node(
    home: Path, groups: dict[str, list[Path]], one_buffer_pdu_reads: bool = True
) -> float:
    port = _free_port()
    dicom = DicomConfig(port=port, min_free_disk_mb=0, one_buffer_pdu_reads=one_buffer_pdu_reads)
    config = Config(
        home=str(home),
        dicom=dicom,
        database=DatabaseConfig(),
    )
    upgrade(config.database_url)
    engine = make_engine(config.database_url)
    scp = start_storage_scp(config, engine)
    try:
        return _send_all(port, "ECHOAGENT", groups)
    finally:
        scp.shutdown(timeout_s=10)
        engine.dispose()


def _time_storescp(folder: Path, groups: dict[str, list[Path]]) -> float:
    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    command = [find_dcmtk_tool("storescp"), "-aet", "STORESCP", "-od", str(folder), "+xa", "+B"]
    command += ["-pdu", "131072", str(port)]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdout=log, stderr=log)
        try:
            _wait_for_port(port)
            return _send_all(port, "STORESCP", groups)
        finally:
            process.terminate()
            process.wait(timeout=10)


def _send_all(port: int, called_ae: str, groups: dict[str, list[Path]]) -> float:
    started = time.perf_counter()
    storescu = find_dcmtk_tool("storescu")
    for syntax, files in groups.items():
        command = [storescu, "-aet", "BENCH", "-aec", called_ae, STORESCU_PROPOSE[syntax], "-R"]
        command += ["127.0.0.1", str(port), *(str(f) for f in files)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=SEND_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(f"storescu to {called_ae} failed: {done.stderr.strip()[-500:]}")
    return time.perf_counter() - started


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"storescp did not listen on port {port} within {timeout_s} s")
