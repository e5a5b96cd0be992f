"""Validation of a built configuration: ranges, choices, URLs, AE titles, list entries.

Runs after the types are checked (``loading``), on the whole ``Config``, because some rules
span sections (TLS files set together, destination names unique).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from urllib.parse import urlsplit

from inference.gate import GateThresholds
from pacs_agent.config.sections import (
    Config,
    ConfigError,
    DicomwebDestinationConfig,
    EhrConfig,
    GateConfig,
    Hl7DestinationConfig,
    QueueConfig,
)

_CHOICES: dict[tuple[str, str], frozenset[str]] = {
    ("queue", "backend"): frozenset({"local", "celery"}),
    ("models", "preset"): frozenset({"demo", "echonet"}),
    ("models", "device"): frozenset({"auto", "cpu", "cuda"}),
    ("llm", "device"): frozenset({"auto", "cpu", "cuda"}),
    ("logging", "level"): frozenset({"DEBUG", "INFO", "WARNING", "ERROR"}),
    ("logging", "format"): frozenset({"text", "json"}),
}


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


def check_config(config: Config) -> None:
    """Every rule on the values of ``config``; raises ``ConfigError`` naming the key."""
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


def gate_thresholds(gate: GateConfig) -> GateThresholds:
    """The configured thresholds as the gate takes them."""
    values = {f.name: getattr(gate, f.name) for f in dataclasses.fields(GateThresholds)}
    return GateThresholds(**values)


def _check_gate(gate: GateConfig) -> None:
    try:
        gate_thresholds(gate)
    except ValueError as exc:
        raise ConfigError(f"gate: {exc}") from exc
