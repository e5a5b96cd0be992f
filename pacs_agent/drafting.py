"""The language-model draft inside a job, and the one copy of the language model per process.

A job drafts its preliminary report with ``llm.drafting.draft_report``: the structured
text from the measurements (always correct) and a narrative from the configured language model,
checked by the grounding guard. The model is loaded once per process, on first use, by
whichever thread asks first (job workers and the web chat share it through ``TextModelCache``),
because a second copy would only cost memory and load time.

A draft is never a reason to fail a job: a model that cannot load, or a generation that errors,
leaves the structured text as the report, an empty narrative, verdict ``not_checked`` and a
reason that says why, so the reviewer sees that the model did not run.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from inference.types import Measurements
from llm.drafting import (
    DRAFT_MAX_NEW_TOKENS,
    Draft,
    draft_report,
)
from llm.types import Verdict
from pacs_agent.config import Config
from pacs_agent.errors import EchoAgentError
from reporting.body_size import BodySize
from reporting.types import Algorithms

if TYPE_CHECKING:
    from llm.backend import GenerationLimits, LlmSettings, TextModel

log = logging.getLogger("echo_agent.drafting")

UNAVAILABLE = "language model unavailable"
FAILED = "language model failed"


class LanguageModelUnavailableError(EchoAgentError, RuntimeError):
    """The configured language model could not be loaded (the cause is in the message)."""


def llm_settings(config: Config) -> LlmSettings:
    from llm.backend import LlmSettings

    return LlmSettings(
        model_path=config.llm.model_path,
        cache_dir=config.llm.cache_dir,
        device=config.llm.device,
        max_new_tokens=config.llm.max_new_tokens,
        max_time_s=config.llm.max_time_s,
    )


def configured_model_name(config: Config) -> str:
    """What the logs call the model before it is loaded (the loaded one names itself)."""
    from llm.embedded import EMBEDDED_NAME

    return config.llm.model_path or EMBEDDED_NAME


class TextModelCache:
    """The configured language model, loaded on the first ``get`` (once, however many threads
    ask at the same time). A failed load is remembered and raised again at once: retrying a
    conversion or a missing directory on every job would only slow the jobs down; fix the
    configuration and restart the node.

    ``loader`` replaces the configured model (``llm.*``) with another source of one: a test's
    recording wrapper, or a model a caller has already loaded."""

    def __init__(self, config: Config, loader: Callable[[], TextModel] | None = None) -> None:
        self._config = config
        self._loader = loader or self._open_configured
        self._lock = threading.Lock()
        self._model: TextModel | None = None
        self._error: str | None = None

    def get(self) -> TextModel:
        with self._lock:
            if self._model is None and self._error is None:
                self._model, self._error = self._load()
            if self._model is None:
                raise LanguageModelUnavailableError(self._error or "not loaded")
            return self._model

    def _open_configured(self) -> TextModel:
        from llm.backend import open_text_model

        return open_text_model(llm_settings(self._config), self._config.home_path, log.info)

    def _load(self) -> tuple[TextModel | None, str | None]:
        started = time.perf_counter()
        log.info("loading the language model %s ...", configured_model_name(self._config))
        try:
            model = self._loader()
        except Exception as exc:  # a missing directory, a broken cache, out of memory ...
            log.error("language model %s not usable: %s", configured_model_name(self._config), exc)
            return None, f"{type(exc).__name__}: {exc}"
        log.info("language model %s loaded in %.1f s", model.name, time.perf_counter() - started)
        return model, None


def draft_limits(config: Config) -> GenerationLimits:
    """Each try of a draft: at most ``llm.max_new_tokens`` and never more than a narrative needs
    (``DRAFT_MAX_NEW_TOKENS``), within ``llm.max_time_s`` of wall time."""
    from llm.backend import GenerationLimits

    return GenerationLimits(
        min(config.llm.max_new_tokens, DRAFT_MAX_NEW_TOKENS), config.llm.max_time_s
    )


def header_sex(value: object) -> str | None:
    """The DICOM Patient's Sex as drafting uses it: "M", "F", or None for anything else."""
    text = str(value or "").strip().upper()
    return text if text in ("M", "F") else None


@dataclass(frozen=True)
class TimedDraft:
    draft: Draft
    seconds: float
    model_name: str  # the model that drafted, or the configured one when it could not


def draft_for_job(
    measurements: Measurements,
    *,
    sex: str | None,
    algorithms: Algorithms,
    config: Config,
    text_models: TextModelCache | None,
    body: BodySize | None = None,
) -> TimedDraft:
    """The job's draft under ``config.llm``: no model when ``llm.draft`` is off; the structured
    fallback, with the reason, when the model cannot load or generation fails.

    ``text_models`` None (a caller without a shared cache) loads the model for this draft only.
    ``body``: the loop header's checked height and weight, which index the LV volumes."""
    started = time.perf_counter()
    demo = algorithms.demo_models
    if not config.llm.draft:
        draft = draft_report(measurements, None, sex, demo, algorithms=algorithms, body=body)
        return TimedDraft(draft, time.perf_counter() - started, "")
    name = configured_model_name(config)
    cache = text_models if text_models is not None else TextModelCache(config)
    try:
        model = cache.get()
    except LanguageModelUnavailableError as exc:
        reason = f"{UNAVAILABLE}: {exc}"
        log.warning("report drafted without the language model (%s)", reason)
        draft = _fallback(measurements, sex, algorithms, reason, body)
        return TimedDraft(draft, time.perf_counter() - started, name)
    try:
        draft = draft_report(
            measurements,
            model,
            sex,
            demo,
            algorithms=algorithms,
            limits=draft_limits(config),
            body=body,
        )
    except Exception as exc:  # generation errors must not fail the job
        reason = f"{FAILED}: {type(exc).__name__}: {exc}"
        log.warning("report drafted without a narrative (%s)", reason, exc_info=True)
        draft = _fallback(measurements, sex, algorithms, reason, body)
    return TimedDraft(draft, time.perf_counter() - started, model.name)


def _fallback(
    measurements: Measurements,
    sex: str | None,
    algorithms: Algorithms,
    reason: str,
    body: BodySize | None = None,
) -> Draft:
    draft = draft_report(
        measurements, None, sex, algorithms.demo_models, algorithms=algorithms, body=body
    )
    return dataclasses.replace(draft, reasons=(reason,))


def report_parts(draft: Draft) -> tuple[str, str]:
    """(structured, narrative) as a report version stores them. A replaced narrative is the
    structured text itself; it is stored empty, so the review page, the SR and the signed
    report do not say everything twice (the verdict and reasons say what happened)."""
    narrative = "" if draft.verdict == Verdict.REPLACED else draft.narrative_text
    return draft.structured_text, narrative


def report_text(structured: str, narrative: str) -> str:
    """The words the SR, PDF and FHIR carry: the structured part, then the narrative (the same
    shape as the signed report's, ``web.signoff.report_text``)."""
    return "\n\n".join(p.strip() for p in (structured, narrative) if p.strip())
