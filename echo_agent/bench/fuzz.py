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

The parts: ``fuzz_node`` (the listener process), ``fuzz_sender`` (the associations and the
raw sends), ``fuzz_report`` (the record and its table); this module runs the cases and checks
the store after each.
"""

from __future__ import annotations

import logging
import os
import struct
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import sqlalchemy as sa
from pydicom import dcmread

from echo_agent.bench.fuzz_mutations import (
    DEFAULT_SEED,
    Mutant,
    Mutator,
    make_seeds,
)
from echo_agent.bench.fuzz_node import FuzzNode, listen
from echo_agent.bench.fuzz_report import CaseResult, FuzzReport, format_table
from echo_agent.bench.fuzz_sender import (
    NOT_SENT,
    REFUSED,
    SPLITS,
    STORED,
    Sender,
    raw_send,
    write_part10,
)
from pacs_agent.dicom import contexts

__all__ = [
    "NOT_SENT",
    "REFUSED",
    "STORED",
    "CaseResult",
    "FuzzReport",
    "format_table",
    "main",
    "run_fuzz",
]

DEFAULT_CASES = 5000


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
    sender = Sender(sop_classes, syntaxes)
    node.start()
    engine = sa.create_engine(node.database_url())
    try:
        sender.port = node.port
        # pydicom's warnings about the invalid UIDs the mutants carry, as this process writes
        # and sends them: the mutation itself, thousands of times, not news
        with raw_send(), warnings.catch_warnings():
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
    mutant: Mutant, node: FuzzNode, sender: Sender, engine: sa.Engine, outbox: Path
) -> CaseResult:
    path = outbox / f"case-{mutant.index}.dcm"
    try:
        write_part10(path, mutant)
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        # pydicom will not write this File Meta (an empty UID): the client cannot send it
        outcome, status, note = NOT_SENT, None, f"File Meta: {str(exc)[:120]}"
    else:
        outcome, status, note = sender.store(path)
    finally:
        path.unlink(missing_ok=True)
        SPLITS.pop(path, None)
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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m echo_agent.bench.fuzz --listen HOME``: the listener child of ``FuzzNode``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "--listen":
        print("usage: python -m echo_agent.bench.fuzz --listen HOME", file=sys.stderr)
        return 2
    return listen(Path(args[1]))


if __name__ == "__main__":
    sys.exit(main())
