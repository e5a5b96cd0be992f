"""What every command handler shares."""

from __future__ import annotations

from pacs_agent.config import Config


def require_config(config: Config | None) -> Config:
    """The loaded configuration of a command that declared it needs one (the default)."""
    assert config is not None, "command declared needs_config"
    return config
