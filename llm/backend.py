"""The text generation backend: a causal language model on transformers, prompted through its
own chat template, streaming its answer in text chunks under a token limit and a wall-clock
limit.

Decoding is greedy, so one set of measurements gives one draft: a reviewer who regenerates sees
the same text, and the grounding tests are reproducible. Generation runs in a worker thread
(``TextIteratorStreamer``); the consumer of the stream can stop early and the worker stops at
its next token.
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from llm.embedded import EMBEDDED_NAME, default_cache_dir, ensure_embedded_model
from llm.errors import LlmError
from llm.hf_imports import transformers_module

ROLES = ("system", "user", "assistant")
# the consumer waits this long beyond the wall-clock limit before it calls the worker stuck
STREAM_GRACE_S = 30.0
EXIT_JOIN_S = 15.0  # at interpreter exit, how long to wait for a generation to stop


class _LiveGenerations:
    """Generation threads still running, so that the interpreter's exit can stop them.

    Why: a caller may abandon a stream (the chat stops waiting for the model's sentence after a
    deadline; the model may still be reading its prompt). A daemon thread still inside torch
    when the interpreter finalises aborts the process ("terminate called without an active
    exception", exit status 134) after all its work is done. ``close`` at exit asks each
    generation (and each thread that reads one, registered the same way) to stop at its next
    token and waits for it, bounded by ``EXIT_JOIN_S``; from then on no generation starts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[threading.Thread, threading.Event] = {}
        self.closing = False

    def add(self, worker: threading.Thread, stop: threading.Event) -> None:
        with self._lock:
            self._live[worker] = stop

    def discard(self, worker: threading.Thread) -> None:
        with self._lock:
            self._live.pop(worker, None)

    def close(self, timeout_s: float = EXIT_JOIN_S) -> None:
        """At interpreter exit: no generation starts any more, and the running ones stop."""
        with self._lock:
            self.closing = True
        self.stop_running(timeout_s)

    def stop_running(self, timeout_s: float = EXIT_JOIN_S) -> None:
        """Asks every running generation to stop at its next token and waits for them."""
        with self._lock:
            live = list(self._live.items())
        for _, stop in live:
            stop.set()
        deadline = time.monotonic() + timeout_s
        for worker, _ in live:
            worker.join(max(0.0, deadline - time.monotonic()))


LIVE_GENERATIONS = _LiveGenerations()
atexit.register(LIVE_GENERATIONS.close)


class LanguageModelError(LlmError, RuntimeError):
    """Generation failed inside the model (out of memory, a broken model directory...)."""


@dataclass(frozen=True)
class Message:
    """One chat turn. A prompt that ends with an ``assistant`` message gives the opening words
    of the answer: the model continues them, and the generated text is the continuation only."""

    role: str  # "system" | "user" | "assistant"
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"message role must be one of {', '.join(ROLES)}, got {self.role!r}")

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class GenerationLimits:
    """Both limits hold at once: whichever is reached first ends the answer."""

    max_new_tokens: int = 256
    max_time_s: float = 60.0

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if not self.max_time_s > 0:
            raise ValueError("max_time_s must be positive")


DEFAULT_LIMITS = GenerationLimits()


@dataclass(frozen=True)
class Generation:
    """One finished answer and how long it took (for the benchmark and the logs)."""

    text: str
    n_tokens: int
    first_token_s: float | None  # from the call to the first generated token
    total_s: float

    @property
    def tokens_per_s(self) -> float | None:
        """Decoding speed after the first token (prompt processing excluded)."""
        if self.first_token_s is None or self.n_tokens < 2:
            return None
        decode_s = self.total_s - self.first_token_s
        return None if decode_s <= 0 else (self.n_tokens - 1) / decode_s


class TextModel(Protocol):
    """What drafting and chat need from a language model."""

    @property
    def name(self) -> str: ...

    def stream(
        self,
        messages: Sequence[Message],
        limits: GenerationLimits = ...,
        on_done: Callable[[Generation], None] | None = None,
    ) -> Iterator[str]: ...

    def generate(
        self, messages: Sequence[Message], limits: GenerationLimits = ...
    ) -> Generation: ...


@dataclass(frozen=True)
class LlmSettings:
    """How the node finds its language model. ``model_path`` empty: the embedded SmolLM2,
    converted into ``cache_dir`` (empty: ``<home>/models/smollm2-135m-instruct``)."""

    model_path: str = ""
    cache_dir: str = ""
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    max_new_tokens: int = 256
    max_time_s: float = 60.0

    @property
    def limits(self) -> GenerationLimits:
        return GenerationLimits(self.max_new_tokens, self.max_time_s)


def resolve_model_dir(
    settings: LlmSettings, home: Path, progress: Callable[[str], None] = print
) -> Path:
    """The local model directory to load: the configured one, or the embedded model's cache
    (converted on first use)."""
    if settings.model_path:
        path = Path(settings.model_path).expanduser()
        if not (path / "config.json").is_file():
            raise ValueError(
                f"language model directory {path} has no config.json (a local Hugging Face "
                "model directory is expected; nothing is downloaded)"
            )
        return path
    cache = Path(settings.cache_dir).expanduser() if settings.cache_dir else default_cache_dir(home)
    return ensure_embedded_model(cache, progress)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda requested but no CUDA device is available")
    return device


def load_text_model(model_dir: Path, device: str = "auto", name: str | None = None) -> HFTextModel:
    """A local Hugging Face causal LM: bf16 on CUDA, float32 on the CPU (where bf16 matmuls are
    slower on most processors)."""
    import torch

    transformers = transformers_module()

    resolved = resolve_device(device)
    dtype = torch.bfloat16 if resolved == "cuda" else torch.float32
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.chat_template is None:
        raise ValueError(f"{model_dir}: the tokenizer has no chat template (an instruct model?)")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    model.to(resolved).eval()
    label = name or (EMBEDDED_NAME if model_dir.name == EMBEDDED_NAME else model_dir.name)
    return HFTextModel(model=model, tokenizer=tokenizer, device=resolved, name=label)


def open_text_model(
    settings: LlmSettings, home: Path, progress: Callable[[str], None] = print
) -> HFTextModel:
    """Settings -> a loaded model, converting the embedded one first if needed."""
    model_dir = resolve_model_dir(settings, home, progress)
    return load_text_model(model_dir, settings.device)


@dataclass(frozen=True)
class HFTextModel:
    """A transformers model and its tokenizer. ``model`` is exposed for the video-text model,
    which wraps it with LoRA and feeds it projected frame features."""

    model: Any
    tokenizer: Any
    device: str
    name: str

    def prompt_ids(self, messages: Sequence[Message]) -> Any:
        """Token ids of the chat-template prompt, ending where the assistant's answer starts
        (after its opening words, when the last message is the assistant's)."""
        opening = bool(messages) and messages[-1].role == "assistant"
        encoded = self.tokenizer.apply_chat_template(
            [m.as_dict() for m in messages],
            add_generation_prompt=not opening,
            continue_final_message=opening,
            return_tensors="pt",
            return_dict=True,
        )
        return encoded["input_ids"].to(self.device)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def stream(
        self,
        messages: Sequence[Message],
        limits: GenerationLimits = DEFAULT_LIMITS,
        on_done: Callable[[Generation], None] | None = None,
    ) -> Iterator[str]:
        """Text chunks as the model writes them; ``on_done`` gets the timings at the end."""
        input_ids = self.prompt_ids(messages)
        return stream_generation(
            self.model, self.tokenizer, {"input_ids": input_ids}, limits, on_done
        )

    def generate(
        self, messages: Sequence[Message], limits: GenerationLimits = DEFAULT_LIMITS
    ) -> Generation:
        done: list[Generation] = []
        for _ in self.stream(messages, limits, on_done=done.append):
            pass
        return done[0]


def stream_generation(
    model: Any,
    tokenizer: Any,
    model_inputs: dict[str, Any],
    limits: GenerationLimits,
    on_done: Callable[[Generation], None] | None = None,
) -> Iterator[str]:
    """Greedy generation from ``model_inputs`` (``input_ids`` or ``inputs_embeds``) in a worker
    thread, yielding text chunks. Shared by the text backend and the video-text model."""
    import torch

    if LIVE_GENERATIONS.closing:
        raise LanguageModelError("the process is exiting: no new generation starts")
    transformers = transformers_module()

    started = time.perf_counter()
    first_token_at: list[float] = []
    n_tokens = [0]
    stop = threading.Event()
    errors: list[BaseException] = []

    class _Streamer(transformers.TextIteratorStreamer):
        def put(self, value: Any) -> None:
            if not self.next_tokens_are_prompt and value.numel():
                if not first_token_at:
                    first_token_at.append(time.perf_counter())
                n_tokens[0] += int(value.numel())
            super().put(value)

    class _StopWhenAsked(transformers.StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool)

    # generate() first puts the prompt ids (an empty tensor for inputs_embeds): skipped
    streamer = _Streamer(
        tokenizer,
        skip_prompt=True,
        skip_special_tokens=True,
        timeout=limits.max_time_s + STREAM_GRACE_S,
    )
    pad_id = tokenizer.pad_token_id
    kwargs = dict(
        model_inputs,
        attention_mask=_attention_mask(model_inputs),
        streamer=streamer,
        max_new_tokens=limits.max_new_tokens,
        max_time=limits.max_time_s,
        do_sample=False,
        pad_token_id=pad_id if pad_id is not None else tokenizer.eos_token_id,
        stopping_criteria=transformers.StoppingCriteriaList([_StopWhenAsked()]),
    )

    def work() -> None:
        try:
            with torch.inference_mode():
                model.generate(**kwargs)
        except BaseException as exc:  # re-raised in the consumer's thread
            errors.append(exc)
            streamer.end()
        finally:
            LIVE_GENERATIONS.discard(threading.current_thread())

    worker = threading.Thread(target=work, name="llm-generate", daemon=True)
    LIVE_GENERATIONS.add(worker, stop)
    worker.start()
    pieces: list[str] = []
    try:
        for chunk in streamer:
            if chunk:
                pieces.append(chunk)
                yield chunk
    finally:
        stop.set()
        worker.join()
        # also when the consumer stopped early: the timings of what was generated still count
        if not errors and on_done is not None:
            first = None if not first_token_at else first_token_at[0] - started
            elapsed = time.perf_counter() - started
            on_done(Generation("".join(pieces), n_tokens[0], first, elapsed))
    if errors:
        raise LanguageModelError(f"generation failed: {errors[0]}") from errors[0]


def _attention_mask(model_inputs: dict[str, Any]) -> Any:
    """The given mask, else all ones: one unpadded prompt."""
    import torch

    if "attention_mask" in model_inputs:
        return model_inputs["attention_mask"]
    if "input_ids" in model_inputs:
        return torch.ones_like(model_inputs["input_ids"])
    embeds = model_inputs["inputs_embeds"]
    return torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
