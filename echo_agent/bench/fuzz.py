"""``echo-agent bench fuzz``: malformed DICOM sent to the node's listener, and what it leaves.

The cases come from ``echo_agent.bench.fuzz_mutations``: small valid phantom objects mutated
with a seeded RNG (lengths, VRs, sequences, fragments, UIDs, pixel sizes, transfer syntaxes),
every ``GOOD_EVERY``-th case an unmodified instance. Each goes by C-STORE, its bytes unchanged,
over a real pynetdicom association to the node's DICOM listener, which runs in a process of its
own on loopback with its own SQLite database and store. After every case the listener must
still run and answer C-ECHO, a refused instance must have got a failure status and left no row
and no file, a stored one must have its row and its file byte for byte as sent, and nothing may
wait in ``.incoming``. At the end every file in the store has its row and every row its file, no
``.partial`` file is left anywhere, and every stored object is read back whole by pydicom.

A case the client could not even send (pynetdicom refused the request, say for a presentation
context the node does not offer) is counted as "not sent", never as a pass. Case ``i`` of a run
with seed ``s`` is ``fuzz_mutations.mutant_for(seeds, s, i)``, so a reported case is replayed
alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom import association as pynetdicom_association
from pynetdicom.association import Association
from pynetdicom.status import code_to_category

from echo_agent.bench.fuzz_mutations import (
    ACCEPT,
    DEFAULT_SEED,
    FAMILIES,
    REFUSE,
    Mutant,
    Mutator,
    make_seeds,
)
from pacs_agent.dicom import contexts

DEFAULT_CASES = 5000
# C-STOREs per association before it is released and a new one opened
STORES_PER_ASSOCIATION = 25
NODE_START_TIMEOUT_S = 60.0
NODE_STOP_TIMEOUT_S = 15.0
# client timeouts: a node that stops answering ends the case, not the run
ACSE_TIMEOUT_S = 10.0
DIMSE_TIMEOUT_S = 20.0
NETWORK_TIMEOUT_S = 20.0
CALLING_AE = "FUZZSCU"
CALLED_AE = "ECHOAGENT"
READY_MARKER = "FUZZ-LISTENER-READY"
BYTES_PER_MB = 1_000_000

STORED = "stored"
REFUSED = "refused"
WARNING = "warning"
NOT_SENT = "not sent"
NO_RESPONSE = "no response"


# --- the node under test ---------------------------------------------------------------------


class FuzzNode:
    """The node's DICOM listener (``start_storage_scp``, as ``echo-agent serve`` runs it) in a
    process of its own, with its own home, SQLite database and store: a crash shows as an exit,
    not as a failure of the process that sends."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.log_path = home / "listener.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.restarts = 0
        self.peak_rss_mb = 0.0

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "echo_agent.bench.fuzz", "--listen", str(self.home)],
                stdout=subprocess.PIPE,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.port = self._read_port(self._process)

    def _read_port(self, process: subprocess.Popen[bytes]) -> int:
        assert process.stdout is not None
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        line = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([process.stdout], [], [], 0.2)
            if ready:
                line = process.stdout.readline()
                if line.startswith(READY_MARKER.encode()):
                    return int(line.split()[1])
            if process.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"the fuzz listener did not start: see {self.log_path}")

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _note_peak_rss(self) -> None:
        """The listener's peak resident memory so far (VmHWM, Linux), kept over restarts."""
        if self._process is None:
            return
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{self._process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    kib = int(line.split()[1])
                    self.peak_rss_mb = max(self.peak_rss_mb, kib * 1024 / BYTES_PER_MB)

    def restart(self) -> None:
        self.stop()
        self.restarts += 1
        self.start()

    def stop(self) -> None:
        self._note_peak_rss()
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=NODE_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()

    @property
    def store(self) -> Path:
        return self.home / "store"

    def database_url(self) -> str:
        return f"sqlite:///{self.home / 'echo-agent.db'}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> FuzzNode:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _listen(home: Path) -> int:
    """The child: the listener on a free loopback port until SIGTERM."""
    from pacs_agent.config import Config, DatabaseConfig, DicomConfig
    from pacs_agent.db import make_engine, upgrade
    from pacs_agent.dicom.scp import start_storage_scp
    from pacs_agent.logs import configure_logging

    configure_logging("INFO")
    config = Config(
        home=str(home),
        dicom=dataclasses.replace(DicomConfig(), host="127.0.0.1", port=0, min_free_disk_mb=0),
        database=DatabaseConfig(),
    )
    upgrade(config.database_url)
    engine = make_engine(config.database_url)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    parent = os.getppid()
    scp = start_storage_scp(config, engine)
    print(f"{READY_MARKER} {scp.port}", flush=True)
    try:
        # until SIGTERM, or until the sender is gone (killed), so no listener is left behind
        while not stop.wait(0.5) and os.getppid() == parent:
            continue
    finally:
        scp.shutdown(timeout_s=5)
        engine.dispose()
    return 0


# --- sending ---------------------------------------------------------------------------------


class _Sender:
    """pynetdicom associations to the node: raw bytes by C-STORE, C-ECHO after each."""

    def __init__(self, sop_classes: Sequence[str], syntaxes: Sequence[str]) -> None:
        self._ae = AE(ae_title=CALLING_AE)
        self._ae.acse_timeout = ACSE_TIMEOUT_S
        self._ae.dimse_timeout = DIMSE_TIMEOUT_S
        self._ae.network_timeout = NETWORK_TIMEOUT_S
        self._ae.add_requested_context(contexts.VERIFICATION_SOP_CLASS)
        for sop_class in sop_classes:
            for syntax in syntaxes:
                self._ae.add_requested_context(sop_class, syntax)
        self._assoc: Association | None = None
        self._stores = 0
        self.port = 0

    def _association(self) -> Association | None:
        """The association in use, or a new one after STORES_PER_ASSOCIATION C-STOREs or
        when the last one ended; None when the node does not accept one."""
        assoc = self._assoc
        if assoc is not None and assoc.is_established:
            if self._stores < STORES_PER_ASSOCIATION:
                return assoc
            self.release()
        self._assoc = self._ae.associate("127.0.0.1", self.port, ae_title=CALLED_AE)
        self._stores = 0
        return self._assoc if self._assoc.is_established else None

    def store(self, path: Path) -> tuple[str, int | None, str]:
        """(outcome, status, note): NOT_SENT when pynetdicom would not send it."""
        assoc = self._association()
        if assoc is None:
            return NO_RESPONSE, None, "association not established"
        self._stores += 1
        try:
            response = assoc.send_c_store(path)
        except (ValueError, AttributeError, TypeError, KeyError) as exc:
            return NOT_SENT, None, f"{type(exc).__name__}: {str(exc)[:120]}"
        if "Status" not in response:
            return NO_RESPONSE, None, "no C-STORE response"
        status = int(response.Status)
        category = code_to_category(status)
        if category == "Success":
            return STORED, status, ""
        comment = str(response.get("ErrorComment", "") or "")
        return (WARNING if category == "Warning" else REFUSED), status, comment

    def echo(self) -> tuple[bool, str]:
        """C-ECHO on the association in use and, when that fails, once more on a new one:
        the node may end an association, but it must go on taking new ones and answering.
        Returns (answered, why the first try failed: '' when it did not)."""
        whys = []
        for _ in range(2):
            started = time.perf_counter()
            assoc = self._association()
            if assoc is None:
                whys.append("no association accepted")
            else:
                response = assoc.send_c_echo()
                if "Status" in response and int(response.Status) == 0:
                    return True, "; ".join(whys)
                status = int(response.Status) if "Status" in response else None
                whys.append(
                    f"C-ECHO status 0x{status:04X}" if status is not None else "no C-ECHO response"
                )
            whys[-1] += f" after {time.perf_counter() - started:.1f} s"
            self.release()
        return False, "; ".join(whys)

    def release(self) -> None:
        assoc, self._assoc = self._assoc, None
        if assoc is not None and assoc.is_established:
            assoc.release()
        elif assoc is not None and assoc.is_alive():
            assoc.abort()

    def shutdown(self) -> None:
        self.release()
        self._ae.shutdown()


# File Meta and dataset offset of each file written for sending (see _raw_send)
_SPLITS: dict[Path, tuple[FileMetaDataset, int]] = {}


@contextlib.contextmanager
def _raw_send() -> Iterator[None]:
    """pynetdicom sends a file's bytes after its File Meta unchanged (a process-wide switch).

    pynetdicom finds where the dataset starts by reading group 0002 elements until another
    group begins, so a dataset that itself starts with group 0002 elements (one of the
    mutations) would lose them on the way. Here the split is the one the file was written
    with, as its (0002,0000) group length says: the bytes that travel are the mutant's.
    """

    def split(path: Path) -> tuple[FileMetaDataset, int]:
        return _SPLITS[Path(path)]

    previous = (
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET,
        pynetdicom_association.split_dataset,
    )
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    pynetdicom_association.split_dataset = split  # type: ignore[assignment]
    try:
        yield
    finally:
        (
            pynetdicom_config.STORE_SEND_CHUNKED_DATASET,
            pynetdicom_association.split_dataset,
        ) = previous
        _SPLITS.clear()


def _write_part10(path: Path, mutant: Mutant) -> None:
    """A file whose File Meta names the request's UIDs and syntax, and whose dataset is the
    mutant's bytes, whatever they hold."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = mutant.sop_class
    meta.MediaStorageSOPInstanceUID = mutant.sop_instance
    meta.TransferSyntaxUID = mutant.syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    buffer = DicomBytesIO()
    buffer.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buffer, meta, enforce_standard=True)
    head = buffer.getvalue()
    path.write_bytes(head + mutant.data)
    _SPLITS[path] = (meta, len(head))


# --- the run ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseResult:
    """What happened to one case, as recorded right after it."""

    index: int
    family: str
    detail: str
    seed: str
    expect: str
    outcome: str
    status: int | None
    note: str
    echo_ok: bool
    echo_retried: bool  # the first C-ECHO failed, one on a new association was answered
    node_alive: bool
    row: bool
    file_ok: bool
    incoming_left: int

    @property
    def good(self) -> bool:
        return self.family == "good"


@dataclass
class FuzzReport:
    """Every case and the checks of the store at the end."""

    seed: int
    seconds: float
    cases: list[CaseResult]
    store_files_without_row: list[str] = field(default_factory=list)
    rows_without_file: list[str] = field(default_factory=list)
    incoming_left: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    pixels_not_decodable: int = 0
    node_restarts: int = 0
    node_log_tracebacks: int = 0
    node_peak_rss_mb: float = 0.0

    # --- the figures -------------------------------------------------------------------------

    @property
    def mutants(self) -> list[CaseResult]:
        return [c for c in self.cases if not c.good]

    @property
    def goods(self) -> list[CaseResult]:
        return [c for c in self.cases if c.good]

    @property
    def crashes(self) -> list[CaseResult]:
        """Cases after which the node had exited, did not answer C-ECHO, or sent no
        response to a C-STORE it was sent."""
        return [
            c for c in self.cases if not c.node_alive or not c.echo_ok or c.outcome == NO_RESPONSE
        ]

    @property
    def lost_good(self) -> list[CaseResult]:
        return [c for c in self.goods if c.outcome != STORED or not (c.row and c.file_ok)]

    @property
    def partial(self) -> list[str]:
        """Files without their row, rows without their file, anything left in .incoming,
        rows for refused instances, and stored instances whose file differs from what was
        sent."""
        problems = [f"file without row: {p}" for p in self.store_files_without_row]
        problems += [f"row without file: {p}" for p in self.rows_without_file]
        problems += [f"left in .incoming: {p}" for p in self.incoming_left]
        for c in self.cases:
            if c.incoming_left:
                problems.append(f"case {c.index}: {c.incoming_left} file(s) in .incoming")
            if c.outcome != STORED and c.row:
                problems.append(f"case {c.index}: refused ({c.outcome}) but recorded")
            if c.outcome == STORED and not (c.row and c.file_ok):
                problems.append(f"case {c.index}: acknowledged but not stored byte for byte")
        return problems

    @property
    def not_failure_refusals(self) -> list[CaseResult]:
        """Instances not stored whose status was no failure (a warning: 'kept with changes')."""
        return [c for c in self.cases if c.outcome == WARNING]

    @property
    def processing_failures(self) -> list[CaseResult]:
        """0x0110: the node failed on its side (an exception), not on the dataset."""
        return [c for c in self.cases if c.status == 0x0110]

    @property
    def wrongly_stored(self) -> list[CaseResult]:
        return [c for c in self.mutants if c.expect == REFUSE and c.outcome == STORED]

    @property
    def wrongly_refused(self) -> list[CaseResult]:
        return [c for c in self.mutants if c.expect == ACCEPT and c.outcome == REFUSED]

    @property
    def ok(self) -> bool:
        return not (
            self.crashes
            or self.lost_good
            or self.partial
            or self.not_failure_refusals
            or self.processing_failures
            or self.unreadable
            or self.wrongly_stored
            or self.wrongly_refused
            or self.node_log_tracebacks
        )

    def problems(self) -> list[str]:
        lines = [
            f"crash after case {c.index} ({c.family}: {c.detail}; {c.note})" for c in self.crashes
        ]
        lines += [
            f"good case {c.index} ({c.seed}) lost: {c.outcome} {c.note}" for c in self.lost_good
        ]
        lines += self.partial
        lines += [
            f"case {c.index} not stored with status 0x{c.status or 0:04X}"
            for c in self.not_failure_refusals
        ]
        lines += [
            f"case {c.index} processing failure ({c.family}: {c.detail})"
            for c in self.processing_failures
        ]
        lines += [f"unreadable stored object: {u}" for u in self.unreadable]
        lines += [
            f"case {c.index} stored though it must be refused ({c.family} {c.seed}: {c.detail})"
            for c in self.wrongly_stored
        ]
        lines += [
            f"case {c.index} refused though valid ({c.family} {c.seed}: {c.detail}; "
            f"0x{c.status or 0:04X} {c.note})"
            for c in self.wrongly_refused
        ]
        if self.node_log_tracebacks:
            lines.append(f"{self.node_log_tracebacks} traceback(s) in the listener's log")
        return lines


def run_fuzz(
    workdir: Path,
    cases: int = DEFAULT_CASES,
    seed: int = DEFAULT_SEED,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> FuzzReport:
    """Sends ``cases`` cases (every GOOD_EVERY-th unmodified) to a fresh listener under
    ``workdir`` and checks the store after each and at the end."""
    if cases < 1:
        raise ValueError(f"cases must be at least 1, got {cases}")
    workdir = Path(workdir)
    seeds = make_seeds(workdir / "seeds", seed)
    mutator = Mutator(seeds, seed)
    sop_classes = sorted({s.sop_class for s in seeds} | {contexts.US_IMAGE})
    syntaxes = [
        contexts.EXPLICIT_VR_LITTLE_ENDIAN,
        contexts.IMPLICIT_VR_LITTLE_ENDIAN,
        contexts.JPEG_BASELINE,
        contexts.RLE_LOSSLESS,
        contexts.JPEG_2000_LOSSLESS,
        contexts.JPEG_LS_LOSSLESS,
        contexts.JPEG_XL,
    ]
    outbox = workdir / "outbox"
    outbox.mkdir(parents=True, exist_ok=True)
    results: list[CaseResult] = []
    sent: dict[int, Mutant] = {}
    # a refused C-STORE is pynetdicom's warning, and an invalid UID in a File Meta this run
    # writes on purpose pydicom's, thousands of times: not this run's news
    quiet = [logging.getLogger(name) for name in ("pynetdicom", "pydicom")]
    previous_levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.CRITICAL)
    started = time.perf_counter()
    node = FuzzNode(workdir / "node")
    sender = _Sender(sop_classes, syntaxes)
    node.start()
    engine = sa.create_engine(node.database_url())
    try:
        sender.port = node.port
        # pydicom's warnings about the invalid UIDs the mutants carry, as this process writes
        # and sends them: the mutation itself, thousands of times, not news
        with _raw_send(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for index in range(cases):
                mutant = mutator.case(index)
                result = _run_case(mutant, node, sender, engine, outbox)
                results.append(result)
                if result.outcome == STORED:
                    sent[index] = mutant
                if not result.node_alive:
                    node.restart()
                    sender.release()
                    sender.port = node.port
                if progress is not None:
                    progress(index + 1, cases)
        sender.release()
        report = FuzzReport(seed=seed, seconds=0.0, cases=results)
        _check_store(report, node, engine, {r.index: r for r in results}, sent)
    finally:
        sender.shutdown()
        engine.dispose()
        node.stop()
        for logger, level in zip(quiet, previous_levels, strict=True):
            logger.setLevel(level)
    report.seconds = time.perf_counter() - started
    report.node_restarts = node.restarts
    log_text = node.log_text()
    report.node_log_tracebacks = log_text.count("Traceback (most recent call last)")
    report.node_peak_rss_mb = node.peak_rss_mb
    return report


def _run_case(
    mutant: Mutant, node: FuzzNode, sender: _Sender, engine: sa.Engine, outbox: Path
) -> CaseResult:
    path = outbox / f"case-{mutant.index}.dcm"
    try:
        _write_part10(path, mutant)
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        # pydicom will not write this File Meta (an empty UID): the client cannot send it
        outcome, status, note = NOT_SENT, None, f"File Meta: {str(exc)[:120]}"
    else:
        outcome, status, note = sender.store(path)
    finally:
        path.unlink(missing_ok=True)
        _SPLITS.pop(path, None)
    alive = node.alive()
    echo_ok, why = sender.echo() if alive else (False, "listener exited")
    if why:
        note = f"{note}; {why}" if note else why
    with engine.connect() as conn:
        row = conn.execute(
            sa.text("SELECT file_path FROM instances WHERE sop_instance_uid = :uid"),
            {"uid": mutant.sop_instance},
        ).first()
    file_ok = False
    if row is not None:
        stored = node.store / row[0]
        file_ok = stored.is_file() and _dataset_bytes(stored.read_bytes()) == mutant.data
    incoming = node.store / ".incoming"
    left = len(os.listdir(incoming)) if incoming.is_dir() else 0
    return CaseResult(
        index=mutant.index,
        family=mutant.family,
        detail=mutant.detail,
        seed=mutant.seed,
        expect=mutant.expect,
        outcome=outcome,
        status=status,
        note=note,
        echo_ok=echo_ok,
        echo_retried=echo_ok and bool(why),
        node_alive=alive,
        row=row is not None,
        file_ok=file_ok,
        incoming_left=left,
    )


def _dataset_bytes(file_bytes: bytes) -> bytes:
    (group_length,) = struct.unpack_from("<I", file_bytes, 140)  # (0002,0000) after the DICM
    return file_bytes[144 + group_length :]


def _check_store(
    report: FuzzReport,
    node: FuzzNode,
    engine: sa.Engine,
    by_index: dict[int, CaseResult],
    sent: dict[int, Mutant],
) -> None:
    """Files vs rows over the whole store, and every stored object read back by pydicom."""
    with engine.connect() as conn:
        rows = {str(p) for (p,) in conn.execute(sa.text("SELECT file_path FROM instances"))}
    files = {
        p.relative_to(node.store).as_posix()
        for p in node.store.rglob("*")
        if p.is_file() and ".incoming" not in p.relative_to(node.store).parts
    }
    report.store_files_without_row = sorted(files - rows)
    report.rows_without_file = sorted(rows - files)
    # temporary files: whatever is in the store's .incoming, and a .partial anywhere (the
    # quarantine writes its own)
    report.incoming_left = sorted(
        p.relative_to(node.home).as_posix()
        for p in node.home.rglob("*")
        if p.is_file() and (".incoming" in p.parts or p.suffix == ".partial")
    )
    with engine.connect() as conn:
        stored = dict(
            conn.execute(sa.text("SELECT sop_instance_uid, file_path FROM instances")).all()
        )
    for index, case in sent.items():
        relative = stored.get(case.sop_instance)
        if relative is None:
            continue  # reported per case already
        problem, decodable = _read_back(node.store / relative, case)
        if problem:
            result = by_index[index]
            report.unreadable.append(
                f"case {index} ({result.family} {result.seed}: {result.detail}): {problem}"
            )
        elif not decodable:
            report.pixels_not_decodable += 1


def _read_back(path: Path, case: Mutant) -> tuple[str, bool]:
    """('', decodable) when pydicom reads the whole object and its UIDs are the request's;
    else what failed. Pixel decoding is told apart: the node does not decode at ingest."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(path)
            for element in ds.iterall():
                _ = element.value
            if str(ds.file_meta.TransferSyntaxUID) != case.syntax:
                return f"read as {ds.file_meta.TransferSyntaxUID}, sent as {case.syntax}", False
            if str(ds.SOPInstanceUID) != case.sop_instance:
                return f"SOP Instance UID {str(ds.SOPInstanceUID)[:40]!r} is not the request's", (
                    False
                )
    except Exception as exc:  # pydicom raises many types for what it cannot read
        return f"{type(exc).__name__}: {str(exc)[:160]}", False
    if "PixelData" not in ds:
        return "", True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.pixel_array  # noqa: B018 - decoding is the check
    except Exception:
        return "", False
    return "", True


# --- the table -------------------------------------------------------------------------------


def format_table(report: FuzzReport) -> str:
    """Markdown: cases by family and outcome, then the invariants and any problem found."""
    lines = [
        "| mutation | cases | stored | refused | not sent | no response | statuses |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    families = ("good", *FAMILIES)
    for family in families:
        cases = [c for c in report.cases if c.family == family]
        if not cases:
            continue
        outcomes = Counter(c.outcome for c in cases)
        statuses = Counter(c.status for c in cases if c.status)
        shown = ", ".join(f"0x{s:04X}x{n}" for s, n in sorted(statuses.items()))
        lines.append(
            f"| {family} | {len(cases)} | {outcomes[STORED]} | {outcomes[REFUSED]} | "
            f"{outcomes[NOT_SENT]} | {outcomes[NO_RESPONSE]} | {shown or '-'} |"
        )
    total = Counter(c.outcome for c in report.cases)
    lines.append(
        f"| **all** | {len(report.cases)} | {total[STORED]} | {total[REFUSED]} | "
        f"{total[NOT_SENT]} | {total[NO_RESPONSE]} | |"
    )
    stored_mutants = sum(c.outcome == STORED for c in report.mutants)
    lines += [
        "",
        f"seed {report.seed}: {len(report.cases)} cases ({len(report.goods)} unmodified, "
        f"{len(report.mutants)} mutants) in {report.seconds:.1f} s "
        f"({len(report.cases) / max(report.seconds, 1e-9):.0f} cases/s); "
        f"listener peak RSS {report.node_peak_rss_mb:.0f} MB",
        f"crashes {len(report.crashes)}, partial files {len(report.partial)}, lost good "
        f"instances {len(report.lost_good)}, refusals without a failure status "
        f"{len(report.not_failure_refusals)}, processing failures "
        f"{len(report.processing_failures)}, unreadable stored objects {len(report.unreadable)}",
        f"mutants stored {stored_mutants} (pixels not decodable: {report.pixels_not_decodable}), "
        f"stored though certain to be invalid {len(report.wrongly_stored)}, refused though "
        f"valid {len(report.wrongly_refused)}, listener restarts {report.node_restarts}, "
        f"C-ECHO answered only on a new association {sum(c.echo_retried for c in report.cases)}",
    ]
    problems = report.problems()
    if problems:
        lines += ["", f"{len(problems)} problem(s):", *[f"- {p}" for p in problems[:40]]]
    retried = [c for c in report.cases if c.echo_retried]
    if retried:
        lines += ["", "C-ECHO answered only on a new association after:"]
        lines += [f"- case {c.index} ({c.family}: {c.detail}; {c.note})" for c in retried[:10]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m echo_agent.bench.fuzz --listen HOME``: the listener child of ``FuzzNode``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "--listen":
        print("usage: python -m echo_agent.bench.fuzz --listen HOME", file=sys.stderr)
        return 2
    return _listen(Path(args[1]))


if __name__ == "__main__":
    sys.exit(main())
