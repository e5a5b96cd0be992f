"""The configuration's sections: one frozen dataclass per TOML table, with its defaults.

Every default runs on one machine with nothing else installed; the fields' types are what the
loader (``pacs_agent.config.loading``) checks values against, so a new field needs only a
type the loader knows (bool, int, float, str, list of str or float).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pacs_agent.errors import EchoAgentError


class ConfigError(EchoAgentError, ValueError):
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
    # read each received PDU into one buffer (recv_into) rather than with pynetdicom's 4 KiB
    # recv loop: faster ingest, relying on a private pynetdicom API (``dicom.pdu_limits``)
    one_buffer_pdu_reads: bool = True


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
    min_cavity_edge_contrast: float = 0.25
    min_systolic_cavity_edge_contrast: float = 0.33
    ood_reference: str = ""


@dataclass(frozen=True)
class LlmConfig:
    """The language model behind the report draft and the chat. ``model_path`` empty: the
    embedded SmolLM2-135M, converted once into ``cache_dir`` (empty: ``<home>/models``);
    otherwise any local Hugging Face model directory. ``draft = false`` reports the structured
    text only (no narrative); ``chat = false`` answers by quoting the measurements only.
    ``chat_adapter = true`` (the default): the chat's model sentence comes from the embedded
    model with the shipped stage-2 chat adapter (``llm/weights/chat_adapter``) merged in; it
    beat the plain model on ``echo-agent evaluate chat`` and shares all but its adapted
    weights with the drafts' model (README, "Stage 2, chat adapter"); false: the plain model.
    The adapter fits the embedded model only: with ``model_path`` set it is not used."""

    draft: bool = True
    chat: bool = True
    chat_adapter: bool = True
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
