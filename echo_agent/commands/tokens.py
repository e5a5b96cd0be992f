"""``echo-agent token add|revoke|list``: bearer tokens for DICOMweb clients (``web.dicomweb``).

``add`` prints the token once, on stdout and alone on its line, so a script can capture it;
nothing can show it again (the database keeps its hash). Errors a user can cause are
``TokenError`` (a ``ValueError``), which the command line turns into one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from pacs_agent.api_tokens import create_token, list_tokens, revoke_token
from pacs_agent.config import Config
from pacs_agent.db import ensure_schema, make_engine, make_session_factory
from pacs_agent.db.models import API_TOKEN_ROLES
from pacs_agent.startup import prepare_home

T = TypeVar("T")


def add_token_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Adds ``token`` with the ``add``, ``revoke`` and ``list`` actions."""
    token = subparsers.add_parser("token", help="bearer tokens for DICOMweb clients")
    actions = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="make a token and print it (once)")
    add.add_argument("name", help="who uses it, e.g. the PACS or viewer's name")
    add.add_argument(
        "--role",
        required=True,
        choices=API_TOKEN_ROLES,
        help="pacs: store (STOW-RS) and read; viewer: read only (QIDO-RS, WADO-RS)",
    )
    add.set_defaults(func=cmd_token_add)
    revoke = actions.add_parser("revoke", help="revoke the token of that name")
    revoke.add_argument("name")
    revoke.set_defaults(func=cmd_token_revoke)
    actions.add_parser("list", help="names, roles and dates (never the tokens)").set_defaults(
        func=cmd_token_list
    )
    return token


def _in_transaction(config: Config | None, action: Callable[[Session], T]) -> T:
    """Runs ``action`` in one committed transaction and returns what it returned: a command
    prints only after the commit, so a token it shows is one that was stored."""
    assert config is not None, "token commands need the configuration"
    prepare_home(config)
    engine = make_engine(config.database_url)
    try:
        ensure_schema(engine, config.database_url)
        with make_session_factory(engine).begin() as session:
            return action(session)
    finally:
        engine.dispose()


def cmd_token_add(args: argparse.Namespace, config: Config | None) -> int:
    def add(session: Session) -> str:
        return create_token(session, args.name, args.role)[1]

    secret = _in_transaction(config, add)
    print(f"created {args.role} token {args.name!r}; it is shown only now:", file=sys.stderr)
    print(secret)
    return 0


def cmd_token_revoke(args: argparse.Namespace, config: Config | None) -> int:
    _in_transaction(config, lambda session: revoke_token(session, args.name))
    print(f"revoked token {args.name!r}")
    return 0


def cmd_token_list(_args: argparse.Namespace, config: Config | None) -> int:
    def rows(session: Session) -> list[str]:
        lines = []
        for token in list_tokens(session):
            state = "active" if token.revoked_at is None else f"revoked {token.revoked_at:%Y-%m-%d}"
            lines.append(
                f"{token.name}\t{token.role}\tcreated {token.created_at:%Y-%m-%d}\t{state}"
            )
        return lines

    for line in _in_transaction(config, rows):
        print(line)
    return 0
