"""Loading: defaults, then the TOML file, then ``ECHO_AGENT_*`` environment overrides.

A mistake in the file or the environment stops start-up with one line that names the key,
because a node that silently ignores a typo in ``allowed_calling_aes`` or a port is worse than
one that does not start. Environment variables map to keys as ``ECHO_AGENT_<SECTION>_<KEY>``
(``ECHO_AGENT_DICOM_PORT`` -> ``dicom.port``); top-level keys have no section
(``ECHO_AGENT_HOME``); a few short aliases are fixed by the design (``ECHO_AGENT_AE_TITLE``).
Lists are comma-separated in the environment.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pacs_agent.config.sections import (
    Config,
    ConfigError,
    DestinationConfig,
    DicomwebDestinationConfig,
    Hl7DestinationConfig,
)
from pacs_agent.config.validate import check_config

ENV_PREFIX = "ECHO_AGENT_"
CONFIG_FILE_ENV = "ECHO_AGENT_CONFIG"
DEFAULT_CONFIG_FILENAME = "echo-agent.toml"

# Environment names that look like configuration but are not: they are read elsewhere
# (tests, the config file pointer) and must not be rejected as unknown keys.
NON_CONFIG_ENV = frozenset({CONFIG_FILE_ENV, "ECHO_AGENT_REFERENCE_DIR"})
NON_CONFIG_ENV_PREFIXES = ("ECHO_AGENT_TEST_",)

ENV_ALIASES = {
    "ECHO_AGENT_AE_TITLE": ("dicom", "ae_title"),
}

# Keys whose value is read by other code from the file but is not itself a setting.
_NOT_SETTINGS = frozenset({"source"})
# Arrays of tables ([[destinations]]): set in the file only, one table per entry.
_TABLE_LISTS: dict[str, type] = {
    "destinations": DestinationConfig,
    "hl7_destinations": Hl7DestinationConfig,
    "dicomweb_destinations": DicomwebDestinationConfig,
}


def load_config(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Reads defaults, then the TOML file, then the environment; validates everything.

    ``path`` None means: ``$ECHO_AGENT_CONFIG`` if set, else ``./echo-agent.toml`` if it
    exists, else defaults only. A path that was asked for explicitly must exist.
    """
    env = dict(os.environ if environ is None else environ)
    file_path = _choose_file(path, env)
    raw: dict[str, Any] = {}
    source = "defaults"
    if file_path is not None:
        raw = _read_toml(file_path)
        source = str(file_path)
    _check_known_keys(raw, source)
    overrides = _env_overrides(env)
    return _build(raw, overrides, source)


def _choose_file(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    if path is not None:
        chosen = Path(path)
    elif env.get(CONFIG_FILE_ENV):
        chosen = Path(env[CONFIG_FILE_ENV])
    else:
        default = Path(DEFAULT_CONFIG_FILENAME)
        return default if default.is_file() else None
    if not chosen.is_file():
        raise ConfigError(f"configuration file {chosen} does not exist")
    return chosen


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def _sections() -> dict[str, type]:
    """Section name -> dataclass type, from the annotations of ``Config``."""
    hints = typing.get_type_hints(Config)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(Config)
        if dataclasses.is_dataclass(hints[f.name])
    }


def _top_level_keys() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(Config)
        if not dataclasses.is_dataclass(hints[f.name])
        and f.name not in _NOT_SETTINGS
        and f.name not in _TABLE_LISTS
    }


def _check_known_keys(raw: Mapping[str, Any], source: str) -> None:
    sections = _sections()
    top = _top_level_keys()
    for key, value in raw.items():
        if key in sections:
            if not isinstance(value, dict):
                raise ConfigError(f"[{key}] in {source} must be a table")
            known = {f.name for f in dataclasses.fields(sections[key])}
            for sub in value:
                if sub not in known:
                    raise ConfigError(
                        f"unknown key '{key}.{sub}' in {source} "
                        f"(known in [{key}]: {', '.join(sorted(known))})"
                    )
        elif key in _TABLE_LISTS:
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise ConfigError(f"{key} in {source} must be an array of tables ([[{key}]])")
            known = {f.name for f in dataclasses.fields(_TABLE_LISTS[key])}
            for index, entry in enumerate(value):
                for sub in entry:
                    if sub not in known:
                        raise ConfigError(
                            f"unknown key '{key}[{index}].{sub}' in {source} "
                            f"(known in [[{key}]]: {', '.join(sorted(known))})"
                        )
        elif key not in top:
            known_all = sorted([*top, *sections, *_TABLE_LISTS])
            raise ConfigError(f"unknown key '{key}' in {source} (known: {', '.join(known_all)})")


def _env_overrides(env: Mapping[str, str]) -> dict[tuple[str | None, str], tuple[str, str]]:
    """Maps (section, key) -> (raw string value, variable name) for every ECHO_AGENT_* variable."""
    sections = _sections()
    top = _top_level_keys()
    by_name: dict[str, tuple[str | None, str]] = dict(ENV_ALIASES)
    for key in top:
        by_name[f"{ENV_PREFIX}{key.upper()}"] = (None, key)
    for section, cls in sections.items():
        for f in dataclasses.fields(cls):
            by_name[f"{ENV_PREFIX}{section.upper()}_{f.name.upper()}"] = (section, f.name)
    out: dict[tuple[str | None, str], tuple[str, str]] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name in NON_CONFIG_ENV:
            continue
        if name.startswith(NON_CONFIG_ENV_PREFIXES):
            continue
        if name not in by_name:
            raise ConfigError(f"unknown environment variable {name} (no such setting)")
        out[by_name[name]] = (value, name)
    return out


def _build(
    raw: Mapping[str, Any],
    overrides: Mapping[tuple[str | None, str], tuple[str, str]],
    source: str,
) -> Config:
    sections = _sections()
    top_values: dict[str, Any] = {}
    for key, typ in _top_level_keys().items():
        if (None, key) in overrides:
            text, var = overrides[(None, key)]
            top_values[key] = _from_env_text(text, typ, key, var)
        elif key in raw:
            top_values[key] = _check_type(raw[key], typ, key, source)
    section_values: dict[str, Any] = {}
    for section, cls in sections.items():
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        table = raw.get(section, {})
        for f in dataclasses.fields(cls):
            dotted = f"{section}.{f.name}"
            if (section, f.name) in overrides:
                text, var = overrides[(section, f.name)]
                values[f.name] = _from_env_text(text, hints[f.name], dotted, var)
            elif f.name in table:
                values[f.name] = _check_type(table[f.name], hints[f.name], dotted, source)
        section_values[section] = cls(**values)
    for key, cls in _TABLE_LISTS.items():
        hints = typing.get_type_hints(cls)
        entries = []
        for index, table in enumerate(raw.get(key, [])):
            values = {
                name: _check_type(value, hints[name], f"{key}[{index}].{name}", source)
                for name, value in table.items()
            }
            entries.append(cls(**values))
        section_values[key] = entries
    config = Config(**top_values, **section_values, source=source)
    check_config(config)
    return config


def _type_name(typ: Any) -> str:
    if typing.get_origin(typ) is list:
        return "a list of numbers" if typing.get_args(typ) == (float,) else "a list of strings"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        typ, str(typ)
    )


def _check_type(value: Any, typ: Any, key: str, source: str) -> Any:
    ok: bool
    if typ is bool:
        ok = isinstance(value, bool)
    elif typ is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif typ is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif typ is str:
        ok = isinstance(value, str)
    elif typing.get_origin(typ) is list and typing.get_args(typ) == (float,):
        ok = isinstance(value, list) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value
        )
        value = [float(v) for v in value] if ok else value
    elif typing.get_origin(typ) is list:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:  # pragma: no cover - a new field type without a rule is a programming error
        raise TypeError(f"no type rule for {key}: {typ}")
    if not ok:
        raise ConfigError(f"{key} in {source} must be {_type_name(typ)}, got {value!r}")
    return value


def _from_env_text(text: str, typ: Any, key: str, var: str) -> Any:
    try:
        if typ is bool:
            lowered = text.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(text)
        if typ is int:
            return int(text.strip())
        if typ is float:
            return float(text.strip())
        if typing.get_origin(typ) is list:
            parts = [part.strip() for part in text.split(",") if part.strip()]
            return [float(p) for p in parts] if typing.get_args(typ) == (float,) else parts
        return text
    except ValueError:
        raise ConfigError(f"{key} must be {_type_name(typ)}, got {text!r} (from {var})") from None


def as_toml(config: Config) -> str:
    """Renders the effective configuration as TOML, for ``echo-agent config show``."""
    lines = [f"# effective configuration (file: {config.source})", f"home = {_toml(config.home)}"]
    for section in _sections():
        lines.append("")
        lines.append(f"[{section}]")
        for f in dataclasses.fields(getattr(config, section)):
            lines.append(f"{f.name} = {_toml(getattr(getattr(config, section), f.name))}")
    for key in _TABLE_LISTS:
        for entry in getattr(config, key):
            lines.append("")
            lines.append(f"[[{key}]]")
            for f in dataclasses.fields(entry):
                lines.append(f"{f.name} = {_toml(getattr(entry, f.name))}")
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
