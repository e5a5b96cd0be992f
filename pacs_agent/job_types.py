"""The vocabulary of jobs: their kinds and lanes, the outcomes a runner may raise, the retry
back-off, and what recovery reports.

Why a module of its own: the deliveries, the queue backends and the job table's functions all
name these; keeping them apart from the SQL lets each of those import them without the rest.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pacs_agent.errors import EchoAgentError
from pacs_agent.states import TERMINAL_JOB_STATES

KIND_ANALYZE = "analyze"
KIND_DELIVER_DICOM = "deliver_dicom"  # one artifact to one PACS destination by C-STORE
KIND_DELIVER_FHIR = "deliver_fhir"  # one FHIR bundle to the EHR
KIND_DELIVER_HL7 = "deliver_hl7"  # one stored ORU^R01 to one HL7 destination over MLLP
KIND_DELIVER_STOW = "deliver_stow"  # one DICOM artifact to one DICOMweb destination by STOW-RS
DELIVERY_KINDS = (KIND_DELIVER_DICOM, KIND_DELIVER_FHIR, KIND_DELIVER_HL7, KIND_DELIVER_STOW)
# which kinds a worker claims: None = every kind
LANE_ANALYSIS = "analysis"  # every kind but the deliveries
LANE_DELIVERY = "delivery"  # deliveries only
LANES = (LANE_ANALYSIS, LANE_DELIVERY)
TERMINAL_STATES = TERMINAL_JOB_STATES
# last_error is Text, but a whole traceback in a status column helps no reader
MAX_ERROR_CHARS = 2000


class PermanentJobError(EchoAgentError):
    """Retrying cannot help (corrupt pixel data, a file missing from the store): fail now."""


class RetryLater(EchoAgentError):  # noqa: N818 - it is an outcome, not a fault
    """The attempt failed and another may succeed after ``delay_s`` (a delivery's own back-off
    policy, which differs from the queue's): back to ``queued``, due then."""

    def __init__(self, message: str, delay_s: float) -> None:
        super().__init__(message)
        self.delay_s = delay_s


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off: ``initial_s``, doubled per attempt, never above ``max_s``."""

    initial_s: float
    max_s: float

    def delay_s(self, attempt: int) -> float:
        """Delay before the try that follows ``attempt`` (1-based)."""
        if attempt < 1:
            raise ValueError(f"attempt is 1-based, got {attempt}")
        return min(self.max_s, self.initial_s * 2.0 ** (attempt - 1))


# The defaults of [queue] backoff_initial_s / backoff_max_s: they suit minute-long analyses.
DEFAULT_JOB_BACKOFF = Backoff(initial_s=5.0, max_s=300.0)


@dataclass(frozen=True)
class Recovery:
    """What start-up recovery did: jobs put back on the queue and jobs out of attempts."""

    requeued: tuple[int, ...]
    failed: tuple[int, ...]


def utc(value: dt.datetime) -> dt.datetime:
    """SQLite hands back naive datetimes (stored as UTC); PostgreSQL aware ones."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value
