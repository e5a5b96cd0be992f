"""The models a node process holds and when they load: the CNNs and (for drafts) the language
model in a background warm-up at start, so the first study does not wait and a bad preset
shows at once, with highdicom's standard tables parsed right after the CNNs so the first job's
first SEG/SR does not pay for them; and the study chat's loader, which shares the drafts'
language model. ``node`` wires these into the running process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inference.model_cache import ModelCache
from pacs_agent.config import Config
from pacs_agent.drafting import TextModelCache
from pacs_agent.readiness import CNN, LANGUAGE_MODEL, ModelStatus
from reporting.warmup import warm_dicom_writers

log = logging.getLogger("echo_agent.node")


def language_model_needs_conversion(config: Config) -> bool:
    """True when loading the language model will first convert the embedded GGUF (first run)."""
    from llm.embedded import cache_is_complete, default_cache_dir

    if config.llm.model_path:
        return False
    cache = (
        Path(config.llm.cache_dir).expanduser()
        if config.llm.cache_dir
        else default_cache_dir(config.home_path)
    )
    return not cache_is_complete(cache)


def warm_models(
    config: Config, models: ModelCache, text_models: TextModelCache, status: ModelStatus
) -> threading.Thread:
    """Loads the CNNs now, in the background, so the first study does not wait and a bad preset
    shows at once; then the language model when drafts use it (a first run converts the
    embedded one, about a minute). ``status`` follows each step for the banner and /readyz;
    the CNNs gate readiness, the language model does not (a draft falls back without it)."""
    status.expect(CNN)
    warm_language_model = config.llm.draft
    if warm_language_model:
        status.expect(LANGUAGE_MODEL, required=False)

    def warm() -> None:
        log.info("loading %s models ...", config.models.preset)
        try:
            status.track(CNN, models.get)
        except Exception as exc:
            log.error("models not usable: %s (jobs will fail until fixed)", exc)
        # after the CNNs, so readiness does not wait for it; before the language model, which
        # can take a minute while the first job already writes its objects
        warm_dicom_tables()
        if warm_language_model:
            state = "converting" if language_model_needs_conversion(config) else "loading"
            try:
                status.track(LANGUAGE_MODEL, text_models.get, state)
            except Exception as exc:
                log.error("language model not usable: %s (drafts use the template)", exc)

    thread = threading.Thread(target=warm, name="model-warm-up", daemon=True)
    thread.start()
    return thread


def warm_dicom_tables() -> None:
    """Parses highdicom's standard tables (``reporting.warmup``) so the first job's first SEG
    or SR does not; a failure is logged, not raised: that job then parses them itself."""
    try:
        log.info("highdicom standard tables parsed in %.2f s", warm_dicom_writers())
    except Exception as exc:
        log.error("highdicom standard tables not pre-loaded: %s (the first job loads them)", exc)


def chat_backend_for(config: Config, text_models: TextModelCache | None = None) -> Any:
    """The language model behind the study chat, loaded on the first question (so the node
    serves at once) from ``text_models``, the cache the job drafts use, so the process holds
    one copy; None (the measurement-quoting fallback) when ``llm.chat`` is off."""
    if not config.llm.chat:
        return None
    from llm.chat_service import language_model_backend

    cache = text_models if text_models is not None else TextModelCache(config)
    return language_model_backend(chat_model_loader(config, cache))


def uses_chat_adapter(config: Config) -> bool:
    """The shipped chat adapter was trained on the embedded SmolLM2-135M: it applies only when
    ``llm.model_path`` is empty. With a model of the site's own the chat uses that model plain
    (merging would fail on every question with a base-model mismatch)."""
    return config.llm.chat_adapter and not config.llm.model_path


def chat_model_loader(config: Config, cache: TextModelCache) -> Callable[[], Any]:
    """Loads the chat's model on first use: the drafts' model from ``cache``, or, with
    ``llm.chat_adapter``, a copy of it with the stage-2 chat adapter merged in (the drafts keep
    the plain model: the adapter was trained on chat answers only)."""

    def load() -> Any:
        base = cache.get()
        if not uses_chat_adapter(config):
            return base
        from llm.chat_adapter import load_chat_adapter

        return load_chat_adapter(base)

    return load
