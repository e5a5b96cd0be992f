"""``echo-agent db``, ``user``, ``destinations`` and ``config``: administering a node."""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import sys
from typing import TYPE_CHECKING, Any

from echo_agent.commands.common import require_config
from pacs_agent.config import Config, ConfigError, as_toml
from pacs_agent.db import ensure_schema, make_engine, make_session_factory, upgrade
from pacs_agent.db.migrate import current_revision, head_revision
from pacs_agent.startup import (
    prepare_home,
)
from pacs_agent.users import UserError, add_user

if TYPE_CHECKING:
    pass


def add_admin_parsers(sub: Any) -> None:
    """Adds ``db``, ``user`` and ``destinations``."""
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


def add_config_parser(sub: Any) -> None:
    """Adds ``config show``."""
    config_cmd = sub.add_parser("config", help="configuration")
    config_sub = config_cmd.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    config_sub.add_parser("show", help="print the effective configuration").set_defaults(
        func=cmd_config_show
    )


def cmd_config_show(_args: argparse.Namespace, config: Config | None) -> int:
    sys.stdout.write(as_toml(require_config(config)))
    return 0


def cmd_db_upgrade(_args: argparse.Namespace, config: Config | None) -> int:
    config = require_config(config)
    prepare_home(config)
    upgrade(config.database_url)
    print(f"database schema at {head_revision()}")
    return 0


def cmd_db_current(_args: argparse.Namespace, config: Config | None) -> int:
    engine = make_engine(require_config(config).database_url)
    try:
        print(current_revision(engine) or "empty")
    finally:
        engine.dispose()
    return 0


def cmd_user_add(args: argparse.Namespace, config: Config | None) -> int:
    config = require_config(config)
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


def cmd_destinations_check(args: argparse.Namespace, config: Config | None) -> int:
    """Exit status 0 when every destination answers C-ECHO, 1 when one does not."""
    from pacs_agent.export import check_destinations

    config = require_config(config)
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
