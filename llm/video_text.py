"""The EchoGPT part-3 video-text model: frozen frame encoder -> token compression -> linear
projector -> causal language model with LoRA on the query and value projections.

* Frame encoder: the segmentation network's ResNet backbone, globally average-pooled. It is
  trained on echo (LV segmentation), which a general-purpose image model is not, and it is
  already on the node. It stays frozen; its features can be computed once per loop.
* At most 45 frames, sampled uniformly over the loop.
* Token compression: neighbouring frame features are concatenated (two frames -> one visual
  token of twice the width), halving the sequence the language model has to attend over.
* Prompt: the model's own chat template with the user turn ``<Img><frames> <instruction>``; the
  projected visual tokens replace the placeholder in embedding space (for a Llama-2 chat model
  the template yields exactly ``<s>[INST] <Img><FrameFeature_1>...<FrameFeature_N>
  <Instruction> [/INST]``).
* The instruction is what a text model would read: the system text, any earlier turns, then
  the user's message (``instruction_from_messages``), so drafting and chat prompt both models
  with the same content and the measurements travel in the instruction.
* Only the LoRA adapters and the projector train; they are saved apart from the base model
  (``lora/`` in peft's layout, ``projector.safetensors`` with its configuration as metadata),
  in float32 or float16 (shipped adapters: half the bytes); loading upcasts to the base
  model's dtype.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from llm.backend import (
    Generation,
    GenerationLimits,
    HFTextModel,
    Message,
    stream_generation,
)
from llm.hf_imports import peft_module

MAX_FRAMES = 45
TOKEN_GROUP = 2  # frames concatenated into one visual token
IMAGE_PLACEHOLDER = "<FrameFeatures>"
IMAGE_OPEN = "<Img>"
LORA_TARGETS = ("q_proj", "v_proj")
LORA_R = 64
LORA_ALPHA = 16
LORA_DROPOUT = 0.05
PROJECTOR_FILE = "projector.safetensors"
LORA_DIR = "lora"
IGNORE_INDEX = -100
VIDEO_TEXT_LIMITS = GenerationLimits(128, 60.0)
SAVE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
_TURN_LABELS = {"user": "User", "assistant": "Assistant"}


def instruction_from_messages(messages: Sequence[Message]) -> str:
    """Chat messages -> the one instruction the model reads after the visual tokens: the
    system text, earlier turns labelled by role, then the last user message unlabelled. The
    training data is built with this same function, so the model meets at inference the
    instruction layout it was trained on."""
    if not messages or messages[-1].role != "user":
        raise ValueError("the last message must be the user's")
    system = [m.content.strip() for m in messages[:-1] if m.role == "system"]
    turns = [f"{_TURN_LABELS[m.role]}: {m.content.strip()}"
             for m in messages[:-1] if m.role != "system"]  # fmt: skip
    return "\n\n".join([*system, *turns, messages[-1].content.strip()])


def sample_frame_indices(n_frames: int, max_frames: int = MAX_FRAMES) -> list[int]:
    """Uniformly spaced frame indices, first and last included, at most ``max_frames``."""
    if n_frames < 1:
        raise ValueError("a loop needs at least one frame")
    if max_frames < 1:
        raise ValueError("max_frames must be at least 1")
    count = min(n_frames, max_frames)
    return [round(float(v)) for v in np.linspace(0, n_frames - 1, count)]


class FrameEncoder(nn.Module):
    """A frozen image backbone, global-average-pooled: ``(T, 3, H, W)`` -> ``(T, dim)``."""

    def __init__(self, backbone: nn.Module, dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.dim = dim
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> FrameEncoder:
        super().train(mode)
        self.backbone.eval()  # frozen: batch-norm statistics never move
        return self

    @torch.no_grad()
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        features = self.backbone(frames)
        if isinstance(features, dict):
            features = features["out"]
        return features.mean(dim=(-2, -1))


def encoder_from_segmenter(segmenter: nn.Module) -> FrameEncoder:
    """The segmentation network's backbone (``DeepLabV3.backbone``) as the frame encoder."""
    backbone = getattr(segmenter, "backbone", None)
    if backbone is None or not hasattr(backbone, "out_channels"):
        raise ValueError("the segmentation network has no backbone with out_channels")
    return FrameEncoder(backbone, int(backbone.out_channels))


@torch.no_grad()
def encode_frames(
    encoder: FrameEncoder, frames: torch.Tensor, max_frames: int = MAX_FRAMES, chunk: int = 16
) -> torch.Tensor:
    """Normalised frames ``(F, 3, H, W)`` -> features ``(T, dim)`` of the sampled frames."""
    index = sample_frame_indices(int(frames.shape[0]), max_frames)
    picked = frames[index]
    device = next(encoder.parameters()).device
    parts = [encoder(picked[i : i + chunk].to(device)).float().cpu()
             for i in range(0, len(index), chunk)]  # fmt: skip
    return torch.cat(parts)


def compress_tokens(features: torch.Tensor, group: int = TOKEN_GROUP) -> torch.Tensor:
    """``(T, D)`` -> ``(ceil(T / group), D * group)`` by concatenating neighbours; an odd tail
    repeats the last frame."""
    if features.ndim != 2:
        raise ValueError(f"frame features must be (frames, dim), got {tuple(features.shape)}")
    frames = features.shape[0]
    short = (-frames) % group
    if short:
        features = torch.cat([features, features[-1:].expand(short, -1)])
    return features.reshape(-1, group * features.shape[1])


@dataclass(frozen=True)
class VideoTextConfig:
    """What the projector file records, so adapters never meet the wrong base or encoder."""

    feature_dim: int
    hidden_size: int
    token_group: int = TOKEN_GROUP
    max_frames: int = MAX_FRAMES
    base_model: str = ""
    encoder: str = ""
    stage: int = 0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def lora_config() -> Any:
    return peft_module().LoraConfig(
        r=LORA_R,
        lora_alpha=LORA_ALPHA,
        lora_dropout=LORA_DROPOUT,
        target_modules=list(LORA_TARGETS),
        bias="none",
        task_type="CAUSAL_LM",
    )


class VideoTextModel(nn.Module):
    """The language model (peft-wrapped) and the projector; features come in precomputed."""

    def __init__(self, lm: Any, tokenizer: Any, projector: nn.Linear, config: VideoTextConfig):
        super().__init__()
        self.lm = lm
        self.tokenizer = tokenizer
        self.projector = projector
        self.config = config

    @property
    def device(self) -> torch.device:
        return self.projector.weight.device

    def trainable_names(self) -> list[str]:
        return [n for n, p in self.named_parameters() if p.requires_grad]

    def prompt_ids(self, instruction: str) -> tuple[list[int], list[int]]:
        """Token ids before and after the visual tokens."""
        content = f"{IMAGE_OPEN}{IMAGE_PLACEHOLDER} {instruction}"
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
            )
        else:
            text = f"<s>[INST] {content} [/INST]"
        before, after = text.split(IMAGE_PLACEHOLDER, 1)
        encode = self.tokenizer
        return (
            encode(before, add_special_tokens=False)["input_ids"],
            encode(after, add_special_tokens=False)["input_ids"],
        )

    def visual_tokens(self, features: torch.Tensor) -> torch.Tensor:
        tokens = compress_tokens(features.to(self.device), self.config.token_group)
        return self.projector(tokens.to(self.projector.weight.dtype))

    def _embed(self, ids: list[int]) -> torch.Tensor:
        table = self.lm.get_input_embeddings()
        return table(torch.tensor(ids, dtype=torch.long, device=self.device))

    def sequence(
        self, features: torch.Tensor, instruction: str, answer: str | None, max_answer_tokens: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings ``(L, H)``, labels ``(L,)``): the prompt is never a target."""
        before, after = self.prompt_ids(instruction)
        visual = self.visual_tokens(features)
        answer_ids: list[int] = []
        if answer is not None:
            answer_ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
            answer_ids = [*answer_ids[:max_answer_tokens], self.tokenizer.eos_token_id]
        parts = [self._embed(before), visual.to(self._embed(before).dtype), self._embed(after)]
        if answer_ids:
            parts.append(self._embed(answer_ids))
        prompt_len = len(before) + visual.shape[0] + len(after)
        labels = torch.full((prompt_len + len(answer_ids),), IGNORE_INDEX, dtype=torch.long)
        labels[prompt_len:] = torch.tensor(answer_ids, dtype=torch.long)
        return torch.cat(parts), labels.to(self.device)

    def forward(
        self,
        features: Sequence[torch.Tensor],
        instructions: Sequence[str],
        answers: Sequence[str],
        max_answer_tokens: int = 256,
    ) -> torch.Tensor:
        """Mean next-token loss over the answers of one batch (right-padded)."""
        seqs = [
            self.sequence(f, i, a, max_answer_tokens)
            for f, i, a in zip(features, instructions, answers, strict=True)
        ]
        length = max(e.shape[0] for e, _ in seqs)
        hidden = seqs[0][0].shape[1]
        embeds = torch.zeros(len(seqs), length, hidden, dtype=seqs[0][0].dtype, device=self.device)
        labels = torch.full((len(seqs), length), IGNORE_INDEX, dtype=torch.long, device=self.device)
        mask = torch.zeros(len(seqs), length, dtype=torch.long, device=self.device)
        for row, (e, lab) in enumerate(seqs):
            embeds[row, : e.shape[0]] = e
            labels[row, : lab.shape[0]] = lab
            mask[row, : e.shape[0]] = 1
        return self.lm(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss

    def stream(
        self,
        features: torch.Tensor,
        instruction: str,
        limits: GenerationLimits = VIDEO_TEXT_LIMITS,
        on_done: Callable[[Generation], None] | None = None,
        opening: str = "",
    ) -> Iterator[str]:
        """The model's answer about one loop, streamed (greedy); ``opening``: the answer's
        first words, which the model continues (only the continuation is streamed)."""
        with torch.no_grad():
            embeds, _ = self.sequence(features, instruction, None, 0)
            if opening:
                ids = self.tokenizer(opening, add_special_tokens=False)["input_ids"]
                embeds = torch.cat([embeds, self._embed(ids).to(embeds.dtype)])
        inputs = {"inputs_embeds": embeds.unsqueeze(0)}
        return stream_generation(self.lm, self.tokenizer, inputs, limits, on_done)


def build_video_text(
    base: HFTextModel, feature_dim: int, encoder_name: str = "", seed: int = 0
) -> VideoTextModel:
    """A fresh model: new LoRA adapters (B = 0, so it starts as the base model) and a new
    projector; everything else frozen."""
    peft = peft_module()

    for p in base.model.parameters():
        p.requires_grad_(False)
    lm = peft.get_peft_model(base.model, lora_config())
    hidden = int(base.model.config.hidden_size)
    config = VideoTextConfig(feature_dim, hidden, base_model=base.name, encoder=encoder_name)
    generator = torch.Generator().manual_seed(seed)
    projector = nn.Linear(feature_dim * config.token_group, hidden)
    with torch.no_grad():
        bound = 1.0 / float(np.sqrt(projector.in_features))
        projector.weight.uniform_(-bound, bound, generator=generator)
        projector.bias.zero_()
    dtype = next(base.model.parameters()).dtype
    projector.to(device=base.device, dtype=dtype)
    return VideoTextModel(lm, base.tokenizer, projector, config)


def save_adapters(model: VideoTextModel, out_dir: Path, stage: int, dtype: str = "float32") -> Path:
    """LoRA weights (peft layout) and the projector, never the base model's weights;
    ``dtype`` "float16" halves the files (for the adapter shipped in the repository)."""
    from safetensors.torch import load_file, save_file

    if dtype not in SAVE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(SAVE_DTYPES)}, got {dtype!r}")
    torch_dtype = SAVE_DTYPES[dtype]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.lm.save_pretrained(str(out_dir / LORA_DIR))
    lora_file = out_dir / LORA_DIR / "adapter_model.safetensors"
    if torch_dtype != torch.float32 and lora_file.is_file():
        lora = {k: v.to(torch_dtype).contiguous() for k, v in load_file(str(lora_file)).items()}
        save_file(lora, str(lora_file), metadata={"format": "pt"})
    config = VideoTextConfig(**{**model.config.to_json(), "stage": stage})
    tensors = {k: v.detach().cpu().to(torch_dtype).contiguous()
               for k, v in model.projector.state_dict().items()}  # fmt: skip
    save_file(tensors, str(out_dir / PROJECTOR_FILE), metadata={"config": json.dumps(
        config.to_json())})  # fmt: skip
    return out_dir


def read_adapter_config(adapter_dir: Path) -> VideoTextConfig:
    from safetensors import safe_open

    path = Path(adapter_dir) / PROJECTOR_FILE
    if not path.is_file():
        raise ValueError(f"{adapter_dir}: no {PROJECTOR_FILE} (not a video-text adapter folder)")
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    if "config" not in meta:
        raise ValueError(f"{path}: no configuration in its metadata")
    return VideoTextConfig(**json.loads(meta["config"]))


def load_video_text(
    base: HFTextModel, adapter_dir: Path, trainable: bool = False
) -> VideoTextModel:
    """Base model + saved adapters and projector (``trainable``: to continue training, e.g.
    stage 2 from stage 1). Half-precision files are upcast to the base model's dtype (float32
    on the CPU). The base model is wrapped in place: load adapters on a base of their own."""
    peft = peft_module()
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    config = read_adapter_config(adapter_dir)
    hidden = int(base.model.config.hidden_size)
    if config.hidden_size != hidden:
        raise ValueError(
            f"{adapter_dir}: adapters for hidden size {config.hidden_size}, base model has {hidden}"
        )
    for p in base.model.parameters():
        p.requires_grad_(False)
    lm = peft.PeftModel.from_pretrained(
        base.model, str(adapter_dir / LORA_DIR), is_trainable=trainable
    )
    projector = nn.Linear(config.feature_dim * config.token_group, hidden)
    projector.load_state_dict(load_file(str(adapter_dir / PROJECTOR_FILE)))
    dtype = next(base.model.parameters()).dtype
    projector.to(device=base.device, dtype=dtype)
    projector.requires_grad_(trainable)
    for name, p in lm.named_parameters():  # fp16 files: LoRA weights in the base's dtype
        if "lora_" in name and p.dtype != dtype:
            p.data = p.data.to(dtype)
    return VideoTextModel(lm, base.tokenizer, projector, config)
