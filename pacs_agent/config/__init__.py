"""Node configuration: one TOML file plus ``ECHO_AGENT_*`` environment overrides.

Every default runs on one machine with nothing else installed (SQLite and the instance store
under ``./var``, DICOM on 11112, web on 127.0.0.1:8080). The package has one module per job:
``sections`` (the dataclasses and their defaults), ``loading`` (file, environment, types,
``as_toml``) and ``validate`` (ranges and rules across sections); everything public is
re-exported here, so ``from pacs_agent.config import Config`` is the import to use.
"""

from __future__ import annotations

from pacs_agent.config.loading import (
    CONFIG_FILE_ENV,
    DEFAULT_CONFIG_FILENAME,
    ENV_ALIASES,
    ENV_PREFIX,
    NON_CONFIG_ENV,
    NON_CONFIG_ENV_PREFIXES,
    as_toml,
    load_config,
)
from pacs_agent.config.sections import (
    Config,
    ConfigError,
    DatabaseConfig,
    DestinationConfig,
    DicomConfig,
    DicomWebConfig,
    DicomwebDestinationConfig,
    EhrConfig,
    ExportConfig,
    GateConfig,
    Hl7DestinationConfig,
    LlmConfig,
    LoggingConfig,
    ModelsConfig,
    QueueConfig,
    SelectionConfig,
    StoreConfig,
    WebConfig,
)
from pacs_agent.config.validate import (
    check_config,
    check_dicomweb_destinations,
    check_hl7_destinations,
    gate_thresholds,
)

__all__ = [
    "CONFIG_FILE_ENV",
    "DEFAULT_CONFIG_FILENAME",
    "ENV_ALIASES",
    "ENV_PREFIX",
    "NON_CONFIG_ENV",
    "NON_CONFIG_ENV_PREFIXES",
    "Config",
    "ConfigError",
    "DatabaseConfig",
    "DestinationConfig",
    "DicomConfig",
    "DicomWebConfig",
    "DicomwebDestinationConfig",
    "EhrConfig",
    "ExportConfig",
    "GateConfig",
    "Hl7DestinationConfig",
    "LlmConfig",
    "LoggingConfig",
    "ModelsConfig",
    "QueueConfig",
    "SelectionConfig",
    "StoreConfig",
    "WebConfig",
    "as_toml",
    "check_config",
    "check_dicomweb_destinations",
    "check_hl7_destinations",
    "gate_thresholds",
    "load_config",
]
