"""``echo-agent bench ingest|inference|pipeline|throughput|fuzz``: speed and robustness figures
measured on this machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pacs_agent.config import Config

if TYPE_CHECKING:
    pass


def add_bench_parser(sub: Any) -> None:
    """Adds ``bench`` with its five measurements."""
    bench = sub.add_parser("bench", help="measure speed against a peer on this machine")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    bench_ingest = bench_sub.add_parser(
        "ingest", help="C-STORE throughput of the node vs dcmtk storescp (MB/s and ratio)"
    )
    bench_ingest.add_argument("--repeats", type=int, default=3, help="best of N runs")
    bench_ingest.add_argument(
        "--out", type=Path, help="also write the table to this file (Markdown)"
    )
    bench_ingest.add_argument(
        "--plain-pdu-reads",
        action="store_true",
        help="the node reads PDUs with pynetdicom's own loop (dicom.one_buffer_pdu_reads off)",
    )
    bench_ingest.set_defaults(func=cmd_bench_ingest, needs_config=False)

    bench_inference = bench_sub.add_parser(
        "inference", help="analysis wall time by stage, demo and full-width networks"
    )
    bench_inference.add_argument(
        "--no-full-width", action="store_true", help="time the demo preset only"
    )
    bench_inference.add_argument(
        "--full-width-stride",
        type=int,
        default=1,
        help="full width: EF on every Nth clip start (1 = all, as the node does by default)",
    )
    bench_inference.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    bench_inference.add_argument(
        "--repeats", type=int, default=3, help="best of N runs of each path"
    )
    bench_inference.add_argument("--out", type=Path, help="also write the table to this file")
    bench_inference.set_defaults(func=cmd_bench_inference, needs_config=False)

    bench_pipeline = bench_sub.add_parser(
        "pipeline",
        help="seconds per study from the last C-STORE to the drafted report, by stage",
    )
    bench_pipeline.add_argument("--studies", type=int, default=3, help="phantom studies")
    bench_pipeline.add_argument(
        "--out", type=Path, help="also write the table to this file (.csv: CSV, else Markdown)"
    )
    bench_pipeline.set_defaults(func=cmd_bench_pipeline, needs_config=False)

    bench_throughput = bench_sub.add_parser(
        "throughput",
        help="studies per hour through a listener and 1, then 2, Celery workers (Redis, PG)",
    )
    bench_throughput.add_argument("--studies", type=int, default=8, help="phantom studies")
    bench_throughput.add_argument(
        "--broker-url", default="redis://127.0.0.1:6379/14", help="Redis or RabbitMQ URL"
    )
    bench_throughput.add_argument(
        "--postgres-admin-url",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        help="a fresh database is created (and dropped) through this URL for each run",
    )
    bench_throughput.add_argument("--out", type=Path, help="also write the table to this file")
    bench_throughput.set_defaults(func=cmd_bench_throughput, needs_config=False)

    bench_fuzz = bench_sub.add_parser(
        "fuzz",
        help="malformed DICOM (seeded mutations of phantom objects) against a listener: "
        "crashes, partial files, lost instances",
    )
    bench_fuzz.add_argument("--cases", type=int, default=5000, help="cases to send")
    bench_fuzz.add_argument("--seed", type=int, default=1, help="seed of the mutations")
    bench_fuzz.add_argument("--out", type=Path, help="also write the table to this file")
    bench_fuzz.set_defaults(func=cmd_bench_fuzz, needs_config=False)


def cmd_bench_ingest(args: argparse.Namespace, _config: Config | None) -> int:
    import tempfile

    from echo_agent.bench.ingest import format_table, run_ingest_bench

    if args.repeats < 1:
        raise ValueError("--repeats must be at least 1")
    with tempfile.TemporaryDirectory(prefix="echo-agent-bench-") as workdir:
        result = run_ingest_bench(
            Path(workdir), repeats=args.repeats, one_buffer_pdu_reads=not args.plain_pdu_reads
        )
    print_table(format_table(result), args.out)
    return 0


def cmd_bench_inference(args: argparse.Namespace, _config: Config | None) -> int:
    import tempfile

    from echo_agent.bench.inference import format_table, run_inference_bench

    if args.full_width_stride < 1:
        raise ValueError("--full-width-stride must be at least 1")
    with tempfile.TemporaryDirectory(prefix="echo-agent-bench-") as workdir:
        results = run_inference_bench(
            Path(workdir),
            full_width=not args.no_full_width,
            device=args.device,
            full_width_stride=args.full_width_stride,
            repeats=args.repeats,
        )
    print_table(format_table(results), args.out)
    return 0


def cmd_bench_pipeline(args: argparse.Namespace, _config: Config | None) -> int:
    """A node on the embedded defaults in a temporary home; phantom studies timed end to end."""
    import tempfile

    from echo_agent.bench.pipeline import format_table, run_pipeline_bench

    if args.studies < 1:
        raise ValueError("--studies must be at least 1")
    with tempfile.TemporaryDirectory(prefix="echo-agent-bench-") as workdir:
        result = run_pipeline_bench(Path(workdir), studies=args.studies)
    print(format_table(result))
    if args.out:
        fmt = "csv" if args.out.suffix.lower() == ".csv" else "markdown"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(format_table(result, fmt) + "\n")
    return 0


def cmd_bench_throughput(args: argparse.Namespace, _config: Config | None) -> int:
    import tempfile

    from echo_agent.bench.throughput import format_table, run_throughput_bench

    if args.studies < 1:
        raise ValueError("--studies must be at least 1")
    with tempfile.TemporaryDirectory(prefix="echo-agent-bench-") as workdir:
        result = run_throughput_bench(
            Path(workdir), args.studies, args.broker_url, args.postgres_admin_url
        )
    print_table(format_table(result), args.out)
    return 0


def cmd_bench_fuzz(args: argparse.Namespace, _config: Config | None) -> int:
    """Exit status 0 when no invariant broke (no crash, no partial file, no lost instance,
    every refusal a failure status), 1 otherwise: usable as a check, not only a figure."""
    import tempfile

    from echo_agent.bench.fuzz import format_table, run_fuzz

    if args.cases < 1:
        raise ValueError("--cases must be at least 1")

    def progress(done: int, total: int) -> None:
        if done % 500 == 0 or done == total:
            print(f"fuzz: {done}/{total} cases", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="echo-agent-bench-") as workdir:
        report = run_fuzz(Path(workdir), args.cases, args.seed, progress=progress)
    print_table(format_table(report), args.out)
    return 0 if report.ok else 1


def print_table(table: str, out: Path | None) -> None:
    print(table)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table + "\n")
