"""Runs the Alembic migrations that ship inside the package, so ``echo-agent db upgrade`` works
from any directory and from an installed wheel, without an ``alembic.ini`` in the working tree."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from pacs_agent.errors import EchoAgentError

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # '%' is ConfigParser's interpolation character; URLs with escaped passwords contain it
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    if head is None:  # pragma: no cover - the package always ships at least one revision
        raise RuntimeError("no migrations found")
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


class SchemaError(EchoAgentError, RuntimeError):
    """The database's schema is not the one this version of the node needs."""


def ensure_schema(engine: Engine, url: str) -> str:
    """Brings an embedded SQLite database to head; asks for an explicit upgrade elsewhere.

    A shared PostgreSQL database serves several processes and perhaps several node versions, so
    the node never migrates it on its own: an operator runs ``echo-agent db upgrade`` once.
    """
    head = head_revision()
    current = current_revision(engine)
    if current == head:
        return head
    if engine.dialect.name == "sqlite":
        upgrade(url)
        return head
    raise SchemaError(
        f"database schema is at {current or 'empty'}, this node needs {head}: "
        "run 'echo-agent db upgrade'"
    )
