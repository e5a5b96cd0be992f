"""A text model that replays given answers: for tests of drafting and chat, where what matters
is how the node treats an answer, not what a real model would say."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from llm.backend import DEFAULT_LIMITS, Generation, GenerationLimits, Message


@dataclass
class ScriptedTextModel:
    """Answers in turn (the last one repeats); records every prompt it was given. An answer
    is the whole text the model writes: when the prompt ends with the answer's opening words
    (an ``assistant`` message), the answer must start with them and only the rest is streamed,
    as a real model continues them."""

    answers: Sequence[str]
    name: str = "scripted"
    prompts: list[list[Message]] = field(default_factory=list)

    def stream(
        self,
        messages: Sequence[Message],
        limits: GenerationLimits = DEFAULT_LIMITS,
        on_done: Callable[[Generation], None] | None = None,
    ) -> Iterator[str]:
        if not self.answers:
            raise ValueError("a scripted model needs at least one answer")
        self.prompts.append(list(messages))
        text = self.answers[min(len(self.prompts) - 1, len(self.answers) - 1)]
        if messages and messages[-1].role == "assistant":
            opening = messages[-1].content
            if not text.startswith(opening):
                raise ValueError(f"scripted answer {text!r} does not start with {opening!r}")
            text = text[len(opening) :]
        started = time.perf_counter()
        words = text.split(" ")
        for i, word in enumerate(words):
            yield word if i == len(words) - 1 else word + " "
        if on_done is not None:
            on_done(Generation(text, len(words), 0.0, time.perf_counter() - started))

    def generate(
        self, messages: Sequence[Message], limits: GenerationLimits = DEFAULT_LIMITS
    ) -> Generation:
        done: list[Generation] = []
        for _ in self.stream(messages, limits, on_done=done.append):
            pass
        return done[0]
