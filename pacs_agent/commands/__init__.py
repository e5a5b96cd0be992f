"""Subcommands that live in their own module; ``pacs_agent.cli`` wires them in."""
