"""Subcommands that live in their own module; ``echo_agent.cli`` wires them in."""
