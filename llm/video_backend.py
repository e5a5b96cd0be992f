"""The video-text model (EchoGPT part 3) as a drafting and chat backend.

``VideoTextBackend`` satisfies ``llm.backend.TextModel`` for one loop: it is bound to
that loop's frame features and turns the chat messages drafting and chat build (system text with
the measurements, earlier turns, the question) into the model's instruction, so the video-text
model reads the same content as the plain text model and its answers go through the same
grounding guard. Loading checks that the adapter was trained for this base model: LoRA weights
of another model either fail deep inside peft or, worse, load and produce noise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from inference.types import Cine
from llm.backend import Generation, GenerationLimits, HFTextModel, Message
from llm.training import cine_frames
from llm.video_text import (
    VIDEO_TEXT_LIMITS,
    FrameEncoder,
    VideoTextConfig,
    VideoTextModel,
    encode_frames,
    instruction_from_messages,
    load_video_text,
    read_adapter_config,
)

DEMO_ADAPTER_DIR = Path(__file__).resolve().parent / "weights" / "llm_demo"


@dataclass(frozen=True)
class VideoTextBackend:
    """A ``TextModel`` that answers about one loop: ``features`` ``(frames, dim)`` come from
    ``loop_features`` with the encoder the adapter was trained with."""

    model: VideoTextModel
    features: torch.Tensor

    def __post_init__(self) -> None:
        dim = self.model.config.feature_dim
        if self.features.ndim != 2 or self.features.shape[1] != dim or not len(self.features):
            raise ValueError(
                f"frame features must be (frames, {dim}), got {tuple(self.features.shape)}"
            )

    @property
    def name(self) -> str:
        c = self.model.config
        return f"{c.base_model} + video-text adapter (stage {c.stage})"

    def stream(
        self,
        messages: Sequence[Message],
        limits: GenerationLimits = VIDEO_TEXT_LIMITS,
        on_done: Callable[[Generation], None] | None = None,
    ) -> Iterator[str]:
        opening = ""
        if messages and messages[-1].role == "assistant":
            opening, messages = messages[-1].content, messages[:-1]
        instruction = instruction_from_messages(messages)
        return self.model.stream(self.features, instruction, limits, on_done, opening)

    def generate(
        self, messages: Sequence[Message], limits: GenerationLimits = VIDEO_TEXT_LIMITS
    ) -> Generation:
        done: list[Generation] = []
        for _ in self.stream(messages, limits, on_done=done.append):
            pass
        return done[0]


def check_adapter_fits(base: HFTextModel, adapter_dir: Path) -> VideoTextConfig:
    """The adapter's recorded configuration, after checking it was trained on this base model
    (same name and hidden size); ValueError otherwise."""
    config = read_adapter_config(adapter_dir)
    hidden = int(base.model.config.hidden_size)
    if config.base_model != base.name or config.hidden_size != hidden:
        raise ValueError(
            f"{adapter_dir}: the adapter was trained on {config.base_model!r} (hidden size "
            f"{config.hidden_size}), not on {base.name!r} (hidden size {hidden}); use the "
            "base model it was trained on, or no adapter"
        )
    return config


def load_adapter(base: HFTextModel, adapter_dir: Path = DEMO_ADAPTER_DIR) -> VideoTextModel:
    """The base model with the adapter and projector (default: the shipped demo adapter), ready
    for greedy generation. ``base`` is wrapped in place; do not use it as a plain text model
    afterwards."""
    check_adapter_fits(base, adapter_dir)
    model = load_video_text(base, adapter_dir)
    model.eval()  # LoRA dropout off: one loop and prompt give one answer
    return model


def loop_features(
    cine: Cine,
    encoder: FrameEncoder,
    mean: Sequence[float],
    std: Sequence[float],
    config: VideoTextConfig,
) -> torch.Tensor:
    """One loop's frame features, computed as in training (same preprocessing, same frame
    sampling); ``mean``/``std`` are the segmentation network's normalisation."""
    if encoder.dim != config.feature_dim:
        raise ValueError(
            f"the adapter expects {config.feature_dim}-wide frame features, the encoder gives "
            f"{encoder.dim}"
        )
    return encode_frames(encoder, cine_frames(cine, mean, std), config.max_frames)
