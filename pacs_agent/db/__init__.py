"""Database: models, engines and migrations."""

from pacs_agent.db.engine import make_engine, make_session_factory
from pacs_agent.db.migrate import (
    SchemaError,
    current_revision,
    ensure_schema,
    head_revision,
    upgrade,
)

__all__ = [
    "SchemaError",
    "current_revision",
    "ensure_schema",
    "head_revision",
    "make_engine",
    "make_session_factory",
    "upgrade",
]
