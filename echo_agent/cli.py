"""The ``echo-agent`` command line.

Every subcommand turns the errors a user can cause (bad configuration, a taken port, a schema
that needs upgrading, a bad argument) into one line on stderr and exit status 2; a traceback
means a bug in the node.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import getpass
import json
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from echo_agent.commands.evaluate import add_evaluate_parser
from echo_agent.commands.tokens import add_token_parser
from echo_agent.commands.train import add_train_parser
from pacs_agent import __version__
from pacs_agent.config import Config, ConfigError, as_toml, load_config
from pacs_agent.db import SchemaError, ensure_schema, make_engine, make_session_factory, upgrade
from pacs_agent.db.migrate import current_revision, head_revision
from pacs_agent.logs import configure_logging
from pacs_agent.startup import (
    StartupError,
    bind_listen_socket,
    check_port_free,
    dicom_address,
    prepare_home,
    web_address,
)
from pacs_agent.users import UserError, add_user

if TYPE_CHECKING:
    from echo_agent.node import RunningNode
    from pacs_agent.analysis import LoopResult

log = logging.getLogger("echo_agent")

USAGE_ERROR = 2
# Errors a user can cause and fix; anything else is a bug and keeps its traceback.
USER_ERRORS = (ConfigError, StartupError, SchemaError, UserError, ValueError, FileNotFoundError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="echo-agent",
        description="Clinical AI node for echocardiography (A4C loops -> LV, EF, SEG/SR/FHIR).",
    )
    parser.add_argument("--version", action="version", version=f"echo-agent {__version__}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="TOML configuration file (default: $ECHO_AGENT_CONFIG, else ./echo-agent.toml)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve", help="run the node: DICOM listener, study assembly, analysis workers, web"
    )
    serve.add_argument(
        "--role",
        choices=("all", "listener", "web"),
        default="all",
        help="all: everything in one process (default); listener: DICOM, assembly, job "
        "submission; web: the review app only (scale-out: see README)",
    )
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser(
        "worker", help="run a Celery worker that analyses jobs (queue.backend = 'celery')"
    )
    worker.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve this worker's own metrics (model load time, GPU memory) at "
        "http://127.0.0.1:PORT/metrics (0: off; the web role serves the shared counts)",
    )
    worker.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port")
    worker.set_defaults(func=cmd_worker)

    demo = sub.add_parser("demo", help="run the node and send it demo phantom studies over DICOM")
    demo.add_argument("--studies", type=int, default=2, help="number of phantom studies")
    demo.set_defaults(func=cmd_demo)

    phantom = sub.add_parser("phantom", help="write synthetic A4C loops with ground truth")
    phantom.add_argument("outdir", type=Path)
    phantom.add_argument("--n", type=int, default=4, help="studies (dicom) or videos (echonet)")
    phantom.add_argument("--seed", type=int, default=0)
    phantom.add_argument("--format", choices=("dicom", "echonet"), default="dicom")
    phantom.add_argument(
        "--no-distractors", action="store_true", help="dicom: only the A4C loop per study"
    )
    phantom.add_argument(
        "--negative",
        action="store_true",
        help="dicom: N loops with no EF to publish (blank, noise, non_cardiac, wrong_view, "
        "lv_cut_off in turn), truth JSON with negative_class",
    )
    phantom.set_defaults(func=cmd_phantom, needs_config=False)

    analyze = sub.add_parser(
        "analyze", help="analyse one loop offline: measurements as JSON, objects into --out"
    )
    analyze.add_argument("file", type=Path, help="a DICOM cine loop (.dcm)")
    analyze.add_argument("--out", type=Path, required=True, help="folder for every output")
    analyze.set_defaults(func=cmd_analyze)

    calibrate = sub.add_parser(
        "calibrate",
        help="input mean/std of a lab's own loops, for weights that carry none (EchoNet .pt)",
    )
    calibrate.add_argument("folder", type=Path, help="DICOM loops (*.dcm) or EchoNet *.avi")
    calibrate.add_argument("--limit", type=int, default=200, help="use at most N loops")
    calibrate.set_defaults(func=cmd_calibrate, needs_config=False)

    add_train_parser(sub)
    add_evaluate_parser(sub)
    add_token_parser(sub)  # DICOMweb bearer tokens: token add|revoke|list

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_sub.add_parser("upgrade", help="apply migrations up to the newest").set_defaults(
        func=cmd_db_upgrade
    )
    db_sub.add_parser("current", help="print the schema revision").set_defaults(func=cmd_db_current)

    user = sub.add_parser("user", help="reviewer accounts")
    user_sub = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    user_add = user_sub.add_parser("add", help="create an account")
    user_add.add_argument("username")
    user_add.add_argument("--role", required=True, choices=("admin", "cardiologist", "sonographer"))
    user_add.add_argument("--display-name", default="")
    user_add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    user_add.set_defaults(func=cmd_user_add)

    destinations = sub.add_parser("destinations", help="DICOM destinations results go to")
    dest_sub = destinations.add_subparsers(
        dest="destinations_command", required=True, metavar="ACTION"
    )
    dest_check = dest_sub.add_parser("check", help="C-ECHO every configured destination")
    dest_check.add_argument("--json", action="store_true", help="one JSON object per line")
    dest_check.set_defaults(func=cmd_destinations_check)

    bench = sub.add_parser("bench", help="measure speed against a peer on this machine")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    bench_ingest = bench_sub.add_parser(
        "ingest", help="C-STORE throughput of the node vs dcmtk storescp (MB/s and ratio)"
    )
    bench_ingest.add_argument("--repeats", type=int, default=3, help="best of N runs")
    bench_ingest.add_argument(
        "--out", type=Path, help="also write the table to this file (Markdown)"
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

    config = sub.add_parser("config", help="configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    config_sub.add_parser("show", help="print the effective configuration").set_defaults(
        func=cmd_config_show
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace, Config | None], int] = args.func
    try:
        config = None
        if getattr(args, "needs_config", True):
            config = load_config(args.config)
            configure_logging(config.logging.level, config.logging.format)
        else:
            configure_logging("INFO")
        return func(args, config)
    except USER_ERRORS as exc:
        kind = {ConfigError: "configuration error", StartupError: "cannot start"}.get(
            type(exc), "error"
        )
        print(f"echo-agent: {kind}: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        return 130


def _require(config: Config | None) -> Config:
    assert config is not None, "command declared needs_config"
    return config


def cmd_config_show(_args: argparse.Namespace, config: Config | None) -> int:
    sys.stdout.write(as_toml(_require(config)))
    return 0


def cmd_db_upgrade(_args: argparse.Namespace, config: Config | None) -> int:
    config = _require(config)
    prepare_home(config)
    upgrade(config.database_url)
    print(f"database schema at {head_revision()}")
    return 0


def cmd_db_current(_args: argparse.Namespace, config: Config | None) -> int:
    engine = make_engine(_require(config).database_url)
    try:
        print(current_revision(engine) or "empty")
    finally:
        engine.dispose()
    return 0


def cmd_user_add(args: argparse.Namespace, config: Config | None) -> int:
    config = _require(config)
    prepare_home(config)
    password = _read_password(args.password_stdin)
    engine = make_engine(config.database_url)
    try:
        ensure_schema(engine, config.database_url)
        with make_session_factory(engine).begin() as session:
            user = add_user(session, args.username, password, args.role, args.display_name)
            print(f"created {user.role} account {user.username!r}")
    finally:
        engine.dispose()
    return 0


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    if not sys.stdin.isatty():
        raise UserError("no terminal to ask for a password: use --password-stdin")
    first = getpass.getpass("password: ")
    if first != getpass.getpass("again: "):
        raise UserError("the two passwords differ")
    return first


def cmd_phantom(args: argparse.Namespace, _config: Config | None) -> int:
    from inference.phantom import generate_phantoms  # numpy/opencv only when asked for

    if args.n < 1:
        raise ValueError("--n must be at least 1")
    if args.negative:
        if args.format != "dicom" or args.no_distractors:
            raise ValueError("--negative writes DICOM loops only: drop --format/--no-distractors")
        from inference.phantom.negatives import generate_negatives

        written = generate_negatives(args.outdir, n=args.n, seed=args.seed)
    else:
        written = generate_phantoms(
            args.outdir,
            n=args.n,
            seed=args.seed,
            fmt=args.format,
            distractors=not args.no_distractors,
        )
    print(json.dumps({"outdir": str(args.outdir), "files": [str(p) for p in written]}))
    return 0


def cmd_analyze(args: argparse.Namespace, config: Config | None) -> int:
    """Runs the node's analysis on one file with no database and no network."""
    from inference.decode import DecodeError
    from inference.preprocess import PreprocessError
    from pacs_agent.analysis import analyze_file, load_models, measurements_document

    config = _require(config)
    if not args.file.is_file():
        raise FileNotFoundError(f"{args.file} does not exist")
    models = load_models(config)
    try:
        result = analyze_file(args.file, models, config.models.all_clip_stride)
    except (DecodeError, PreprocessError) as exc:
        raise ValueError(f"{args.file.name}: {exc}") from None
    document = measurements_document(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "measurements.json").write_text(json.dumps(document, indent=1) + "\n")
    _write_offline_objects(args.file, args.out, result, config)
    print(json.dumps(document))
    return 0


def _write_offline_objects(source: Path, out: Path, result: LoopResult, config: Config) -> None:
    """SEG, SR, overlay, secondary capture, PDF and FHIR for one loop, into ``out``."""
    from pydicom import dcmread

    from pacs_agent.outputs import algorithms_for, node_identifier_system
    from reporting.outputs import write_report_objects
    from reporting.report_text import structured_text
    from reporting.types import DraftReport

    source_ds = dcmread(source, stop_before_pixels=True)
    algorithms = algorithms_for(result.models)
    measurements = result.analysis.measurements
    sex = str(source_ds.get("PatientSex", "")) or None
    report = DraftReport(
        narrative_text=structured_text(measurements, algorithms, sex),
        demo_models=result.models.demo,
    )
    write_report_objects(
        out,
        source_ds,
        result.cine,
        result.analysis.lv_masks_source(),
        measurements,
        algorithms,
        report,
        node_system=node_identifier_system(config),
        uid_seed=f"{source_ds.SOPInstanceUID}/analyze",
    )


def cmd_calibrate(args: argparse.Namespace, _config: Config | None) -> int:
    """Prints the [models] mean/std lines to paste into the configuration."""
    from inference.presets import compute_mean_std

    if not args.folder.is_dir():
        raise ValueError(f"{args.folder} is not a folder")
    files = sorted([*args.folder.rglob("*.dcm"), *args.folder.rglob("*.avi")])[: args.limit]
    if not files:
        raise ValueError(f"{args.folder}: no *.dcm or *.avi loops found")
    mean, std = compute_mean_std(files)
    print(f"# from {len(files)} loops in {args.folder}")
    print("[models]")
    print(f"mean = [{', '.join(f'{v:.4f}' for v in mean)}]")
    print(f"std = [{', '.join(f'{v:.4f}' for v in std)}]")
    return 0


def cmd_bench_ingest(args: argparse.Namespace, _config: Config | None) -> int:
    import tempfile

    from echo_agent.bench.ingest import format_table, run_ingest_bench

    if args.repeats < 1:
        raise ValueError("--repeats must be at least 1")
    with tempfile.TemporaryDirectory(prefix="echo-agent-bench-") as workdir:
        result = run_ingest_bench(Path(workdir), repeats=args.repeats)
    _print_table(format_table(result), args.out)
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
    _print_table(format_table(results), args.out)
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


def _print_table(table: str, out: Path | None) -> None:
    print(table)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table + "\n")


def cmd_demo(args: argparse.Namespace, config: Config | None) -> int:
    """Writes phantom studies once, runs the node, and sends the studies to it over DICOM."""
    from echo_agent.demo import (
        DEMO_USERNAME,
        ensure_demo_account,
        follow_model_status,
        send_studies,
    )
    from inference.phantom import generate_phantoms

    config = _require(config)
    prepare_home(config)
    demo_dir = config.home_path / "demo-studies"
    if not any(demo_dir.glob("*.dcm")):
        log.info("writing %d demo phantom studies to %s", args.studies, demo_dir)
        generate_phantoms(demo_dir, n=args.studies, seed=20261122, fmt="dicom")
    password = ensure_demo_account(config)
    review_url = f"http://{config.web.host}:{config.web.port}/"

    def on_started(node: RunningNode) -> None:
        progress = functools.partial(print, flush=True)
        threading.Thread(
            target=follow_model_status, args=(node.model_status, progress), daemon=True
        ).start()
        send_studies(node, demo_dir)
        lines = [f"Review the demo studies at {review_url}"]
        if password is not None:
            lines.append(f"  user: {DEMO_USERNAME}   password: {password}   (shown once)")
        print("\n".join(lines), flush=True)

    return _serve(config, on_started=on_started)


def cmd_serve(args: argparse.Namespace, config: Config | None) -> int:
    return _serve(_require(config), role=args.role)


def _serve(
    config: Config,
    on_started: Callable[[RunningNode], None] | None = None,
    role: str = "all",
) -> int:
    from echo_agent.node import run_node  # pynetdicom, waitress, Flask: only when serving

    prepare_home(config)
    web_socket = None if role == "listener" else bind_listen_socket(web_address(config))
    try:
        if role != "web":
            check_port_free(dicom_address(config))
    except StartupError:
        if web_socket is not None:
            web_socket.close()
        raise
    run_node(config, web_socket=web_socket, on_started=on_started, role=role)
    return 0


def cmd_worker(args: argparse.Namespace, config: Config | None) -> int:
    """A Celery worker: loads the models once, then runs the jobs the broker delivers."""
    config = _require(config)
    if config.queue.backend != "celery":
        raise ConfigError(
            "echo-agent worker needs queue.backend = 'celery' and queue.broker_url "
            f"(got backend {config.queue.backend!r})"
        )
    from pacs_agent.celery_queue import run_worker  # celery only when asked for

    if not 0 <= args.metrics_port <= 65535:
        raise ConfigError(f"--metrics-port must be 0..65535, got {args.metrics_port}")
    prepare_home(config)
    metrics = (args.metrics_host, args.metrics_port) if args.metrics_port else None
    return run_worker(config, metrics_address=metrics)


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
    _print_table(format_table(report), args.out)
    return 0 if report.ok else 1


def cmd_bench_throughput(args: argparse.Namespace, _config: Config | None) -> int:
    import tempfile

    from echo_agent.bench.throughput import format_table, run_throughput_bench

    if args.studies < 1:
        raise ValueError("--studies must be at least 1")
    with tempfile.TemporaryDirectory(prefix="echo-agent-bench-") as workdir:
        result = run_throughput_bench(
            Path(workdir), args.studies, args.broker_url, args.postgres_admin_url
        )
    _print_table(format_table(result), args.out)
    return 0


def cmd_destinations_check(args: argparse.Namespace, config: Config | None) -> int:
    """Exit status 0 when every destination answers C-ECHO, 1 when one does not."""
    from pacs_agent.export import check_destinations

    config = _require(config)
    if not config.destinations:
        raise ConfigError(
            f"no destinations configured (add [[destinations]] tables to {config.source})"
        )
    results = check_destinations(config)
    for r in results:
        if args.json:
            print(json.dumps(dataclasses.asdict(r)), flush=True)
        else:
            verdict = "ok" if r.ok else "FAILED"
            print(
                f"{r.destination}: {r.ae_title}@{r.host}:{r.port} {verdict} "
                f"({r.detail}, {r.elapsed_ms:.0f} ms)",
                flush=True,
            )
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
