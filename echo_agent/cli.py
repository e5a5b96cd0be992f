"""The ``echo-agent`` command line: the parser and the error handling every command shares.

Each command's arguments and handler live in ``echo_agent.commands`` (one module per group);
``analyze`` is still here. Every subcommand turns the errors a user can cause (bad
configuration, a taken port, a schema that needs upgrading, a bad argument) into one line on
stderr and exit status 2; a traceback means a bug in the node.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from echo_agent.commands.admin import add_admin_parsers, add_config_parser
from echo_agent.commands.bench import add_bench_parser
from echo_agent.commands.common import require_config
from echo_agent.commands.evaluate import add_evaluate_parser
from echo_agent.commands.loops import add_calibrate_parser, add_phantom_parser
from echo_agent.commands.node import add_node_parsers
from echo_agent.commands.tokens import add_token_parser
from echo_agent.commands.train import add_train_parser
from pacs_agent import __version__
from pacs_agent.config import Config, ConfigError, load_config
from pacs_agent.db import SchemaError
from pacs_agent.logs import configure_logging
from pacs_agent.startup import StartupError
from pacs_agent.users import UserError

if TYPE_CHECKING:
    from inference.analyze import AnalysisResult
    from inference.model_cache import Models

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

    add_node_parsers(sub)  # serve, worker, demo
    add_phantom_parser(sub)
    analyze = sub.add_parser(
        "analyze", help="analyse one loop offline: measurements as JSON, objects into --out"
    )
    analyze.add_argument("file", type=Path, help="a DICOM cine loop (.dcm)")
    analyze.add_argument("--out", type=Path, required=True, help="folder for every output")
    analyze.set_defaults(func=cmd_analyze)

    add_calibrate_parser(sub)
    add_train_parser(sub)
    add_evaluate_parser(sub)
    add_token_parser(sub)  # DICOMweb bearer tokens: token add|revoke|list
    add_admin_parsers(sub)  # db, user, destinations
    add_bench_parser(sub)
    add_config_parser(sub)
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


# the analyze handler below still calls it by this name
_require = require_config


def cmd_analyze(args: argparse.Namespace, config: Config | None) -> int:
    """Runs the node's analysis on one file with no database and no network."""
    from inference.analyze import analyse
    from inference.decode import DecodeError
    from inference.model_cache import load_models, measurements_document
    from inference.preprocess import PreprocessError
    from pacs_agent.analysis import model_settings

    config = _require(config)
    if not args.file.is_file():
        raise FileNotFoundError(f"{args.file} does not exist")
    models = load_models(model_settings(config))
    try:
        result = analyse(args.file, models, all_clip_stride=config.models.all_clip_stride)
    except (DecodeError, PreprocessError) as exc:
        raise ValueError(f"{args.file.name}: {exc}") from None
    document = measurements_document(result, models)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "measurements.json").write_text(json.dumps(document, indent=1) + "\n")
    _write_offline_objects(args.file, args.out, result, models, config)
    print(json.dumps(document))
    return 0


def _write_offline_objects(
    source: Path, out: Path, result: AnalysisResult, models: Models, config: Config
) -> None:
    """SEG, SR, overlay, secondary capture, PDF and FHIR for one loop, into ``out``."""
    from pydicom import dcmread

    from pacs_agent.outputs import algorithms_for, node_identifier_system
    from reporting.body_size import body_size_from_dataset
    from reporting.outputs import write_report_objects
    from reporting.report_text import structured_text
    from reporting.types import DraftReport

    source_ds = dcmread(source, stop_before_pixels=True)
    algorithms = algorithms_for(models)
    measurements = result.analysis.measurements
    sex = str(source_ds.get("PatientSex", "")) or None
    report = DraftReport(
        narrative_text=structured_text(
            measurements, algorithms, sex, body_size_from_dataset(source_ds)
        ),
        demo_models=models.demo,
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
