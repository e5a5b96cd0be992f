"""Node configuration: one TOML file plus ``ECHO_AGENT_*`` environment overrides.

Every default runs on one machine with nothing else installed (SQLite and the instance store
under ``./var``, DICOM on 11112, web on 127.0.0.1:8080). A mistake in the file or the
environment stops start-up with one line that names the key, because a node that silently
ignores a typo in ``allowed_calling_aes`` or a port is worse than one that does not start.

Environment variables map to keys as ``ECHO_AGENT_<SECTION>_<KEY>`` (``ECHO_AGENT_DICOM_PORT``
-> ``dicom.port``); top-level keys have no section (``ECHO_AGENT_HOME``); a few short aliases
are fixed by the design (``ECHO_AGENT_AE_TITLE``). Lists are comma-separated in the environment.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from inference.gate import GateThresholds

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


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


@dataclass(frozen=True)
class DicomConfig:
    """The DICOM listener (storage SCP) and how the node calls back to PACS."""

    host: str = "127.0.0.1"
    port: int = 11112
    ae_title: str = "ECHOAGENT"
    allowed_calling_aes: list[str] = field(default_factory=list)
    max_associations: int = 10
    stable_age_s: float = 10.0
    min_free_disk_mb: int = 1024
    # refuse associations addressed to another AE title (a misrouted PACS is a data leak)
    check_called_ae: bool = True
    # TLS: all three set means TLS with client certificates required (signed by tls_ca_file)
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_ca_file: str = ""


@dataclass(frozen=True)
class DestinationConfig:
    """A peer the node sends results to by C-STORE (a PACS) and checks with C-ECHO."""

    name: str = ""
    ae_title: str = ""
    host: str = ""
    port: int = 104
    tls: bool = False
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""


@dataclass(frozen=True)
class Hl7DestinationConfig:
    """A peer the node sends ORU^R01 results to over MLLP (an EHR or interface engine).
    ``receiving_application`` / ``receiving_facility`` go to MSH-5 / MSH-6 (HD namespace ids);
    2575 is the port IANA registers for HL7 over MLLP."""

    name: str = ""
    host: str = ""
    port: int = 2575
    timeout_s: float = 30.0
    receiving_application: str = ""
    receiving_facility: str = ""


def check_hl7_destinations(entries: list[Hl7DestinationConfig]) -> None:
    """Name and host set, names unique, a port and a positive timeout; the MSH-5/6 values
    without HL7 delimiters (a namespace id, not a composite) and at most 20 characters."""
    names: set[str] = set()
    for index, dest in enumerate(entries):
        where = f"hl7_destinations[{index}]"
        for required in ("name", "host"):
            if not getattr(dest, required).strip():
                raise ConfigError(f"{where}.{required} must be set")
        if dest.name in names:
            raise ConfigError(f"{where}.name {dest.name!r} is used twice")
        names.add(dest.name)
        if not 1 <= dest.port <= 65535:
            raise ConfigError(f"{where}.port must be between 1 and 65535, got {dest.port}")
        if dest.timeout_s <= 0:
            raise ConfigError(f"{where}.timeout_s must be positive, got {dest.timeout_s}")
        for key in ("receiving_application", "receiving_facility"):
            value = getattr(dest, key)
            if len(value) > 20 or any(c in value for c in "|^~\\&") or not value.isprintable():
                raise ConfigError(
                    f"{where}.{key} must be at most 20 printable characters without "
                    f"|, ^, ~, \\ or &, got {value!r}"
                )


@dataclass(frozen=True)
class DicomwebDestinationConfig:
    """A peer the node sends its DICOM results to by STOW-RS (``pacs_agent.stow_delivery``):
    ``url`` is the DICOMweb root (the service answers ``POST <url>/studies``);
    ``bearer_token_env`` names the environment variable holding a bearer token (the token
    itself never sits in the file). Tries and back-off are ``[export]``'s, as for C-STORE."""

    name: str = ""
    url: str = ""
    timeout_s: float = 30.0
    bearer_token_env: str = ""


def check_dicomweb_destinations(entries: list[DicomwebDestinationConfig]) -> None:
    """Name set and unique, an http(s) URL, a positive timeout."""
    names: set[str] = set()
    for index, dest in enumerate(entries):
        where = f"dicomweb_destinations[{index}]"
        if not dest.name.strip():
            raise ConfigError(f"{where}.name must be set")
        if dest.name in names:
            raise ConfigError(f"{where}.name {dest.name!r} is used twice")
        names.add(dest.name)
        if not dest.url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.url must be an http:// or https:// URL, got {dest.url!r}")
        if dest.timeout_s <= 0:
            raise ConfigError(f"{where}.timeout_s must be positive, got {dest.timeout_s}")


@dataclass(frozen=True)
class ExportConfig:
    """Retries with exponential back-off, then a final failed state per destination."""

    max_attempts: int = 5
    backoff_initial_s: float = 2.0
    backoff_max_s: float = 300.0


@dataclass(frozen=True)
class EhrConfig:
    """FHIR delivery to the EHR. ``fhir_base_url`` empty: no delivery (the bundles are still
    written and served read-only under ``/fhir``). ``bearer_token_env`` names the environment
    variable that holds the token, so the secret never sits in the TOML file."""

    fhir_base_url: str = ""
    timeout_s: float = 30.0
    max_attempts: int = 5
    backoff_initial_s: float = 2.0
    backoff_max_s: float = 300.0
    bearer_token_env: str = ""


@dataclass(frozen=True)
class SelectionConfig:
    """Which loops are analysed: metadata patterns for the A4C view, and a minimum length."""

    view_patterns: list[str] = field(
        default_factory=lambda: [
            "A4C",
            "4CH",
            "4 CH",
            "AP4",
            "APICAL 4",
            "APICAL FOUR",
            "4 CHAMBER",
            "FOUR CHAMBER",
        ]
    )
    min_duration_s: float = 1.0
    # "": metadata rules only; "phantom": the bundled phantom-trained view classifier
    view_classifier: str = ""


@dataclass(frozen=True)
class WebConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    # /metrics: empty = answered to loopback clients only; set = "Authorization: Bearer <token>"
    metrics_token: str = ""
    # reverse proxies (addresses or CIDR networks) whose X-Forwarded-For is believed; empty:
    # the TCP peer is the client (an untrusted peer could forge the header to dodge login limits)
    trusted_proxies: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DicomWebConfig:
    """DICOMweb at ``/dicomweb`` on the web port (``web.dicomweb``): STOW-RS into the same store
    and checks as C-STORE, QIDO-RS and WADO-RS over what the node holds. ``max_request_mb``: the
    largest STOW-RS request body (a larger one is refused with 413 before it is stored)."""

    enabled: bool = True
    max_request_mb: int = 1024  # waitress, the web server, refuses bodies over 1 GiB


@dataclass(frozen=True)
class DatabaseConfig:
    """``url`` empty means SQLite at ``<home>/echo-agent.db``."""

    url: str = ""
    echo_sql: bool = False
    # PostgreSQL connection pool (SQLite ignores these): per process, so size it per role
    pool_size: int = 5
    max_overflow: int = 10
    # connections older than this are replaced (firewalls and proxies drop idle ones silently)
    pool_recycle_s: int = 1800


@dataclass(frozen=True)
class StoreConfig:
    """``path`` empty means ``<home>/store``."""

    path: str = ""


@dataclass(frozen=True)
class QueueConfig:
    """``local``: worker threads inside the node (``workers`` of them). ``celery``: the node
    publishes job ids to ``broker_url`` (redis:// or amqp://) and ``echo-agent worker``
    processes run them (``workers`` = each worker's concurrency); the jobs table stays the
    truth, so a lost or repeated message loses or repeats no job."""

    backend: str = "local"
    workers: int = 1
    max_attempts: int = 3
    # a failed attempt waits backoff_initial_s, doubled per attempt, at most backoff_max_s
    backoff_initial_s: float = 5.0
    backoff_max_s: float = 300.0
    broker_url: str = ""
    # Redis: a message taken by a worker that died comes back after this long unacknowledged
    visibility_timeout_s: float = 600.0
    # a running job whose heartbeat is older than this lost its worker and is taken over
    heartbeat_stale_s: float = 60.0
    # a queued job due this long without a worker taking it is published again (lost message)
    republish_after_s: float = 120.0


@dataclass(frozen=True)
class ModelsConfig:
    """Which networks measure the loops. ``demo``: the shipped phantom-trained weights (every
    surface says so). ``echonet``: width 1.0 from ``seg_weights`` / ``ef_weights`` (the
    published EchoNet-Dynamic .pt files or ``echo-agent train`` output), with the input
    normalisation ``mean`` / ``std`` (0-255 scale, per RGB channel) that the .pt files lack."""

    preset: str = "demo"
    device: str = "auto"
    seg_weights: str = ""
    ef_weights: str = ""
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    # EF on every clip start (EchoNet's "all clips"): 1 = every start; larger skips starts
    all_clip_stride: int = 1


@dataclass(frozen=True)
class GateConfig:
    """The validity gate's thresholds (``inference.gate.GateThresholds``: defaults chosen by
    ``echo-agent evaluate gate``, see the README). ``ood_reference``: a training-set reference
    file for the out-of-distribution check; empty uses the one shipped with the model set
    (``gate_reference.json`` beside the demo weights), and none disables that one check."""

    min_lv_coverage: float = 0.9
    min_segmentation_confidence: float = 0.72
    min_area_consistency: float = 0.8
    max_ef_disagreement_points: float = 15.0
    max_heart_rate_disagreement_fraction: float = 0.15
    max_ood_score: float = 3.0
    ood_reference: str = ""


@dataclass(frozen=True)
class LlmConfig:
    """The language model behind the report draft and the chat. ``model_path`` empty: the
    embedded SmolLM2-135M, converted once into ``cache_dir`` (empty: ``<home>/models``);
    otherwise any local Hugging Face model directory. ``draft = false`` reports the structured
    text only (no narrative); ``chat = false`` answers by quoting the measurements only."""

    draft: bool = True
    chat: bool = True
    model_path: str = ""
    cache_dir: str = ""
    device: str = "auto"
    max_new_tokens: int = 256
    max_time_s: float = 60.0


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "INFO"
    # "text": one readable line per event; "json": one JSON object per line (for collectors)
    format: str = "text"


@dataclass(frozen=True)
class Config:
    home: str = "./var"
    dicom: DicomConfig = field(default_factory=DicomConfig)
    web: WebConfig = field(default_factory=WebConfig)
    dicomweb: DicomWebConfig = field(default_factory=DicomWebConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    ehr: EhrConfig = field(default_factory=EhrConfig)
    llm: LlmConfig = field(default_factory=LlmConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    destinations: list[DestinationConfig] = field(default_factory=list)
    hl7_destinations: list[Hl7DestinationConfig] = field(default_factory=list)
    dicomweb_destinations: list[DicomwebDestinationConfig] = field(default_factory=list)
    source: str = field(default="defaults", compare=False)

    @property
    def home_path(self) -> Path:
        return Path(self.home).expanduser().resolve()

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite:///{self.home_path / 'echo-agent.db'}"

    @property
    def store_path(self) -> Path:
        if self.store.path:
            return Path(self.store.path).expanduser().resolve()
        return self.home_path / "store"


# Keys whose value is read by other code from the file but is not itself a setting.
_NOT_SETTINGS = frozenset({"source"})
# Arrays of tables ([[destinations]]): set in the file only, one table per entry.
_TABLE_LISTS: dict[str, type] = {
    "destinations": DestinationConfig,
    "hl7_destinations": Hl7DestinationConfig,
    "dicomweb_destinations": DicomwebDestinationConfig,
}

_CHOICES: dict[tuple[str, str], frozenset[str]] = {
    ("queue", "backend"): frozenset({"local", "celery"}),
    ("models", "preset"): frozenset({"demo", "echonet"}),
    ("models", "device"): frozenset({"auto", "cpu", "cuda"}),
    ("llm", "device"): frozenset({"auto", "cpu", "cuda"}),
    ("logging", "level"): frozenset({"DEBUG", "INFO", "WARNING", "ERROR"}),
    ("logging", "format"): frozenset({"text", "json"}),
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
    _check_ranges(config)
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


def _check_ranges(config: Config) -> None:
    for name, port in (("dicom.port", config.dicom.port), ("web.port", config.web.port)):
        if not 1 <= port <= 65535:
            raise ConfigError(f"{name} must be between 1 and 65535, got {port}")
    _check_ae_title("dicom.ae_title", config.dicom.ae_title)
    for ae in config.dicom.allowed_calling_aes:
        _check_ae_title("dicom.allowed_calling_aes", ae)
    positive = {
        "dicom.max_associations": config.dicom.max_associations,
        "queue.workers": config.queue.workers,
        "queue.max_attempts": config.queue.max_attempts,
        "database.pool_size": config.database.pool_size,
        "dicomweb.max_request_mb": config.dicomweb.max_request_mb,
    }
    for name, value in positive.items():
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    if config.database.max_overflow < 0 or config.database.pool_recycle_s < 0:
        raise ConfigError("database.max_overflow and database.pool_recycle_s must not be negative")
    if config.dicom.stable_age_s < 0 or config.dicom.min_free_disk_mb < 0:
        raise ConfigError("dicom.stable_age_s and dicom.min_free_disk_mb must not be negative")
    for (section, key), allowed in _CHOICES.items():
        value = getattr(getattr(config, section), key)
        if value not in allowed:
            raise ConfigError(
                f"{section}.{key} must be one of {', '.join(sorted(allowed))}, got {value!r}"
            )
    if not config.home:
        raise ConfigError("home must not be empty")
    tls = (config.dicom.tls_cert_file, config.dicom.tls_key_file, config.dicom.tls_ca_file)
    if any(tls) and not all(tls):
        raise ConfigError(
            "dicom.tls_cert_file, dicom.tls_key_file and dicom.tls_ca_file are set together"
        )
    names: set[str] = set()
    for index, dest in enumerate(config.destinations):
        where = f"destinations[{index}]"
        for required in ("name", "ae_title", "host"):
            if not getattr(dest, required):
                raise ConfigError(f"{where}.{required} must be set")
        if dest.name in names:
            raise ConfigError(f"{where}.name {dest.name!r} is used twice")
        names.add(dest.name)
        _check_ae_title(f"{where}.ae_title", dest.ae_title)
        if not 1 <= dest.port <= 65535:
            raise ConfigError(f"{where}.port must be between 1 and 65535, got {dest.port}")
    _check_queue(config.queue)
    check_hl7_destinations(config.hl7_destinations)
    check_dicomweb_destinations(config.dicomweb_destinations)
    for entry in config.web.trusted_proxies:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(
                f"web.trusted_proxies entries must be IP addresses or networks, got {entry!r}"
            ) from None
    for name, value in (
        ("queue.backoff_initial_s", config.queue.backoff_initial_s),
        ("queue.backoff_max_s", config.queue.backoff_max_s),
        ("export.backoff_initial_s", config.export.backoff_initial_s),
        ("export.backoff_max_s", config.export.backoff_max_s),
    ):
        if value < 0:
            raise ConfigError(f"{name} must not be negative, got {value}")
    models = config.models
    for name, values in (("models.mean", models.mean), ("models.std", models.std)):
        if values and len(values) != 3:
            raise ConfigError(f"{name} must have 3 values (R, G, B), got {len(values)}")
    if any(v <= 0 for v in models.std):
        raise ConfigError("models.std values must be positive")
    if models.preset == "echonet" and not models.seg_weights:
        raise ConfigError(
            "models.preset 'echonet' needs models.seg_weights (a .pt or .safetensors)"
        )
    if models.all_clip_stride < 1:
        raise ConfigError(
            f"models.all_clip_stride must be at least 1, got {models.all_clip_stride}"
        )
    _check_gate(config.gate)
    if config.llm.max_new_tokens < 1 or config.llm.max_time_s <= 0:
        raise ConfigError("llm.max_new_tokens and llm.max_time_s must be positive")
    if config.export.max_attempts < 1:
        raise ConfigError(
            f"export.max_attempts must be at least 1, got {config.export.max_attempts}"
        )
    _check_ehr(config.ehr)


def _check_ehr(ehr: EhrConfig) -> None:
    """The EHR's FHIR base: an absolute http(s) URL without credentials, query or fragment
    (credentials go in the bearer token; the URL is shown on pages and in the audit)."""
    if ehr.fhir_base_url:
        try:
            parts = urlsplit(ehr.fhir_base_url)
            usable = parts.scheme in ("http", "https") and bool(parts.hostname) and (
                parts.port is None or parts.port > 0
            )
        except ValueError:  # a malformed host or port
            usable = False
        if not usable:
            raise ConfigError(
                f"ehr.fhir_base_url must be an http:// or https:// URL, got {ehr.fhir_base_url!r}"
            )
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ConfigError(
                "ehr.fhir_base_url must not carry credentials, a query or a fragment "
                "(use ehr.bearer_token_env for a token)"
            )
        if len(ehr.fhir_base_url) > 200:
            raise ConfigError("ehr.fhir_base_url must be at most 200 characters")
    if ehr.max_attempts < 1:
        raise ConfigError(f"ehr.max_attempts must be at least 1, got {ehr.max_attempts}")
    if ehr.timeout_s <= 0:
        raise ConfigError(f"ehr.timeout_s must be positive, got {ehr.timeout_s}")
    if ehr.backoff_initial_s < 0 or ehr.backoff_max_s < 0:
        raise ConfigError("ehr.backoff_initial_s and ehr.backoff_max_s must not be negative")
    if ehr.bearer_token_env and not ehr.bearer_token_env.replace("_", "").isalnum():
        raise ConfigError(
            f"ehr.bearer_token_env must be an environment variable name, "
            f"got {ehr.bearer_token_env!r}"
        )


def _check_queue(queue: QueueConfig) -> None:
    """The Celery settings: a broker URL the node can use, and timings whose order holds (a
    heartbeat is stamped every third of ``heartbeat_stale_s``, so a live worker never looks
    dead)."""
    if queue.backend == "celery":
        scheme = urlsplit(queue.broker_url).scheme if queue.broker_url else ""
        if scheme not in ("redis", "rediss", "amqp", "amqps", "pyamqp"):
            raise ConfigError(
                "queue.broker_url must be a redis:// or amqp:// URL when queue.backend is "
                f"'celery', got {queue.broker_url!r}"
            )
    for name, value in (
        ("queue.visibility_timeout_s", queue.visibility_timeout_s),
        ("queue.heartbeat_stale_s", queue.heartbeat_stale_s),
        ("queue.republish_after_s", queue.republish_after_s),
    ):
        if value < 3:
            raise ConfigError(f"{name} must be at least 3 seconds, got {value}")


def _check_ae_title(key: str, ae: str) -> None:
    # PS3.5 AE VR: 1-16 characters of the default repertoire, no backslash or control codes,
    # and not all spaces.
    if not ae.strip() or len(ae) > 16 or "\\" in ae or not all(32 <= ord(c) < 127 for c in ae):
        raise ConfigError(f"{key} must be 1-16 printable ASCII characters without '\\', got {ae!r}")


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


def gate_thresholds(gate: GateConfig) -> GateThresholds:
    """The configured thresholds as the gate takes them."""
    values = {f.name: getattr(gate, f.name) for f in dataclasses.fields(GateThresholds)}
    return GateThresholds(**values)


def _check_gate(gate: GateConfig) -> None:
    try:
        gate_thresholds(gate)
    except ValueError as exc:
        raise ConfigError(f"gate: {exc}") from exc
